"""Read roster files: the usernames of a course's students, from a CSV with a ``username`` column."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from . import schema


def read_roster(path: Path) -> tuple[tuple[str, ...], str | None]:
    """Usernames from a roster CSV with a `username` column, or an error message naming the file."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip().lower() for h in reader.fieldnames or []]
            if "username" not in header:
                found = ", ".join(header) or "nothing"
                return (), (
                    f"roster file {path} has no 'username' column (found: {found});"
                    " name the column of usernames `username`"
                )
            column = reader.fieldnames[header.index("username")]  # type: ignore[index]
            names: list[str] = []
            for n, row in enumerate(reader, start=2):
                name = (row.get(column) or "").strip()
                if not name:
                    continue
                if not _valid_username(name):
                    return (), (
                        f"roster file {path}:{n}: {name!r} is not a valid username"
                        " (letters, digits and . _ @ : + -, no spaces); fix that row"
                    )
                if name not in names:
                    names.append(name)
            return tuple(names), None
    except FileNotFoundError:
        return (), f"roster file {path} not found; fix the path (it is relative to the config file) or create the file"
    except IsADirectoryError:
        return (), f"roster file {path} is a directory; point `roster:` at a CSV file"
    except PermissionError:
        return (
            (),
            f"roster file {path} cannot be read (permission denied); make it readable by the account running atlaslab",
        )
    except UnicodeDecodeError:
        return (), f"roster file {path} is not UTF-8 text; export the CSV as UTF-8"
    except (OSError, csv.Error) as e:
        return (), f"cannot read roster file {path} ({e.__class__.__name__}: {e}); check the file"


def _valid_username(name: str) -> bool:
    return re.fullmatch(schema.USERNAME_PATTERN, name) is not None
