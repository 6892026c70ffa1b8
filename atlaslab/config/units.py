"""Human-friendly sizes ("2G") and durations ("1h") as pydantic-ready types.

Sizes are binary: ``1K`` is 1024 bytes, ``2G`` is 2 GiB; ``2GB``, ``2GiB`` and ``2g`` mean the same.
Durations combine a number and a unit (s, m, h, d, w), possibly several: ``90s``, ``1h30m``, ``2d``.
Plain integers are bytes and seconds.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
# Spelled out rather than re.IGNORECASE so the same pattern works in the JSON Schema.
SIZE_PATTERN = r"^\s*(\d+(?:\.\d+)?)\s*([KMGTkmgt]?)(?:[iI]?[bB])?\s*$"
_SIZE_RE = re.compile(SIZE_PATTERN)
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
DURATION_PATTERN = r"^\s*(\d+(\.\d+)?\s*[smhdwSMHDW]\s*)+$|^\s*\d+\s*$"
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)


def _shown(value: object) -> str:
    """The value as the user wrote it, in a few words."""
    if value is None:
        return "an empty value"
    if isinstance(value, list | dict):
        return "a list" if isinstance(value, list) else "a mapping"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_size(value: object) -> int:
    """Bytes from an int or a string such as ``512M``, ``2G``, ``1.5GiB``."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512M or 2G, not true/false")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} is negative; a size is written like 512M or 2G")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])
    raise ValueError(f"{_shown(value)} is not a size; write it like 512M, 2G or 1T")


def parse_duration(value: object) -> int:
    """Seconds from an int or a string such as ``90s``, ``30m``, ``1h30m``, ``2d``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30m or 1h, not true/false")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{value} is negative; a duration is written like 30m or 1h (0 disables)")
        return int(value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        if text.isdigit():
            return int(text)
        parts = _DURATION_RE.findall(text)
        if parts and "".join(n + u for n, u in parts).lower() == text.lower():
            return int(sum(float(n) * _DURATION_UNITS[u.lower()] for n, u in parts))
    raise ValueError(f"{_shown(value)} is not a duration; write it like 90s, 30m, 1h or 1h30m")


def format_size(n: int) -> str:
    """The shortest exact spelling of ``n`` bytes: ``2G``, ``1536M``, ``100``."""
    for unit in ("T", "G", "M", "K"):
        if n >= _SIZE_UNITS[unit] and n % _SIZE_UNITS[unit] == 0:
            return f"{n // _SIZE_UNITS[unit]}{unit}"
    return str(n)


def format_duration(seconds: int) -> str:
    """The spelling ``parse_duration`` reads back: ``1h``, ``1h30m``, ``90s`` -> ``1m30s``; 0 stays ``0``."""
    if seconds == 0:
        return "0"
    parts = []
    for unit in ("w", "d", "h", "m", "s"):
        count, seconds = divmod(seconds, _DURATION_UNITS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


Size = Annotated[
    int,
    BeforeValidator(parse_size),
    PlainSerializer(format_size, return_type=str, when_used="json"),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": SIZE_PATTERN}]}),
]
Duration = Annotated[
    int,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": DURATION_PATTERN}]}),
]
