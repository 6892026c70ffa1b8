"""`atlaslab grade` on a real nbgrader course: scores, statuses, reasons, feedback, resuming, CSV export.

Real nbgrader, real kernels, the real sandbox (root: accounts, namespaces, cgroups); run through the CLI.
"""

from __future__ import annotations

import csv
import io
import os
import pwd
import re
import signal
import subprocess
import time
from html import unescape

import pytest
from harness import ATLASLAB, write_site
from nbcourse import (
    ASSIGNMENT,
    CORRECT,
    COURSE,
    HIDDEN_LINE,
    PARTLY,
    WRONG,
    autograded,
    env,
    grade,
    make_course,
    record,
    scores,
    submit,
    text_of,
)

from atlaslab.grading.sandbox import can_access

pytestmark = pytest.mark.root

EXPECTED = {
    "correct": (3.0, "graded"),
    "partly": (1.0, "graded"),
    "wrong": (0.0, "graded"),
    "broken": (0.0, "invalid notebook"),
    "loops": (0.0, "timeout"),
    "suicide": (0.0, "kernel died"),
    "empty": (0.0, "graded"),
}


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    root = make_course(tmp_path_factory.mktemp("autograde") / COURSE)
    submit(root, "correct", CORRECT + "\nprint(open('data.txt').read())")  # the source's files are there
    submit(root, "partly", PARTLY)
    submit(root, "wrong", WRONG)
    submit(root, "broken", raw='{"cells": [ this is not json')
    submit(root, "loops", CORRECT + "\nwhile True:\n    pass")
    submit(root, "suicide", CORRECT + "\nimport os\nos.kill(os.getpid(), 9)")
    submit(root, "empty", "def add(a, b):\n    # YOUR CODE HERE\n    raise NotImplementedError()")
    first = grade(root, "--timeout", "6", "--workers", "2")
    return root, first


def test_scores_and_statuses(course):
    root, run = course
    assert run.returncode == 0, run.stdout + run.stderr
    assert scores(root) == {student: score for student, (score, _) in EXPECTED.items()}
    for student, (_, status) in EXPECTED.items():
        assert record(root, student)["status"] == status, student
        assert any(student in line and status in line for line in run.stdout.splitlines()), run.stdout
    assert "7 submissions" in run.stdout and "Traceback" not in run.stderr


def test_correct_run_used_the_assignment_files(course):
    root, _ = course
    nb = autograded(root, "correct")
    assert "course data" in text_of(nb)
    assert nb["cells"][0]["cell_type"] == "markdown" and "Autograder" not in "".join(nb["cells"][0]["source"])


def test_reasons_are_in_the_autograded_notebooks(course):
    root, _ = course
    loops = autograded(root, "loops")
    banner = "".join(loops["cells"][0]["source"])
    assert "Autograder: timeout" in banner and "time limit (6 s, wall clock)" in banner
    answer = loops["cells"][2]  # the banner is cell 0: the answer cell is 2
    assert answer["outputs"][0]["ename"] == "AutograderTimeout"
    assert "This cell was stopped" in answer["outputs"][0]["traceback"][0]
    assert "was not run" in loops["cells"][3]["outputs"][0]["traceback"][0]

    suicide = text_of(autograded(root, "suicide"))
    assert "Autograder: kernel died" in suicide and "SIGKILL" in suicide

    broken = autograded(root, "broken")
    assert "Autograder: invalid notebook" in "".join(broken["cells"][0]["source"])
    assert record(root, "broken")["reason"].startswith("the submitted notebook is not a valid notebook")
    # The stand-in carries every graded cell, so the formgrader shows the zeros.
    ids = [c["metadata"].get("nbgrader", {}).get("grade_id") for c in broken["cells"]]
    assert {"answer", "test_visible", "test_hidden"} <= set(ids)


