"""The whole assignment cycle through the hub, as an instructor and two students do it; scores asserted exactly.

The instructor works only in the course's formgrader (a hub service, reached through the hub's OAuth login):
uploads the source notebook, generates and releases, collects, autogrades (the formgrader's own button, which
AtlasLab routes to the sandboxed autograder), changes grades by hand, generates and releases feedback. The
students work only in their own servers, through nbgrader's lab extension routes: fetch, submit (twice), fetch
feedback. Then attacks on the autograder service.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pwd
import re
import subprocess
import sys

import httpx
import nbformat
import pytest
from harness import Browser, Workbench, logged_in, unique, wait_server, wait_service, write_site

pytestmark = pytest.mark.root
PASSWORD = "cycle-workshop-password"
# Fresh names: users' homes (/home/jupyter-NAME) outlive a test's hub, and other test modules use short names.
S1, S2 = unique("cyc1-"), unique("cyc2-")
SITE = {
    "login": [{"provider": "shared-password", "password": {"env": "ATLASLAB_TEST_CYCLE_PASSWORD"}}],
    "tenants": {"school": {"title": "School", "environments": ["cpu-small"]}},
    "environments": {"cpu-small": {"cpu": 1, "memory": "1G", "default": True}},
    "courses": {
        "algebra": {
            "title": "Algebra",
            "tenant": "school",
            "instructors": ["teach-a"],
            "students": [S1, S2],
        },
        "biology": {"title": "Biology", "tenant": "school", "instructors": ["teach-b"], "students": [unique("cycb-")]},
    },
}
HIDDEN = "assert add(-1, 1) == 0"


def source_notebook() -> dict:
    def cell(kind: str, source: str, **grading) -> dict:
        c = nbformat.v4.new_code_cell(source) if kind == "code" else nbformat.v4.new_markdown_cell(source)
        if grading:
            c.metadata["nbgrader"] = {"schema_version": 3, "task": False, "locked": False, "solution": False, **grading}
        return c

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        cell(
            "code",
            "def add(a, b):\n    ### BEGIN SOLUTION\n    return a + b\n    ### END SOLUTION\n",
            solution=True,
            grade=False,
            grade_id="answer",
        ),
        cell(
            "code",
            f"assert add(1, 2) == 3\n### BEGIN HIDDEN TESTS\n{HIDDEN}\n### END HIDDEN TESTS\n",
            grade=True,
            locked=True,
            points=2,
            grade_id="tests",
        ),
        cell(
            "markdown",
            "Why does addition commute?\n\n=== BEGIN MARK SCHEME ===\nAnything sensible.\n=== END MARK SCHEME ===",
            solution=True,
            grade=True,
            points=3,
            grade_id="explain",
        ),
        cell(
            "code",
            "import os, pwd\nprint('RUNAS', pwd.getpwuid(os.getuid()).pw_name)",
            grade=False,
            locked=True,
            grade_id="whoami",
        ),
    ]
    return json.loads(nbformat.writes(nb))


class Formgrader:
    """A course's formgrader as its instructor's browser uses it: through the hub, session cookies, XSRF."""

    def __init__(self, b: Browser, course: str):
        self.b, self.prefix = b, f"/services/{course}"
        wait_service(b.wb, course, "formgrader/")
        r = b.http.get(f"{self.prefix}/formgrader/")
        assert r.status_code == 200, r.text[:500]
        self.xsrf = next(c.value for c in b.http.cookies.jar if c.name == "_xsrf" and c.path.startswith(self.prefix))

    def call(self, method: str, path: str, **kw) -> httpx.Response:
        r = self.b.http.request(method, self.prefix + path, headers={"X-XSRFToken": self.xsrf}, timeout=600, **kw)
        assert r.status_code in (200, 201), f"{method} {path}: {r.status_code} {r.text[:1000]}"
        return r

    def action(self, path: str) -> dict:
        result = self.call("POST", f"/formgrader/api/{path}").json()
        assert result["success"], f"{path}: {result}"
        return result

    def get(self, path: str):
        return self.call("GET", f"/formgrader/api/{path}").json()


class Student:
    """A student in their own server: the contents API and nbgrader's assignment_list extension routes."""

    def __init__(self, wb: Workbench, name: str):
        self.name = name
        self.b = Browser(wb)
        self.b.login(name, PASSWORD)
        self.b.spawn()
        wait_server(wb, name, timeout=120)
        self.base = f"/user/{name}"
        self.b.http.get(f"{self.base}/lab")
        self.xsrf = next(c.value for c in self.b.http.cookies.jar if c.name == "_xsrf" and c.path.startswith(self.base))

    def request(self, method: str, path: str, **kw) -> httpx.Response:
        return self.b.http.request(method, self.base + path, headers={"X-XSRFToken": self.xsrf}, timeout=180, **kw)

    def assignments(self, action: str) -> dict:
        r = self.request("POST", f"/assignments/{action}", data={"course_id": "algebra", "assignment_id": "ps1"})
        assert r.status_code == 200 and r.json()["success"], r.text[:2000]
        return r.json()

    def answer(self, body: str, explanation: str) -> None:
        path = "/api/contents/ps1/ps1.ipynb"
        nb = self.request("GET", path).json()["content"]
        nb["cells"][0]["source"] = f"def add(a, b):\n    {body}\n"
        nb["cells"][2]["source"] = explanation
        r = self.request("PUT", path, json={"type": "notebook", "format": "json", "content": nb})
        assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def wb(tmp_path_factory):
    os.environ["ATLASLAB_TEST_CYCLE_PASSWORD"] = PASSWORD
    wb = Workbench(write_site(tmp_path_factory.mktemp("cycle"), SITE)).start()
    yield wb
    wb.stop()


