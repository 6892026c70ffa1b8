"""Course packs: ready-made nbgrader courses under ``courses/PACK`` (course.yaml, source notebooks, data).

A pack's ``course.yaml`` is checked here (one line per problem, naming the file and the field); ``install``
turns a pack into a hub course directory: nbgrader's course layout, the pack's sources, and every assignment
generated (solutions and hidden tests removed) and ready to release from the formgrader.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from atlaslab.core.accounts import server_path

REPO_COURSES = Path(__file__).resolve().parent.parent / "courses"


def default_courses() -> Path:
    """$ATLASLAB_COURSES; else the clone's courses/ (an editable install); else PREFIX/courses, which
    scripts/install.sh links to the clone's (PREFIX/venv is this interpreter's environment); else ./courses."""
    if os.environ.get("ATLASLAB_COURSES"):
        return Path(os.environ["ATLASLAB_COURSES"])
    for candidate in (REPO_COURSES, Path(sys.prefix).parent / "courses"):
        if candidate.is_dir():
            return candidate
    return Path.cwd() / "courses"


class PackError(ValueError):
    """A pack that cannot be used; the message names the file and field."""


class Titles(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fr: str = Field(min_length=1, description="French title.")
    en: str = Field(min_length=1, description="English title.")


class Partial(BaseModel):
    model_config = ConfigDict(extra="forbid")
    answers: dict[str, str] = Field(
        description="grade_id of a solution cell -> a wrong answer, put into the full solution (the rest stays right)."
    )
    score: float = Field(ge=0, description="The score that submission must get.")


class Assignment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", description="Assignment id (its folder under source/).")
    title: Titles
    points: float = Field(gt=0, description="Points of the autograded tests.")
    due_days: int = Field(ge=0, description="Days after the course start it is due.")
    partial: Partial | None = Field(None, description="A partly-wrong submission and its expected score.")


class Pack(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", description="Pack id (its folder name).")
    title: Titles
    level: str
    language: str = Field(pattern=r"^(fr|en|ar|fr-en)$", description="Language of the notebooks.")
    prerequisites: list[str] = Field(default_factory=list)
    schedule: str
    assignments: list[Assignment] = Field(min_length=1)
    root: Path = Field(Path(), exclude=True)

    def source(self, assignment: str) -> Path:
        return self.root / "source" / assignment


def load(root: Path) -> Pack:
    path = root / "course.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise PackError(f"{path}: cannot read it ({e})") from None
    try:
        pack = Pack.model_validate({**(data or {}), "root": root})
    except ValidationError as e:
        lines = [f"{path}: {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise PackError("\n".join(lines)) from None
    if pack.id != root.name:
        raise PackError(f"{path}: id: '{pack.id}' differs from the folder name '{root.name}'; make them equal")
    for a in pack.assignments:
        notebooks = list(pack.source(a.id).glob("*.ipynb"))
        if not notebooks:
            raise PackError(f"{path}: assignments: '{a.id}' has no notebook in {pack.source(a.id)}")
    return pack


def packs(courses: Path | None = None) -> list[Pack]:
    courses = courses or default_courses()
    return [load(d) for d in sorted(courses.iterdir()) if (d / "course.yaml").is_file()] if courses.is_dir() else []


def find(name: str, courses: Path | None = None) -> Pack:
    courses = courses or default_courses()
    root = courses / name
    if not (root / "course.yaml").is_file():
        known = ", ".join(p.id for p in packs(courses)) or "none"
        raise PackError(f"no course pack '{name}' in {courses} (packs: {known})")
    return load(root)


def bad_checksums(pack: Pack) -> list[str]:
    """Data files whose SHA-256 differs from ``checksums.sha256`` (or that are missing)."""
    listing = pack.root / "checksums.sha256"
    bad = []
    for line in listing.read_text().splitlines() if listing.exists() else []:
        digest, _, name = line.strip().partition("  ")
        path = pack.root / "source" / name
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            bad.append(name)
    return bad


def install(pack: Pack, course_root: Path, course_id: str | None = None) -> list[str]:
    """Copy the pack into an nbgrader course directory and generate its assignments; returns their ids.

    The course directory is the hub's (``STATE_DIR/courses/ID``, made by atlaslab.grading.courses) or any
    directory; an existing assignment source is replaced by the pack's.
    """
    course_id = course_id or pack.id
    course_root.mkdir(parents=True, exist_ok=True)
    config = course_root / "nbgrader_config.py"
    if not config.exists():
        config.write_text(
            f"c = get_config()  # noqa: F821\nc.CourseDirectory.course_id = {course_id!r}\n"
            f"c.CourseDirectory.root = {str(course_root)!r}\n"
        )
    if bad := bad_checksums(pack):
        raise PackError(f"{pack.root}: data files changed or missing: {', '.join(bad)} (checksums.sha256)")
    for a in pack.assignments:
        target = course_root / "source" / a.id
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(pack.source(a.id), target)
        r = subprocess.run(
            [sys.executable, "-m", "nbgrader", "generate_assignment", a.id, "--force", "--create"],
            cwd=course_root,
            capture_output=True,
            text=True,
            env=_nbgrader_env(course_root),
        )
        if r.returncode != 0:
            raise PackError(f"{pack.root}: {a.id}: nbgrader generate_assignment failed:\n{r.stdout}{r.stderr}")
    _hand_over(course_root)
    return [a.id for a in pack.assignments]


def _nbgrader_env(course_root: Path) -> dict[str, str]:
    """The environment of the nbgrader child process."""
    # The hub's course config names AtlasLab's nbgrader plugins (atlaslab.grading.nbauth): the child must import
    # this very atlaslab, even when it is importable here only through sys.path (a clone, a test run), not the venv.
    here = str(Path(__file__).resolve().parent.parent)
    pythonpath = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    # nbgrader runs `alembic` from PATH: this venv's first.
    return {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(course_root / ".jupyter"),
        "PATH": server_path(),
        "PYTHONPATH": pythonpath,
    }


def _hand_over(course_root: Path) -> None:
    """Files written as root go to the course directory's owner (its grader account), as the formgrader needs."""
    st = course_root.stat()
    if os.geteuid() != 0 or st.st_uid == 0:
        return
    for dirpath, dirnames, filenames in os.walk(course_root):
        for name in [*dirnames, *filenames]:
            os.chown(os.path.join(dirpath, name), st.st_uid, st.st_gid, follow_symlinks=False)