def test_feedback_shows_reasons_but_not_hidden_tests(course):
    from atlaslab.grading.autograde import generate_feedback

    root, _ = course
    files = generate_feedback(root, ASSIGNMENT)
    by_student = {p.parent.parent.name: _plain_text(p.read_text()) for p in files}
    assert set(by_student) == set(EXPECTED)
    assert "Autograder: timeout" in by_student["loops"]
    assert "Autograder: kernel died" in by_student["suicide"]
    assert "not a valid notebook" in by_student["broken"]
    # The autograded notebook still has the hidden test (formgrader), the feedback does not.
    assert HIDDEN_LINE in text_of(autograded(root, "partly"))
    for text in by_student.values():
        assert "add(-1, 1)" not in text and "HIDDEN TESTS" not in text
    assert "a hidden test failed" in by_student["partly"]
    revealed = generate_feedback(root, ASSIGNMENT, ["partly"], reveal_hidden_tests=True)
    assert "add(-1, 1)" in _plain_text(revealed[0].read_text())


def test_second_run_skips_everything(course):
    root, _ = course
    before = scores(root)
    nb_path = root / "autograded" / "correct" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    mtime = nb_path.stat().st_mtime_ns
    run = grade(root, "--timeout", "6")
    assert run.returncode == 0, run.stderr
    assert "0 graded now" in run.stdout and run.stdout.count("graded earlier") == len(EXPECTED), run.stdout
    assert scores(root) == before and nb_path.stat().st_mtime_ns == mtime


def test_a_resubmission_is_graded_again_and_force_regrades_all(course):
    root, _ = course
    submit(root, "partly", CORRECT, stamp="2025-01-02 10:00:00.000000 UTC")
    run = grade(root, "--timeout", "6", "--student", "partly", "--student", "wrong")
    assert run.returncode == 0, run.stderr
    assert "1 graded now" in run.stdout, run.stdout
    assert scores(root)["partly"] == 3.0
    run = grade(root, "--timeout", "6", "--force", "--student", "partly", "--student", "wrong")
    assert "2 graded now" in run.stdout, run.stdout
    assert scores(root)["partly"] == 3.0 and scores(root)["wrong"] == 0.0