def login(wb: Workbench, name: str) -> Browser:
    return logged_in(wb, name, PASSWORD)


def test_the_whole_cycle_through_the_hub(wb):
    fg = Formgrader(login(wb, "teach-a"), "algebra")

    # The instructor uploads the source notebook into the course, generates and releases it.
    fg.call("PUT", "/api/contents/source/ps1", json={"type": "directory"})
    fg.call(
        "PUT",
        "/api/contents/source/ps1/ps1.ipynb",
        json={"type": "notebook", "format": "json", "content": source_notebook()},
    )
    fg.action("assignment/ps1/assign")
    fg.action("assignment/ps1/release")

    # Students fetch it in their servers; stud-1 submits a wrong then a right answer, stud-2 one that fails
    # only the hidden test.
    s1, s2 = Student(wb, S1), Student(wb, S2)
    for s in (s1, s2):
        s.assignments("fetch")
        released = s.request("GET", "/api/contents/ps1/ps1.ipynb").json()["content"]
        assert "BEGIN SOLUTION" not in json.dumps(released) and HIDDEN not in json.dumps(released)
    s1.answer("return a - b", "No idea.")
    s1.assignments("submit")
    s1.answer("return a + b", "Because integers form a commutative group.")
    s1.assignments("submit")
    s2.answer("return a + b if a >= 0 else a - b", "It just does.")
    s2.assignments("submit")

    # Collect takes each student's latest submission.
    fg.action("assignment/ps1/collect")
    submitted = wb.state / "courses" / "algebra" / "submitted" / S1 / "ps1" / "ps1.ipynb"
    assert "return a + b" in submitted.read_text()

    # The formgrader's Autograde button, per submission: graded in the sandbox, not as the grader account.
    for student in (S1, S2):
        result = fg.action(f"submission/ps1/{student}/autograde")
        assert f"{student}: graded" in result["log"], result
    autograded = nbformat.read(wb.state / "courses/algebra/autograded" / S1 / "ps1/ps1.ipynb", as_version=4)
    ran_as = autograded.cells[3].outputs[0]["text"].split()
    assert ran_as[0] == "RUNAS" and ran_as[1].startswith("atlaslab-sandbox-"), ran_as
    scores = {s["student"]: (s["score"], s["max_score"], s["needs_manual_grade"]) for s in fg.get("submissions/ps1")}
    assert scores == {S1: (2.0, 5.0, True), S2: (0.0, 5.0, True)}

    # Grading by hand in the gradebook: the explanations, and partial credit for stud-2's tests.
    def grades(student: str) -> dict[str, dict]:
        [nb] = [n for n in fg.get("submitted_notebooks/ps1/ps1") if n["student"] == student]
        return {g["name"]: g for g in fg.get(f"grades?submission_id={nb['id']}")}

    g1, g2 = grades(S1), grades(S2)
    assert (g1["tests"]["auto_score"], g2["tests"]["auto_score"]) == (2.0, 0.0)
    fg.call("PUT", f"/formgrader/api/grade/{g1['explain']['id']}", json={"manual_score": 2.5})
    fg.call("PUT", f"/formgrader/api/grade/{g2['explain']['id']}", json={"manual_score": 1})
    fg.call("PUT", f"/formgrader/api/grade/{g2['tests']['id']}", json={"manual_score": 1})
    scores = {s["student"]: (s["score"], s["needs_manual_grade"]) for s in fg.get("submissions/ps1")}
    assert scores == {S1: (4.5, False), S2: (2.0, False)}

    # Feedback: generated and released from the formgrader, fetched by each student in their server.
    fg.action("assignment/ps1/generate_feedback")
    fg.action("assignment/ps1/release_feedback")
    for s, score in ((s1, 4.5), (s2, 2.0)):
        s.assignments("fetch_feedback")
        [stamp] = s.request("GET", "/api/contents/ps1/feedback").json()["content"]
        html = s.request("GET", f"/files/{stamp['path']}/ps1.html").text
        shown = re.search(r"Score: ([0-9.]+) / ([0-9.]+)", html)
        assert shown and (float(shown[1]), float(shown[2])) == (score, 5.0), html[-3000:]
        assert HIDDEN not in html and "add(-1, 1)" not in html  # the course does not reveal hidden tests
    # A student's feedback is theirs alone: stud-2's server has none of stud-1's.
    assert "Because integers" not in s2.request("GET", f"/files/{stamp['path']}/ps1.html").text

    # The grades an LMS gets.
    out = subprocess.run(
        [sys.executable, "-m", "atlaslab.cli", "grades", "export", "algebra", "--config", str(wb.config)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = {row["student_id"]: row for row in csv.DictReader(io.StringIO(out))}
    assert (rows["(max)"]["ps1"], rows["(max)"]["total"]) == ("5", "5"), out
    assert (rows[S1]["ps1"], rows[S1]["total"]) == ("4.5", "4.5"), out
    assert (rows[S2]["ps1"], rows[S2]["total"]) == ("2", "2"), out


def autograder(wb: Workbench) -> str:
    return f"http://127.0.0.1:{wb.site['service_ports'] + 1}/services/autograder/api/v1"


def test_students_and_other_courses_staff_cannot_autograde(wb):
    url = autograder(wb) + "/courses/algebra/assignments/ps1/grade"
    for name, status in ((S1, 403), ("teach-b", 403)):
        token = login(wb, name).token()
        r = httpx.post(url, json={}, headers={"Authorization": f"token {token}"}, timeout=60)
        assert r.status_code == status, (name, r.text)
    assert httpx.post(url, json={}, timeout=60).status_code == 401
    # A student cannot reach the formgrader's autograde route at all.
    b = login(wb, S1)
    r = b.http.post(f"/services/algebra/formgrader/api/submission/ps1/{S2}/autograde")
    assert r.status_code == 403


def test_bad_requests_get_clear_errors(wb):
    token = login(wb, "teach-a").token()
    headers = {"Authorization": f"token {token}"}
    base = autograder(wb)
    r = httpx.post(f"{base}/courses/algebra/assignments/ps1/grade", content=b"{not json", headers=headers)
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    r = httpx.post(f"{base}/courses/algebra/assignments/ps1/grade", json={"students": ["../x"]}, headers=headers)
    assert r.status_code == 400 and "bad student id" in r.json()["error"]
    r = httpx.post(f"{base}/courses/algebra/assignments/nope/grade", json={}, headers=headers, timeout=120)
    assert r.status_code == 200 and r.json()["success"] is False and "nope" in r.json()["error"], r.text


def test_a_course_pack_installs_into_the_running_hubs_course(wb):
    """`atlaslab course install` into a site course: its formgrader lists the assignments and can release them."""
    r = subprocess.run(
        [sys.executable, "-m", "atlaslab.cli", "course", "install", "ml-foundations", "--course", "biology",
         "--config", str(wb.config)],
        capture_output=True,
        text=True,
        cwd="/",  # found without the clone as working directory (through PREFIX/courses or the editable install)
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "numpy-basics, linear-regression, classification, evaluation generated" in r.stdout
    root = wb.state / "courses" / "biology"
    assert (root / "release" / "numpy-basics" / "numpy-basics.ipynb").exists()
    assert pwd.getpwuid((root / "release" / "numpy-basics").stat().st_uid).pw_name == "grader-biology"
    fg = Formgrader(login(wb, "teach-b"), "biology")
    listed = {a["name"] for a in fg.get("assignments")}
    assert {"numpy-basics", "linear-regression", "classification", "evaluation"} <= listed
    fg.action("assignment/numpy-basics/release")
    # An unknown pack, or a course the site does not have, is one clear line.
    r = subprocess.run(
        [sys.executable, "-m", "atlaslab.cli", "course", "install", "nope", "--config", str(wb.config)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "no course pack 'nope'" in r.stderr and "Traceback" not in r.stderr
