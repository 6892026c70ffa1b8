"""The `atlaslab` command.

Start-up is kept short (``atlaslab --help`` and ``atlaslab config check`` answer in well under half a second):
importing this package registers every command but imports what a command needs (the hub, httpx, nbgrader,
the compute modules, rich's progress bars) only inside the command. tests/test_cli_startup.py keeps it so.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from .common import ConfigOpt, app, config_app, err, load_or_exit, out, users_app

__all__ = ["ConfigOpt", "app", "err", "load_or_exit", "main", "out"]


@app.command()
def up(
    config: ConfigOpt = None,
    keep_servers: Annotated[
        bool, typer.Option("--keep-servers", help="Leave users' servers running when stopping (for upgrades).")
    ] = False,
) -> None:
    """Start the whole workbench on this machine: proxy, hub and enabled services."""
    from atlaslab.cli.supervisor import LaunchError, Workbench

    loaded = load_or_exit(config)
    try:
        raise typer.Exit(Workbench(loaded, echo=out.print, keep_servers=keep_servers).run())
    except LaunchError as e:
        err.print(f"[red]error[/red] {e}", soft_wrap=True)
        raise typer.Exit(1) from None


@app.command()
def status(config: ConfigOpt = None) -> None:
    """Show whether the proxy and hub run, and who has a server."""
    from atlaslab.cli import hubapi

    loaded = load_or_exit(config, check_secrets=False)
    raise typer.Exit(hubapi.print_status(loaded, out))


# Not named `doctor`: importing the submodule atlaslab.cli.doctor would rebind that name in this package.
@app.command("doctor")
def doctor_command(config: ConfigOpt = None) -> None:
    """Check ports, proxy, Node, GPUs, permissions and the config; say what to fix."""
    from atlaslab.cli import doctor

    raise typer.Exit(doctor.run(config, out))


@config_app.command("check")
def config_check(
    config: ConfigOpt = None,
    skip_secrets: Annotated[
        bool, typer.Option("--skip-secrets", help="Do not read secret variables and files (lint elsewhere).")
    ] = False,
) -> None:
    """Validate the site config without starting anything (exit 2 on problems)."""
    loaded = load_or_exit(config, check_secrets=not skip_secrets)
    site = loaded.site
    out.print(
        f"{loaded.label}: OK - {len(site.tenants)} tenants, {len(site.environments)} environments, "
        f"{len(site.courses)} courses, {len(site.teams)} teams, "
        f"login: {', '.join(p.key for p in site.login)}"
    )


@config_app.command("schema")
def config_schema() -> None:
    """Print the site config's JSON Schema."""
    from atlaslab.config.docs import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


@config_app.command("docs")
def config_docs(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file.")] = None,
) -> None:
    """Print (or write) the site config reference in Markdown, generated from the schema."""
    from atlaslab.config.docs import reference_markdown

    text = reference_markdown()
    if output:
        output.write_text(text)
    else:
        sys.stdout.write(text)


@config_app.command("helm-schema")
def config_helm_schema(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file.")] = None,
) -> None:
    """Print (or write) the Helm chart's values.schema.json, generated from the site config schema."""
    from atlaslab.config.docs import helm_values_schema

    text = json.dumps(helm_values_schema(), indent=2) + "\n"
    if output:
        output.write_text(text)
    else:
        sys.stdout.write(text)


@users_app.command("import")
def users_import(
    roster: Annotated[Path, typer.Argument(help="CSV file with a `username` column.")],
    course: Annotated[str, typer.Option("--course", help="Course id the students join.")],
    config: ConfigOpt = None,
) -> None:
    """Add the students of ROSTER to COURSE on the running hub (creates the users)."""
    from atlaslab.cli import hubapi

    loaded = load_or_exit(config, check_secrets=False)
    raise typer.Exit(hubapi.import_roster(loaded, roster, course, out, err))


# Importing these registers their commands on `app` (after the ones above, which keeps the order of --help);
# each imports its heavy parts inside its commands.
from . import courses as courses  # noqa: E402  (adds `course list` and `course install`)
from . import grading as grading  # noqa: E402  (adds `grade` and `grades export`)
from . import usage as usage  # noqa: E402  (adds `usage report`)


def main() -> None:
    app()