def test_grades_export_csv(course, tmp_path):
    root, _ = course
    out = tmp_path / "grades.csv"
    r = subprocess.run(
        [*ATLASLAB, "grades", "export", COURSE, "--course-dir", str(root), "-o", str(out)],
        capture_output=True,
        text=True,
        env=env(),
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(rows[0]) == ["student_id", "first_name", "last_name", "email", ASSIGNMENT, "total"]
    assert rows[0]["student_id"] == "(max)" and rows[0][ASSIGNMENT] == "3" and rows[0]["total"] == "3"
    got = {row["student_id"]: (row[ASSIGNMENT], row["total"]) for row in rows[1:]}
    want = {s: (f"{v:g}", f"{v:g}") for s, v in scores(root).items()}
    assert got == want and got["partly"] == ("3", "3")
    r = subprocess.run(
        [*ATLASLAB, "grades", "export", COURSE, "--course-dir", str(root), "--no-max-row"],
        capture_output=True,
        text=True,
        env=env(),
        timeout=120,
    )
    assert r.returncode == 0 and "(max)" not in r.stdout and r.stdout.count("\n") == 1 + len(EXPECTED)


def test_records_and_outputs_belong_to_the_course(course):
    root, _ = course
    rec = record(root, "loops")
    assert rec["timestamp"] and rec["notebooks"]["ps1"]["status"] == "timeout"
    # No sandbox account can read the course, and none is left running.
    ps = subprocess.run(["ps", "-eo", "user:32="], capture_output=True, text=True).stdout.split()
    assert not [u for u in ps if u.startswith(("atlaslab-sandbox-", "atlaslab-executor-"))]
    sandbox = pwd.getpwnam("atlaslab-sandbox-0")
    assert not can_access(sandbox.pw_uid, sandbox.pw_gid, root / "gradebook.db")
    assert not can_access(sandbox.pw_uid, sandbox.pw_gid, root / "submitted")


def test_unknown_assignment_is_a_clear_error(course):
    root, _ = course
    r = subprocess.run(
        [*ATLASLAB, "grade", COURSE, "nope", "--course-dir", str(root)],
        capture_output=True,
        text=True,
        env=env(),
        timeout=120,
    )
    assert r.returncode == 2 and "'nope' is not in the gradebook" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def _plain_text(html: str) -> str:
    return unescape(re.sub(r"<[^>]+>", "", html))


def test_a_site_course_is_graded_as_its_grader_account(tmp_path):
    """Without --course-dir: STATE_DIR/courses/COURSE from the site config, graded as grader-COURSE."""
    from atlaslab.config import load
    from atlaslab.grading.courses import ensure_course_dir

    site = {
        "login": [{"provider": "native"}],
        "tenants": {"school": {"title": "School", "environments": ["cpu-small"]}},
        "environments": {"cpu-small": {"cpu": 1, "memory": "1G", "default": True}},
        "courses": {COURSE: {"title": "Course", "tenant": "school", "instructors": ["teach"]}},
    }
    config = write_site(tmp_path / "site", site)
    root = ensure_course_dir(load(config, check_secrets=False).state_dir, COURSE).root
    make_course(root, config=False)
    submit(root, "amina", CORRECT)
    submit(root, "bo", PARTLY)
    grader = pwd.getpwnam(f"grader-{COURSE}")
    os.chown(root, grader.pw_uid, grader.pw_gid)  # the rest (written by root here) is handed over by grade

    r = subprocess.run(
        [*ATLASLAB, "grade", COURSE, ASSIGNMENT, "--config", str(config), "--timeout", "20"],
        capture_output=True,
        text=True,
        env={**env(), "COLUMNS": "200"},
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert scores(root) == {"amina": 3.0, "bo": 1.0}
    for path in (
        root / "gradebook.db",
        root / "autograded" / "amina" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb",
        root / ".atlaslab" / "autograde" / ASSIGNMENT / "bo.json",
    ):
        assert path.stat().st_uid == grader.pw_uid, path
    r = subprocess.run(
        [*ATLASLAB, "grade", "nope", ASSIGNMENT, "--config", str(config)],
        capture_output=True,
        text=True,
        env=env(),
        timeout=120,
    )
    assert r.returncode == 2 and "unknown course 'nope'" in r.stderr, r.stderr


def test_an_interrupted_run_stops_at_once_and_resumes(tmp_path):
    root = make_course(tmp_path / COURSE)
    submit(root, "a-loop", CORRECT + "\nwhile True:\n    pass")
    submit(root, "b-loop", CORRECT + "\nwhile True:\n    pass")
    submit(root, "c-ok", CORRECT)
    submit(root, "d-ok", PARTLY)
    cmd = [*ATLASLAB, "grade", COURSE, ASSIGNMENT, "--course-dir", str(root), "--timeout", "60", "-j", "2"]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not _sandboxes_running() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "run the same command again" in err, out + err
    assert time.monotonic() - started < 15  # it did not wait for the 60 s limit
    time.sleep(0.5)
    assert not _sandboxes_running()
    records = root / ".atlaslab" / "autograde" / ASSIGNMENT
    assert not (records / "a-loop.json").exists() and not (records / "b-loop.json").exists()

    r = grade(root, "--timeout", "3", "-j", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert scores(root) == {"a-loop": 0.0, "b-loop": 0.0, "c-ok": 3.0, "d-ok": 1.0}
    assert record(root, "a-loop")["status"] == "timeout"


def _sandboxes_running() -> bool:
    ps = subprocess.run(["ps", "-eo", "user:32="], capture_output=True, text=True).stdout.split()
    return any(u.startswith("atlaslab-sandbox-") for u in ps)
