"""Each course gets a formgrader service reachable by its own staff only, and a private course directory."""

from __future__ import annotations

import os
import pwd
import stat

import pytest
from harness import Browser, Workbench, logged_in, run_code, wait_server, wait_service, write_site

pytestmark = pytest.mark.root
PASSWORD = "course-workshop-password"
SITE = {
    "login": [{"provider": "shared-password", "password": {"env": "ATLASLAB_TEST_COURSE_PASSWORD"}}],
    "tenants": {"school": {"title": "School", "environments": ["cpu-small"]}},
    "environments": {"cpu-small": {"cpu": 1, "memory": "1G", "default": True}},
    "courses": {
        "algebra": {
            "title": "Algebra",
            "tenant": "school",
            "instructors": ["teach-a"],
            "tas": ["ta-a"],
            "students": ["stud-a"],
        },
        "biology": {"title": "Biology", "tenant": "school", "instructors": ["teach-b"], "students": ["stud-b"]},
    },
}


@pytest.fixture(scope="module")
def wb(tmp_path_factory):
    os.environ["ATLASLAB_TEST_COURSE_PASSWORD"] = PASSWORD
    wb = Workbench(write_site(tmp_path_factory.mktemp("courses"), SITE)).start()
    yield wb
    wb.stop()


def login(wb: Workbench, name: str) -> Browser:
    return logged_in(wb, name, PASSWORD)


def open_formgrader(b: Browser, course: str):
    """Follow the hub's OAuth dance into the course's formgrader, once it is up."""
    wait_service(b.wb, course, "formgrader/")
    return b.http.get(f"/services/{course}/formgrader/")


def test_staff_reach_their_course_formgrader_only(wb):
    teach_a, ta_a, teach_b = login(wb, "teach-a"), login(wb, "ta-a"), login(wb, "teach-b")
    r = open_formgrader(teach_a, "algebra")
    assert r.status_code == 200 and "formgrader" in r.text.lower(), r.text[:500]
    assert open_formgrader(ta_a, "algebra").status_code == 200
    assert open_formgrader(teach_b, "biology").status_code == 200
    # An instructor of biology gets nothing of algebra.
    r = open_formgrader(teach_b, "algebra")
    assert r.status_code == 403
    # The formgrader may be framed by its own JupyterLab (nbgrader #1870), by nobody else.
    r = teach_a.http.get("/services/algebra/formgrader/")
    assert r.headers.get("Content-Security-Policy") == "frame-ancestors 'self'"


def test_students_reach_no_formgrader_and_no_gradebook(wb):
    stud = login(wb, "stud-a")
    for course in ("algebra", "biology"):
        assert open_formgrader(stud, course).status_code == 403
    stud.spawn()
    wait_server(wb, "stud-a")
    course_dir = (wb.state / "courses" / "algebra").resolve()
    out = run_code(
        wb,
        "stud-a",
        stud.token(),
        f"""
import os
for action in (lambda: os.listdir({str(course_dir)!r}), lambda: open({str(course_dir / "nbgrader_config.py")!r}).read(),
               lambda: os.listdir({str(course_dir.parent)!r})):
    try:
        print('LEAK', action())
    except PermissionError:
        print('denied')
""",
    )
    assert out.split() == ["denied"] * 3, out


def test_course_directories_belong_to_their_grader_account(wb):
    for course in ("algebra", "biology"):
        root = wb.state / "courses" / course
        st = root.stat()
        assert stat.S_IMODE(st.st_mode) == 0o700
        assert pwd.getpwuid(st.st_uid).pw_name == f"grader-{course}"
        assert (root / "nbgrader_config.py").read_text().count(f"course_id = {course!r}") == 1
