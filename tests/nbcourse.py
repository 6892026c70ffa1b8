"""A small real nbgrader course for the autograder tests: one notebook, an answer cell and two test cells.

``add(a, b)`` is the answer; the visible test is worth 1 point, the hidden test 2 (its hidden part checks
a negative number). Scores: correct 3, ``abs(a) + b`` 1, ``a - b`` 0.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import nbformat
from harness import ATLASLAB
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

COURSE = "c1"
ASSIGNMENT = "ps1"
CORRECT = "def add(a, b):\n    return a + b"
PARTLY = "def add(a, b):\n    return abs(a) + b"
WRONG = "def add(a, b):\n    return a - b"
STAMP = "2025-01-01 10:00:00.000000 UTC"
HIDDEN_LINE = "assert add(-1, 1) == 0"


def env() -> dict[str, str]:
    # nbgrader runs `alembic` from PATH when it creates a gradebook.
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}


def _meta(grade_id: str, **kw) -> dict:
    meta = {"grade": False, "solution": False, "locked": False, "grade_id": grade_id, "schema_version": 3}
    meta.update(kw)
    return {"nbgrader": meta}


def make_course(root: Path, *, config: bool = True) -> Path:
    """Source notebook, nbgrader config (unless there is one) and `nbgrader generate_assignment`."""
    (root / "source" / ASSIGNMENT).mkdir(parents=True, exist_ok=True)
    if config:
        (root / "nbgrader_config.py").write_text(
            f"c = get_config()\nc.CourseDirectory.course_id = {COURSE!r}\nc.CourseDirectory.root = {str(root)!r}\n"
        )
    nb = new_notebook(
        cells=[
            new_markdown_cell("# Problem set 1\nWrite `add`."),
            new_code_cell(
                "def add(a, b):\n    ### BEGIN SOLUTION\n    return a + b\n    ### END SOLUTION",
                metadata=_meta("answer", solution=True),
            ),
            new_code_cell("assert add(1, 2) == 3", metadata=_meta("test_visible", grade=True, locked=True, points=1)),
            new_code_cell(
                f"assert add(2, 2) == 4\n### BEGIN HIDDEN TESTS\n{HIDDEN_LINE}\n### END HIDDEN TESTS",
                metadata=_meta("test_hidden", grade=True, locked=True, points=2),
            ),
        ]
    )
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "source" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb")
    (root / "source" / ASSIGNMENT / "data.txt").write_text("course data\n")
    subprocess.run(
        [sys.executable, "-m", "nbgrader", "generate_assignment", ASSIGNMENT, "--create", "--force"],
        cwd=root,
        env=env(),
        check=True,
        capture_output=True,
    )
    return root


def submit(root: Path, student: str, answer: str | None = None, *, raw: str | None = None, stamp: str = STAMP):
    """A submission whose answer cell is ``answer`` (or a notebook file containing exactly ``raw``)."""
    dest = root / "submitted" / student / ASSIGNMENT
    dest.mkdir(parents=True, exist_ok=True)
    if raw is not None:
        (dest / f"{ASSIGNMENT}.ipynb").write_text(raw)
    else:
        nb = nbformat.read(root / "release" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
        nb.cells[1].source = answer
        nbformat.write(nb, dest / f"{ASSIGNMENT}.ipynb")
    (dest / "timestamp.txt").write_text(stamp)


def grade(root: Path, *args: str, timeout: float = 300, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*ATLASLAB, "grade", COURSE, ASSIGNMENT, "--course-dir", str(root), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**env(), "COLUMNS": "200", **(extra_env or {})},
    )


def scores(root: Path) -> dict[str, float]:
    """Total score per student, straight from the gradebook with sqlite (not through nbgrader)."""
    with sqlite3.connect(root / "gradebook.db") as db:
        rows = db.execute(
            "select submitted_assignment.student_id, sum(coalesce(grade.manual_score, grade.auto_score, 0))"
            " from grade join submitted_notebook on grade.notebook_id = submitted_notebook.id"
            " join submitted_assignment on submitted_notebook.assignment_id = submitted_assignment.id"
            " group by submitted_assignment.student_id"
        ).fetchall()
    return {student: float(score) for student, score in rows}


def record(root: Path, student: str) -> dict:
    return json.loads((root / ".atlaslab" / "autograde" / ASSIGNMENT / f"{student}.json").read_text())


def autograded(root: Path, student: str) -> dict:
    return json.loads((root / "autograded" / student / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").read_text())


def text_of(nb: dict) -> str:
    """Sources and outputs of a notebook as one string, for searching."""
    parts = []
    for cell in nb["cells"]:
        parts.append("".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"])
        for out in cell.get("outputs", []):
            parts.append(json.dumps(out))
    return "\n".join(parts)


def outputs_of(nb: dict) -> str:
    """Only the outputs (what ran printed), for searching."""
    return "\n".join(json.dumps(out) for cell in nb["cells"] for out in cell.get("outputs", []))
