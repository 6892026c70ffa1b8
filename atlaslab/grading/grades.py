"""Grades out of a course's gradebook, as CSV for an LMS: one row per student, a column per assignment, a total.

The first data row (student id ``(max)``) holds each assignment's maximum points, unless left out. Scores
are nbgrader's (autograded or, where given, manual, minus any late penalty); no submission scores 0.
Assignments are in due-date order (those without a due date last, by name).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

MAX_ROW = "(max)"


@dataclass
class GradeTable:
    assignments: list[str]
    max_scores: dict[str, float]
    rows: list[dict]  # student_id, first_name, last_name, email, one key per assignment, total


def _db_url(course_root: Path) -> str:
    return f"sqlite:///{course_root / 'gradebook.db'}"


def read_grades(course_root: str | os.PathLike[str], db_url: str | None = None) -> GradeTable:
    """Everything the CSV holds, read through nbgrader's Gradebook API (read only)."""
    from nbgrader.api import Gradebook

    root = Path(course_root).resolve()
    url = db_url or _db_url(root)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise FileNotFoundError(f"no gradebook at {url.removeprefix('sqlite:///')}")
    with Gradebook(url) as gb:
        assignments = sorted(gb.assignments, key=lambda a: (a.duedate is None, a.duedate or 0, a.name))
        names = [a.name for a in assignments]
        max_scores = {a.name: float(a.max_score or 0) for a in assignments}
        scores: dict[str, dict[str, float]] = {}
        for name in names:
            for sub in gb.assignment_submissions(name):
                penalty = float(sub.late_submission_penalty or 0)
                scores.setdefault(sub.student_id, {})[name] = max(0.0, float(sub.score or 0) - penalty)
        rows = []
        for student in sorted(gb.students, key=lambda s: s.id):
            mine = scores.get(student.id, {})
            row = {
                "student_id": student.id,
                "first_name": student.first_name or "",
                "last_name": student.last_name or "",
                "email": student.email or "",
            }
            for name in names:
                row[name] = mine.get(name, 0.0)
            row["total"] = sum(mine.get(name, 0.0) for name in names)
            rows.append(row)
    return GradeTable(names, max_scores, rows)


def _num(x: float) -> str:
    return f"{x:g}" if abs(x - round(x, 6)) < 1e-9 else f"{x:.6g}"


def write_csv(table: GradeTable, out: TextIO, *, max_row: bool = True) -> int:
    """Write ``table`` as CSV; returns the number of student rows."""
    fields = ["student_id", "first_name", "last_name", "email", *table.assignments, "total"]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(fields)
    if max_row:
        maxes = [table.max_scores[a] for a in table.assignments]
        writer.writerow([MAX_ROW, "", "", "", *(_num(m) for m in maxes), _num(sum(maxes))])
    for row in table.rows:
        writer.writerow([row[f] if isinstance(row[f], str) else _num(row[f]) for f in fields])
    return len(table.rows)


def export_grades(course_root: str | os.PathLike[str], out: TextIO, *, max_row: bool = True) -> int:
    return write_csv(read_grades(course_root), out, max_row=max_row)
