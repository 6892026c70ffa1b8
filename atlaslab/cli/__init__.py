"""The `atlaslab` command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from atlaslab.config import ConfigError, LoadedConfig, load

from . import doctor as doctor_mod
from . import hubapi

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
    try:
        return load(path, check_secrets=check_secrets)
    except ConfigError as e:
        for problem in e.problems:
            err.print(f"[red]error[/red] {escape(str(problem))}", soft_wrap=True)
        count = f"{len(e.problems)} problem" + ("" if len(e.problems) == 1 else "s")
        where = f" in {escape(e.problems[0].file)}" if e.problems else ""
        err.print(f"{count}{where}; nothing was started or changed.")
        raise typer.Exit(2) from None


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
    loaded = load_or_exit(config, check_secrets=False)
    raise typer.Exit(hubapi.print_status(loaded, out))


@app.command()
def doctor(config: ConfigOpt = None) -> None:
    """Check ports, proxy, Node, GPUs, permissions and the config; say what to fix."""
    raise typer.Exit(doctor_mod.run(config, out))


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
    loaded = load_or_exit(config, check_secrets=False)
    raise typer.Exit(hubapi.import_roster(loaded, roster, course, out, err))


from . import courses as courses  # noqa: E402  (adds `course list` and `course install`)
from . import grading as grading  # noqa: E402  (adds `grade` and `grades export`; uses the names above)
from . import usage as usage  # noqa: E402  (adds `usage report`)


def main() -> None:
    app()
