"""What every `atlaslab` command module shares: the Typer apps, the consoles, the --config option, load_or_exit.

The command modules (this package's ``__init__``, ``courses``, ``grading``, ``usage``) import from here rather
than from the package, so that registering a command never needs the package half-imported (a circle).
Everything here is cheap to import: the site config is loaded, and its schema imported, only when a command
needs it, so ``atlaslab --help`` starts fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from atlaslab.config import LoadedConfig

app = typer.Typer(
    help="AtlasLab: an AI lab workbench on JupyterHub.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold tokens and passwords
)
config_app = typer.Typer(help="Check the site config and print its schema or reference.", no_args_is_help=True)
users_app = typer.Typer(help="Manage users in bulk.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(users_app, name="users")

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="ATLASLAB_CONFIG",
        readable=False,  # the loader reports an unreadable file in its own one-line format
        help="Site config file (default: atlaslab.yaml).",
    ),
]


def load_or_exit(path: Path | None, *, check_secrets: bool = True) -> LoadedConfig:
    # Imported here: the schema (pydantic) is the largest import of the command, and --help does not need it.
    from atlaslab.config import ConfigError, load

    try:
        return load(path, check_secrets=check_secrets)
    except ConfigError as e:
        for problem in e.problems:
            err.print(f"[red]error[/red] {escape(str(problem))}", soft_wrap=True)
        count = f"{len(e.problems)} problem" + ("" if len(e.problems) == 1 else "s")
        where = f" in {escape(e.problems[0].file)}" if e.problems else ""
        err.print(f"{count}{where}; nothing was started or changed.")
        raise typer.Exit(2) from None
