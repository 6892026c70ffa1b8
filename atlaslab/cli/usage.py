"""`atlaslab usage report`: GPU- and CPU-hours per tenant, team and user over a period (table or CSV)."""

from __future__ import annotations

import csv
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.markup import escape

from atlaslab.cli.common import ConfigOpt, app, err, load_or_exit, out

usage_app = typer.Typer(help="Report GPU and CPU usage from the usage ledger.", no_args_is_help=True)
app.add_typer(usage_app, name="usage")

Period = Literal["day", "week", "month", "year", "all"]


def period_window(period: Period, today: date) -> tuple[datetime, datetime]:
    from atlaslab.compute.credits import window
    from atlaslab.config.schema import Quota

    now = datetime(today.year, today.month, today.day, tzinfo=UTC)
    if period == "all":
        return datetime(1970, 1, 1, tzinfo=UTC), now + timedelta(days=1)
    start, end = window(period, now, Quota())
    assert end is not None
    return start, end


@usage_app.command("report")
def report(
    period: Annotated[str, typer.Option("--period", help="day, week, month, year or all (the current one).")] = "month",
    since: Annotated[str | None, typer.Option("--since", help="First day (YYYY-MM-DD); overrides --period.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Last day included (YYYY-MM-DD).")] = None,
    by: Annotated[str | None, typer.Option("--by", help="Only tenant, team or user rows.")] = None,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV instead of a table.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file.")] = None,
    config: ConfigOpt = None,
) -> None:
    """GPU-hours and CPU-hours per tenant, team and user; running servers count up to now."""
    from rich.table import Table

    from atlaslab.compute.usage import UsageLedger

    if period not in ("day", "week", "month", "year", "all"):
        raise typer.BadParameter(f"{period!r}: use day, week, month, year or all", param_hint="--period")
    if by not in (None, "tenant", "team", "user"):
        raise typer.BadParameter(f"{by!r}: use tenant, team or user", param_hint="--by")
    start, end = period_window(period, datetime.now(UTC).date())  # type: ignore[arg-type]
    try:
        if since:
            start = datetime.fromisoformat(since).replace(tzinfo=UTC)
        if until:
            end = datetime.fromisoformat(until).replace(tzinfo=UTC) + timedelta(days=1)
    except ValueError as e:
        raise typer.BadParameter(f"{e}; dates are YYYY-MM-DD") from None
    loaded = load_or_exit(config, check_secrets=False)
    db = loaded.state_dir / "compute" / "usage.sqlite"
    if not db.exists():
        err.print(f"no usage recorded yet ({escape(str(db))} does not exist)")
        raise typer.Exit(1)
    rows = [r for r in UsageLedger(db).report(start.timestamp(), end.timestamp()) if by is None or r[0] == by]
    span = f"{start.date().isoformat()} to {(end - timedelta(days=1)).date().isoformat()}"
    if as_csv:
        f = open(output, "w", newline="") if output else sys.stdout  # noqa: SIM115
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["scope", "name", "gpu_hours", "cpu_hours", "from", "to"])
        for scope, name, u in rows:
            writer.writerow([scope, name, f"{u.gpu_hours:.6f}", f"{u.cpu_hours:.6f}", start.date(), end.date()])
        if output:
            f.close()
        return
    table = Table(title=f"Usage {span} (UTC)", title_justify="left")
    for col, justify in (("scope", "left"), ("name", "left"), ("GPU-hours", "right"), ("CPU-hours", "right")):
        table.add_column(col, justify=justify)
    for scope, name, u in rows:
        table.add_row(scope, escape(name), f"{u.gpu_hours:.2f}", f"{u.cpu_hours:.2f}")
    out.print(table)
