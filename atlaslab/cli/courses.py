"""`atlaslab course list` and `atlaslab course install PACK` (registered on the CLI by importing this module)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from atlaslab.cli.common import ConfigOpt, app, err, load_or_exit, out

course_app = typer.Typer(help="Course packs: ready-made nbgrader courses.", no_args_is_help=True)
app.add_typer(course_app, name="course")
PacksOpt = Annotated[
    Path | None, typer.Option("--packs", help="Folder of course packs (default: $ATLASLAB_COURSES or courses/).")
]


@course_app.command("list")
def course_list(packs_dir: PacksOpt = None) -> None:
    """List the course packs with their assignments."""
    from rich.table import Table

    from atlaslab.grading import packs

    try:
        found = packs.packs(packs_dir)
    except packs.PackError as e:
        err.print(f"[red]error[/red] {escape(str(e))}")
        raise typer.Exit(2) from None
    table = Table(title="Course packs", title_justify="left")
    for col in ("pack", "titre / title", "level", "assignments"):
        table.add_column(col)
    for p in found:
        table.add_row(p.id, escape(f"{p.title.fr}\n{p.title.en}"), p.level, ", ".join(a.id for a in p.assignments))
    out.print(table)


@course_app.command("install")
def course_install(
    pack: Annotated[str, typer.Argument(help="Pack id (see `atlaslab course list`).")],
    course: Annotated[str | None, typer.Option("--course", help="Site course id (default: the pack id).")] = None,
    course_dir: Annotated[Path | None, typer.Option("--course-dir", help="An nbgrader course directory.")] = None,
    packs_dir: PacksOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Install PACK into a hub course: its sources copied, every assignment generated, ready to release."""
    from atlaslab.grading import packs

    try:
        found = packs.find(pack, packs_dir)
    except packs.PackError as e:
        err.print(f"[red]error[/red] {escape(str(e))}")
        raise typer.Exit(2) from None
    course_id = course or found.id
    if course_dir is None:
        loaded = load_or_exit(config, check_secrets=False)
        if course_id not in loaded.site.courses:
            known = ", ".join(loaded.site.courses) or "none"
            err.print(
                f"[red]error[/red] {escape(loaded.label)}: courses: no course '{escape(course_id)}' (courses: "
                f"{escape(known)}); add it to the site config, or give --course ID or --course-dir"
            )
            raise typer.Exit(2)
        from atlaslab.grading.courses import ensure_course_dir

        # The course's own setting, as at hub start (which rewrites these configs): hidden tests stay hidden
        # from feedback unless the site says otherwise.
        reveal = loaded.site.courses[course_id].reveal_hidden_tests
        course_dir = ensure_course_dir(loaded.state_dir, course_id, reveal_hidden_tests=reveal).root
    try:
        with err.status(f"generating the assignments of {found.id}"):
            done = packs.install(found, course_dir, course_id)
    except packs.PackError as e:
        err.print(f"[red]error[/red] {escape(str(e))}")
        raise typer.Exit(1) from None
    out.print(f"installed {found.id} into {escape(str(course_dir))}: {', '.join(done)} generated, ready to release")
