"""`atlaslab grade` and `atlaslab grades export` (registered on the CLI by importing this module)."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from atlaslab.cli.common import ConfigOpt, app, err, load_or_exit, out

if TYPE_CHECKING:  # only a type here: importing the config package would load the schema (pydantic) at start-up
    from atlaslab.config import LoadedConfig

grades_app = typer.Typer(help="Export grades from a course's gradebook.", no_args_is_help=True)
app.add_typer(grades_app, name="grades")

CourseDirOpt = Annotated[
    Path | None,
    typer.Option("--course-dir", help="An nbgrader course directory (default: STATE_DIR/courses/COURSE)."),
]


@app.command()
def grade(
    course: Annotated[str, typer.Argument(help="Course id.")],
    assignment: Annotated[str, typer.Argument(help="Assignment name.")],
    workers: Annotated[
        int | None, typer.Option("--workers", "-j", help="Notebooks at once (default: grading.workers, or cores).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Grade again submissions already graded.")] = False,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", help="Wall-clock limit per notebook, seconds (default: grading.notebook_timeout)."),
    ] = None,
    student: Annotated[list[str] | None, typer.Option("--student", help="Only this student (repeatable).")] = None,
    memory: Annotated[
        str | None, typer.Option("--memory", help="Memory per notebook (default: grading.notebook_memory).")
    ] = None,
    processes: Annotated[int, typer.Option("--processes", help="Processes and threads per notebook.")] = 64,
    file_size: Annotated[str, typer.Option("--file-size", help="Largest file a notebook may write.")] = "64M",
    disk: Annotated[str, typer.Option("--disk", help="Private /tmp per notebook, its files included.")] = "256M",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the results as JSON (one object per student) instead of a table.")
    ] = False,
    course_dir: CourseDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Autograde all collected submissions of ASSIGNMENT in parallel, each notebook in a sandbox."""
    from atlaslab.config.schema import Grading

    loaded = None if course_dir else load_or_exit(config, check_secrets=False)
    root, hidden = _course_root_or_exit(course, course_dir, loaded)
    site = (loaded.site.grading if loaded else None) or Grading()
    code = run_grade(
        root,
        assignment,
        hidden=hidden,
        workers=workers or site.workers,
        force=force,
        timeout=timeout if timeout is not None else float(site.notebook_timeout),
        students=student,
        memory=_size(memory) if memory is not None else site.notebook_memory,
        processes=processes,
        file_size=_size(file_size),
        disk=_size(disk),
        out=out,
        err=err,
        as_json=as_json,
    )
    raise typer.Exit(code)


@grades_app.command("export")
def grades_export(
    course: Annotated[str, typer.Argument(help="Course id.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="CSV file (default: stdout).")] = None,
    max_row: Annotated[bool, typer.Option("--max-row/--no-max-row", help="A first row with max points.")] = True,
    course_dir: CourseDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Write COURSE's grades as CSV: a row per student, a column per assignment, and a total."""
    root, _ = _course_root_or_exit(
        course, course_dir, None if course_dir else load_or_exit(config, check_secrets=False)
    )
    raise typer.Exit(run_export(root, output, max_row=max_row, out=out, err=err))


def _course_root_or_exit(course: str, course_dir: Path | None, loaded: LoadedConfig | None) -> tuple[Path, list[str]]:
    try:
        return course_root(course, course_dir, loaded)
    except ValueError as e:
        err.print(f"[red]error[/red] {escape(str(e))}")
        raise typer.Exit(2) from None


def _size(value: str) -> int:
    from atlaslab.config.units import parse_size

    try:
        return parse_size(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


_STYLE = {"graded": "green", "timeout": "yellow", "kernel died": "red", "invalid notebook": "red", "error": "red"}


def course_root(course: str, course_dir: Path | None, loaded: LoadedConfig | None) -> tuple[Path, list[str]]:
    """The course directory and the extra directories the sandbox must hide; ValueError if unknown."""
    if course_dir is not None:
        return course_dir.resolve(), []
    assert loaded is not None
    if course not in loaded.site.courses:
        known = ", ".join(sorted(loaded.site.courses)) or "none"
        raise ValueError(f"unknown course {course!r} (courses in {loaded.label}: {known})")
    hidden = [str(loaded.state_dir)]
    if loaded.source is not None:
        hidden.append(str(loaded.base_dir.resolve()))  # the site config and its secret files
    return loaded.state_dir / "courses" / course, hidden


def run_grade(
    root: Path,
    assignment: str,
    *,
    hidden: list[str],
    workers: int | None,
    force: bool,
    timeout: float,
    students: list[str] | None,
    memory: int,
    processes: int,
    file_size: int,
    disk: int,
    out: Console,
    err: Console,
    as_json: bool = False,
) -> int:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table

    from atlaslab.grading.autograde import AutogradeError, GradeOptions, autograde
    from atlaslab.grading.sandbox import SandboxLimits

    options = GradeOptions(
        timeout=timeout,
        force=force,
        students=students or None,
        limits=SandboxLimits(memory=memory, processes=processes, file_size=file_size, disk=disk),
        hidden=hidden,
    )
    if workers:
        options.workers = workers
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[last]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )
    task = progress.add_task(f"grading {assignment}", total=None, last="")

    def on_progress(event, outcome, total):
        if event == "start":
            progress.update(task, total=total)
        elif event == "done":
            progress.update(task, advance=1, last=f"{outcome.student}: {outcome.status}")

    started = time.monotonic()
    try:
        with progress:
            outcomes = autograde(root, assignment, options, on_progress)
    except AutogradeError as e:
        err.print(f"[red]error[/red] {escape(str(e))}")
        return 2
    except KeyboardInterrupt:
        err.print("interrupted; run the same command again to go on where it stopped")
        return 130
    elapsed = time.monotonic() - started
    if as_json:
        # Plain stdout: rich would wrap long lines and break the JSON.
        print(json.dumps([dataclasses.asdict(o) for o in outcomes]))
        return 0
    if not outcomes:
        out.print(f"no submissions of {escape(assignment)} in {escape(str(root / 'submitted'))}")
        return 0
    table = Table(title=f"{assignment}: autograder results", title_justify="left")
    for name, justify in (("student", "left"), ("score", "right"), ("max", "right"), ("status", "left")):
        table.add_column(name, justify=justify)
    table.add_column("reason", overflow="fold")
    for o in outcomes:
        style = _STYLE.get(o.status, "")
        status = f"[{style}]{o.status}[/{style}]" if style else o.status
        note = ("graded earlier" + (f": {o.reason}" if o.reason else "")) if o.skipped else o.reason
        table.add_row(escape(o.student), _num(o.score), _num(o.max_score), status, escape(note))
    out.print(table)
    graded = [o for o in outcomes if not o.skipped]
    counts = Counter(o.status for o in outcomes)
    rate = f", {len(graded) / elapsed:.2f} submissions/s" if graded and elapsed > 0 else ""
    summary = ", ".join(f"{n} {status}" for status, n in counts.most_common())
    out.print(
        f"{len(outcomes)} submissions: {summary}; {len(graded)} graded now in {elapsed:.1f} s"
        f" with {options.workers} workers{rate}"
    )
    return 0


def run_export(root: Path, output: Path | None, *, max_row: bool, out: Console, err: Console) -> int:
    from atlaslab.grading.grades import export_grades

    try:
        if output is None:
            export_grades(root, sys.stdout, max_row=max_row)
            return 0
        with open(output, "w", newline="") as f:
            n = export_grades(root, f, max_row=max_row)
    except FileNotFoundError as e:
        err.print(f"[red]error[/red] {escape(str(e))}")
        return 2
    err.print(f"{n} students written to {escape(str(output))}")
    return 0


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:g}"
