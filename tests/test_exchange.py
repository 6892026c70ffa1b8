"""The exchange service and nbgrader's own CLI against it, on a real hub; then attacks, each failing if it works.

One hub for the module: two courses (algebra: an instructor and two students; biology: an instructor and a
student). nbgrader runs as a subprocess on this machine with a user's token in JUPYTERHUB_API_TOKEN and the
site's generated nbgrader config on JUPYTER_CONFIG_PATH, exactly as it runs in that user's server.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import httpx
import nbformat
import pytest
from harness import Browser, Workbench, free_port, write_site

pytestmark = pytest.mark.root
PASSWORD = "exchange-workshop-password"
ADMIN_PASSWORD = "exchange-admin-password-long-enough-32"
SITE = {
    "login": [
        {
            "provider": "shared-password",
            "password": {"env": "ATLASLAB_TEST_EXCHANGE_PASSWORD"},
            "admin_password": {"env": "ATLASLAB_TEST_EXCHANGE_ADMIN_PASSWORD"},
        }
    ],
    "tenants": {"school": {"title": "School", "environments": ["cpu-small"]}},
    "environments": {"cpu-small": {"cpu": 1, "memory": "1G", "default": True}},
    "courses": {
        "algebra": {
            "title": "Algebra",
            "tenant": "school",
            "instructors": ["teach-a"],
            "students": ["stud-1", "stud-2"],
        },
        "biology": {"title": "Biology", "tenant": "school", "instructors": ["teach-b"], "students": ["stud-b"]},
    },
}
USERS = ["teach-a", "stud-1", "stud-2", "teach-b", "stud-b", "admin"]
SOLUTION = "def add(a, b):\n    ### BEGIN SOLUTION\n    return a + b\n    ### END SOLUTION\n"


# ---- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wb(tmp_path_factory):
    os.environ["ATLASLAB_TEST_EXCHANGE_PASSWORD"] = PASSWORD
    os.environ["ATLASLAB_TEST_EXCHANGE_ADMIN_PASSWORD"] = ADMIN_PASSWORD
    wb = Workbench(write_site(tmp_path_factory.mktemp("exchange"), SITE)).start()
    yield wb
    wb.stop()


@pytest.fixture(scope="module")
def url(wb) -> str:
    url = f"http://127.0.0.1:{wb.site['service_ports']}/services/exchange/"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"exchange not up at {url}\n{wb.log()}")


@pytest.fixture(scope="module")
def tokens(wb) -> dict[str, str]:
    out = {}
    for name in USERS:
        b = Browser(wb)
        b.login(name, ADMIN_PASSWORD if name == "admin" else PASSWORD)
        assert b.logged_in_as() == name
        out[name] = b.token()
        b.close()
    return out


class Nbgrader:
    """Runs nbgrader's own CLI as a user: their token, the site's nbgrader config, their own working dir."""

    def __init__(self, wb: Workbench, url: str, tokens: dict[str, str], root: Path):
        self.wb, self.url, self.tokens, self.root = wb, url, tokens, root

    def home(self, user: str) -> Path:
        home = self.root / user
        home.mkdir(parents=True, exist_ok=True)
        return home

    def env(self, user: str) -> dict[str, str]:
        home = self.home(user)
        return dict(
            os.environ,
            HOME=str(home),
            PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            JUPYTERHUB_API_TOKEN=self.tokens[user],
            ATLASLAB_EXCHANGE_URL=self.url,
            JUPYTER_CONFIG_PATH=str(self.wb.state / "jupyter"),
            JUPYTER_CONFIG_DIR=str(home / ".jupyter"),
            JUPYTER_DATA_DIR=str(home / ".local"),
        )

    def __call__(self, user: str, *args: str, cwd: Path | None = None, ok: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(
            [sys.executable, "-m", "nbgrader", *args],
            cwd=cwd or self.home(user),
            env=self.env(user),
            capture_output=True,
            text=True,
            timeout=180,
        )
        if ok:
            assert r.returncode == 0, f"nbgrader {' '.join(args)} as {user} failed:\n{r.stdout}\n{r.stderr}"
        return r


class Api:
    """The exchange's HTTP API as one user."""

    def __init__(self, url: str, token: str | None):
        headers = {"Authorization": f"token {token}"} if token else {}
        self.http = httpx.Client(base_url=url + "api/v1/", headers=headers, timeout=60)

    def get(self, path: str, **kw) -> httpx.Response:
        return self.http.get(path, **kw)

    def put(self, path: str, content: bytes, **kw) -> httpx.Response:
        return self.http.put(path, content=content, **kw)

    def post(self, path: str, content: bytes, **kw) -> httpx.Response:
        return self.http.post(path, content=content, **kw)

    def delete(self, path: str) -> httpx.Response:
        return self.http.delete(path)


@pytest.fixture(scope="module")
def nbgrader(wb, url, tokens, tmp_path_factory) -> Nbgrader:
    return Nbgrader(wb, url, tokens, tmp_path_factory.mktemp("people"))


@pytest.fixture(scope="module")
def api(url, tokens):
    return {name: Api(url, token) for name, token in tokens.items()}


def write_notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    answer = nbformat.v4.new_code_cell(SOLUTION)
    answer.metadata["nbgrader"] = {
        "grade": False,
        "solution": True,
        "locked": False,
        "grade_id": "answer",
        "schema_version": 3,
        "task": False,
    }
    test = nbformat.v4.new_code_cell("assert add(1, 2) == 3")
    test.metadata["nbgrader"] = {
        "grade": True,
        "solution": False,
        "locked": True,
        "points": 1,
        "grade_id": "test",
        "schema_version": 3,
        "task": False,
    }
    nb.cells = [answer, test]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))


def solve(path: Path, body: str) -> None:
    nb = nbformat.read(str(path), as_version=4)
    nb.cells[0].source = f"def add(a, b):\n    {body}\n"
    nbformat.write(nb, str(path))


@pytest.fixture(scope="module")
def course(nbgrader) -> Path:
    """teach-a's nbgrader course for algebra, with ps1 generated and released through the exchange."""
    root = nbgrader.home("teach-a") / "algebra"
    root.mkdir()
    (root / "nbgrader_config.py").write_text(
        f"c = get_config()\nc.CourseDirectory.course_id = 'algebra'\nc.CourseDirectory.root = {str(root)!r}\n"
    )
    write_notebook(root / "source" / "ps1" / "ps1.ipynb")
    nbgrader("teach-a", "generate_assignment", "ps1", cwd=root)
    r = nbgrader("teach-a", "release_assignment", "ps1", cwd=root)
    assert "Released as: algebra ps1" in r.stdout + r.stderr
    return root


def tar_of(members: list[tuple[tarfile.TarInfo, bytes | None]], level: int = 6) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT, compresslevel=level) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, **attrs) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def good_tar(marker: str = "ok") -> bytes:
    return tar_of([(member("ps1.ipynb"), json.dumps({"marker": marker}).encode())])


def my_submissions(api: Api, **params) -> list[dict]:
    r = api.get("submissions", params=params)
    assert r.status_code == 200, r.text
    return r.json()["submissions"]


# ---- the whole path with nbgrader's own CLI ---------------------------------------------------------------------


def test_release_fetch_submit_collect_feedback_with_nbgraders_cli(nbgrader, course, api):
    # Students see the release and fetch it.
    r = nbgrader("stud-1", "list", "--course", "algebra")
    assert "algebra ps1" in r.stdout + r.stderr
    for student in ("stud-1", "stud-2"):
        nbgrader(student, "fetch_assignment", "ps1", "--course", "algebra")
        fetched = nbgrader.home(student) / "ps1" / "ps1.ipynb"
        assert fetched.read_bytes() == (course / "release" / "ps1" / "ps1.ipynb").read_bytes()
    # Fetching twice is refused, as with nbgrader's own exchange.
    r = nbgrader("stud-1", "fetch_assignment", "ps1", "--course", "algebra", ok=False)
    assert r.returncode != 0 and "already have a copy" in r.stdout + r.stderr

    # stud-1 submits twice (a wrong answer, then the right one); stud-2 once.
    work1 = nbgrader.home("stud-1") / "ps1" / "ps1.ipynb"
    solve(work1, "return a - b")
    nbgrader("stud-1", "submit", "ps1", "--course", "algebra")
    solve(work1, "return a + b")
    final1 = work1.read_bytes()
    nbgrader("stud-1", "submit", "ps1", "--course", "algebra")
    solve(nbgrader.home("stud-2") / "ps1" / "ps1.ipynb", "return b + a")
    nbgrader("stud-2", "submit", "ps1", "--course", "algebra")

    mine = my_submissions(api["stud-1"], course="algebra")
    assert len(mine) == 2 and [s["latest"] for s in mine] == [False, True]
    assert mine[0]["timestamp"] < mine[1]["timestamp"]
    assert {s["student"] for s in mine} == {"stud-1"}
    # Hashes are recorded: the archive's and each file's.
    assert mine[1]["files"] == [
        {"path": "ps1.ipynb", "size": len(final1), "sha256": hashlib.sha256(final1).hexdigest()}
    ]
    archive = api["stud-1"].get(f"courses/algebra/submissions/{mine[1]['id']}/archive").content
    assert hashlib.sha256(archive).hexdigest() == mine[1]["sha256"]

    # The student's view, and the instructor's.
    r = nbgrader("stud-1", "list", "--cached", "--course", "algebra")
    out = r.stdout + r.stderr
    assert out.count("algebra stud-1 ps1") == 2 and "stud-2" not in out
    r = nbgrader("teach-a", "list", "--inbound", "--course", "algebra", cwd=course)
    out = r.stdout + r.stderr
    assert out.count("algebra stud-1 ps1") == 2 and out.count("algebra stud-2 ps1") == 1

    # Collect takes the latest submission of each student, with the service's timestamp.
    nbgrader("teach-a", "collect", "ps1", cwd=course)
    collected = course / "submitted" / "stud-1" / "ps1"
    assert (collected / "ps1.ipynb").read_bytes() == final1
    stamp = (collected / "timestamp.txt").read_text()
    from nbgrader.utils import parse_utc

    assert parse_utc(stamp).isoformat() == mine[1]["timestamp"].removesuffix("+00:00")
    assert (course / "submitted" / "stud-2" / "ps1" / "ps1.ipynb").exists()

    # A newer submission: collect keeps what it has unless --update, as nbgrader's own exchange does.
    work2 = nbgrader.home("stud-2") / "ps1" / "ps1.ipynb"
    solve(work2, "return a + b + 0")
    nbgrader("stud-2", "submit", "ps1", "--course", "algebra")
    r = nbgrader("teach-a", "collect", "ps1", cwd=course)
    assert "use --update" in r.stdout + r.stderr
    assert (course / "submitted" / "stud-2" / "ps1" / "ps1.ipynb").read_bytes() != work2.read_bytes()
    nbgrader("teach-a", "collect", "--update", "ps1", cwd=course)
    assert (course / "submitted" / "stud-2" / "ps1" / "ps1.ipynb").read_bytes() == work2.read_bytes()

    # Grade, generate and release feedback; each student fetches their own.
    nbgrader("teach-a", "autograde", "ps1", cwd=course)
    nbgrader("teach-a", "generate_feedback", "ps1", cwd=course)
    r = nbgrader("teach-a", "release_feedback", "ps1", cwd=course)
    assert "Releasing feedback for student 'stud-1'" in r.stdout + r.stderr
    r = nbgrader("stud-1", "list", "--cached", "--course", "algebra")
    assert "(feedback ready to be fetched)" in r.stdout + r.stderr
    nbgrader("stud-1", "fetch_feedback", "ps1", "--course", "algebra")
    pages = list((nbgrader.home("stud-1") / "ps1" / "feedback").glob("*/ps1.html"))
    assert len(pages) == 1 and pages[0].parent.name == stamp
    assert pages[0].read_bytes() == (course / "feedback" / "stud-1" / "ps1" / "ps1.html").read_bytes()
    # Feedback went to the collected (latest) submission only.
    fb = [s["feedback"] for s in my_submissions(api["stud-1"], course="algebra")]
    assert fb[0] == [] and [f["notebook"] for f in fb[1]] == ["ps1"]


def test_list_returns_the_structures_nbgraders_lab_extension_reads(nbgrader, course, tokens, url, monkeypatch):
    """ExchangeList.start(), called as the assignment_list server extension calls it."""
    from nbgrader.auth import Authenticator
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config import Config

    from atlaslab.grading.client import ExchangeList

    home = nbgrader.home("stud-1")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", tokens["stud-1"])
    monkeypatch.setenv("ATLASLAB_EXCHANGE_URL", url)
    monkeypatch.chdir(home)
    config = Config()
    config.CourseDirectory.course_id = "algebra"
    released = ExchangeList(coursedir=CourseDirectory(config=config), authenticator=Authenticator(config=config))
    [info] = released.start()
    assert info["course_id"] == "algebra" and info["assignment_id"] == "ps1" and info["status"] == "fetched"
    assert info["path"] == str(home / "ps1")
    assert info["notebooks"] == [{"notebook_id": "ps1", "path": str(home / "ps1" / "ps1.ipynb")}]
    config.ExchangeList.cached = True
    cached = ExchangeList(
        coursedir=CourseDirectory(config=config), authenticator=Authenticator(config=config), config=config
    )
    [group] = cached.start()
    assert (group["course_id"], group["student_id"], group["assignment_id"]) == ("algebra", "stud-1", "ps1")
    assert [s["status"] for s in group["submissions"]] == ["submitted", "submitted"]
    latest = group["submissions"][-1]
    keys = {"has_local_feedback", "has_exchange_feedback", "feedback_updated", "local_feedback_path"}
    assert keys <= set(latest) and keys <= set(latest["notebooks"][0])
    assert latest["has_exchange_feedback"] and latest["has_local_feedback"] and not latest["feedback_updated"]
    assert latest["local_feedback_path"] == str(home / "ps1" / "feedback" / latest["timestamp"])


# ---- attacks: students ---------------------------------------------------------------------------------------


def test_student_cannot_see_another_students_submissions_or_feedback(course, api, nbgrader):
    if not my_submissions(api["stud-1"], course="algebra"):
        api["stud-1"].post("courses/algebra/assignments/ps1/submissions", good_tar("s1"))
    theirs = my_submissions(api["stud-1"], course="algebra")[-1]
    spy = api["stud-2"]
    listed = spy.get("courses/algebra/submissions").json()["submissions"]
    assert listed and {s["student"] for s in listed} == {"stud-2"}
    assert spy.get("courses/algebra/submissions", params={"student": "stud-1"}).status_code == 403
    assert spy.get("submissions", params={"student": "stud-1"}).status_code == 400
    for path in ("", "/archive", "/feedback"):
        r = spy.get(f"courses/algebra/submissions/{theirs['id']}{path}")
        assert r.status_code == 404, (path, r.status_code, r.text)
        assert theirs["sha256"] not in r.text
    # nbgrader's CLI as stud-2 lists nobody else either.
    r = nbgrader("stud-2", "list", "--inbound", "--course", "algebra")
    assert "stud-1" not in r.stdout + r.stderr


def test_student_cannot_release_unrelease_or_collect(course, api, nbgrader):
    spy = api["stud-1"]
    assert spy.put("courses/algebra/assignments/ps1", good_tar("evil"), params={"force": "1"}).status_code == 403
    assert spy.put("courses/algebra/assignments/ps9", good_tar("evil")).status_code == 403
    assert spy.delete("courses/algebra/assignments/ps1").status_code == 403
    record = spy.get("courses/algebra/assignments/ps1").json()
    assert record["released_by"] == "teach-a" and record["notebooks"] == ["ps1"]
    # nbgrader's collect as a student: refused, nothing collected.
    fake = nbgrader.home("stud-1") / "fake-course"
    fake.mkdir(exist_ok=True)
    r = nbgrader("stud-1", "collect", "ps1", "--course", "algebra", cwd=fake, ok=False)
    assert r.returncode != 0 and not (fake / "submitted").exists()
    r = nbgrader("stud-1", "release_assignment", "ps1", "--course", "algebra", cwd=fake, ok=False)
    assert r.returncode != 0


def test_forged_student_id_is_refused(course, api, nbgrader):
    before = len(my_submissions(api["stud-1"]))
    for params in ({"student": "stud-1"}, {"user": "stud-1"}, {"student_id": "stud-1"}):
        r = api["stud-2"].post("courses/algebra/assignments/ps1/submissions", good_tar("forged"), params=params)
        assert r.status_code == 400, r.text
    # An archive that names someone is just a file in a submission recorded as its sender's.
    r = api["stud-2"].post(
        "courses/algebra/assignments/ps1/submissions",
        tar_of([(member("student"), b"stud-1"), (member("ps1.ipynb"), b"{}")]),
    )
    assert r.status_code == 201 and r.json()["student"] == "stud-2"
    r = nbgrader("stud-2", "submit", "ps1", "--course", "algebra", "--student", "stud-1", ok=False)
    assert r.returncode != 0
    assert len(my_submissions(api["stud-1"])) == before


@pytest.mark.parametrize(
    "bad",
    [
        [(member("../x"), b"x")],
        [(member("ps1/../../x"), b"x")],
        [(member("/etc/passwd"), b"x")],
        [(member("link", tarfile.SYMTYPE, linkname="/etc/passwd"), None)],
        [(member("ps1.ipynb"), b"{}"), (member("hard", tarfile.LNKTYPE, linkname="ps1.ipynb"), None)],
        [(member("null", tarfile.CHRTYPE, devmajor=1, devminor=3), None)],
        [(member("disk", tarfile.BLKTYPE, devmajor=8, devminor=0), None)],
        [(member("pipe", tarfile.FIFOTYPE), None)],
        [(member("a\\..\\x"), b"x")],
        [(member("-rf .ipynb"), b"{}")],
        [(member("ps1.ipynb"), b"{}"), (member("ps1.ipynb"), b"{}")],
    ],
    ids=[
        "dotdot",
        "nested-dotdot",
        "absolute",
        "symlink",
        "hardlink",
        "chardev",
        "blockdev",
        "fifo",
        "backslash",
        "notebook-name",
        "duplicate",
    ],
)
def test_bad_archives_are_refused(course, api, bad):
    before = len(my_submissions(api["stud-1"]))
    r = api["stud-1"].post("courses/algebra/assignments/ps1/submissions", tar_of(bad))
    assert r.status_code == 400 and "archive refused" in r.json()["error"], r.text
    r = api["teach-a"].put("courses/algebra/assignments/bad", tar_of(bad))
    assert r.status_code == 400, r.text
    assert api["teach-a"].get("courses/algebra/assignments/bad").status_code == 404
    assert len(my_submissions(api["stud-1"])) == before


def test_archive_bombs_are_refused(course, api):
    big = tar_of([(member("zeros.bin"), bytes(300 * 1024 * 1024))], level=1)  # ~1 MB compressed, 300 MB unpacked
    r = api["stud-1"].post("courses/algebra/assignments/ps1/submissions", big)
    assert r.status_code == 400 and "more than" in r.json()["error"], r.text
    many = tar_of([(member(f"f{i}"), b"") for i in range(1001)])
    r = api["stud-1"].post("courses/algebra/assignments/ps1/submissions", many)
    assert r.status_code == 400 and "members" in r.json()["error"], r.text
    assert api["stud-1"].post("courses/algebra/assignments/ps1/submissions", b"not a tar").status_code == 400


def test_oversized_upload_is_refused_early_with_413(course, url, tokens, api):
    before = len(my_submissions(api["stud-1"]))
    # The headers announce 60 MB; the service answers 413 after the first megabyte, without reading the rest.
    path = url.split("127.0.0.1:", 1)[1].split("/", 1)[1]
    port = int(url.split("127.0.0.1:", 1)[1].split("/", 1)[0])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(
            (
                f"POST /{path}api/v1/courses/algebra/assignments/ps1/submissions HTTP/1.1\r\n"
                f"Host: 127.0.0.1\r\nAuthorization: token {tokens['stud-1']}\r\n"
                f"Content-Type: application/gzip\r\nContent-Length: {60 * 1024 * 1024}\r\n\r\n"
            ).encode()
            + bytes(1024 * 1024)
        )
        reply = s.recv(65536).decode(errors="replace")
    assert reply.startswith("HTTP/1.1 413"), reply[:300]
    assert "limit" in reply
    # Chunked, with no length announced: cut off at the limit.
    chunks = (bytes(1024 * 1024) for _ in range(60))
    try:
        r = api["stud-1"].http.post("courses/algebra/assignments/ps1/submissions", content=chunks)
        assert r.status_code in (400, 413), r.text
    except httpx.HTTPError:
        pass  # the service closed the connection: refused as well
    assert len(my_submissions(api["stud-1"])) == before


def test_tokens_without_exchange_access_are_refused(wb, url, tokens, api):
    assert Api(url, None).get("whoami").status_code == 401
    assert Api(url, "not-a-token").get("whoami").status_code == 403
    b = Browser(wb)
    b.login("stud-1", PASSWORD)
    r = b.api("POST", "/users/stud-1/tokens", json={"scopes": ["read:users:name!user"], "expires_in": 600})
    assert r.status_code == 201, r.text
    narrow = Api(url, r.json()["token"])
    r = narrow.get("submissions")
    assert r.status_code == 403 and "access:services!service=exchange" in r.json()["error"]
    assert narrow.post("courses/algebra/assignments/ps1/submissions", good_tar("narrow")).status_code == 403
    # A revoked token stops working within the service's few seconds of cache.
    r = b.api("POST", "/users/stud-1/tokens", json={"expires_in": 600})
    token, token_id = r.json()["token"], r.json()["id"]
    doomed = Api(url, token)
    assert doomed.get("whoami").json()["name"] == "stud-1"
    assert b.api("DELETE", f"/users/stud-1/tokens/{token_id}").status_code == 204
    deadline = time.monotonic() + 15
    while doomed.get("whoami").status_code == 200:
        assert time.monotonic() < deadline, "revoked token still accepted"
        time.sleep(0.5)
    assert doomed.get("whoami").status_code == 403
    b.close()


def test_courses_are_walled_off(course, api, nbgrader):
    # biology has an assignment too.
    r = api["teach-b"].put("courses/biology/assignments/lab1", good_tar("bio"))
    assert r.status_code == 201, r.text
    assert api["teach-b"].get("whoami").json()["courses"] == {"biology": "staff"}
    # algebra's instructor can neither release, unrelease nor collect in biology.
    teach_a = api["teach-a"]
    assert teach_a.put("courses/biology/assignments/lab1", good_tar("x"), params={"force": "1"}).status_code == 403
    assert teach_a.delete("courses/biology/assignments/lab1").status_code == 403
    assert teach_a.get("courses/biology/submissions").status_code == 403
    r = nbgrader("teach-a", "collect", "lab1", "--course", "biology", cwd=course, ok=False)
    assert r.returncode != 0 and not (course / "submitted").joinpath("stud-b").exists()
    # algebra's students can neither see nor fetch biology's assignment, nor submit to it.
    spy = api["stud-1"]
    assert spy.get("courses/biology/assignments/lab1").status_code == 403
    assert spy.get("courses/biology/assignments/lab1/archive").status_code == 403
    assert spy.get("assignments", params={"course": "biology"}).status_code == 403
    assert [a["course"] for a in spy.get("assignments").json()["assignments"]] == ["algebra"]
    assert spy.post("courses/biology/assignments/lab1/submissions", good_tar("x")).status_code == 403
    r = nbgrader("stud-1", "fetch_assignment", "lab1", "--course", "biology", ok=False)
    assert r.returncode != 0 and not (nbgrader.home("stud-1") / "lab1").exists()
    # biology's own student can.
    assert api["stud-b"].get("courses/biology/assignments/lab1/archive").status_code == 200


def test_admins_act_as_staff_but_never_as_students(course, api):
    admin = api["admin"]
    assert admin.get("whoami").json()["admin"] is True
    assert {a["course"] for a in admin.get("assignments").json()["assignments"]} >= {"algebra"}
    assert admin.get("courses/algebra/submissions").status_code == 200
    assert admin.post("courses/algebra/assignments/ps1/submissions", good_tar("admin")).status_code == 403


# ---- two instances on one database and blob directory ------------------------------------------------------------


@pytest.fixture(scope="module")
def second_instance(wb, url):
    """Another exchange process on the same database and blob directory, as the service's own account."""
    port = free_port()
    directory = wb.state / "exchange"
    env = dict(
        os.environ,
        JUPYTERHUB_API_TOKEN=wb.secret("exchange-token"),
        JUPYTERHUB_API_URL=f"http://127.0.0.1:{wb.site['hub_port']}/hub/api",
        JUPYTERHUB_SERVICE_URL=f"http://127.0.0.1:{port}",
        JUPYTERHUB_SERVICE_PREFIX="/services/exchange/",
        JUPYTERHUB_SERVICE_NAME="exchange",
        ATLASLAB_EXCHANGE_DIR=str(directory),
        ATLASLAB_EXCHANGE_DB=f"sqlite:///{directory / 'exchange.sqlite'}",
    )
    account = {"user": "atlaslab-exchange", "group": "atlaslab-exchange"} if os.geteuid() == 0 else {}
    log = open(wb.config.parent / "exchange-2.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "atlaslab.grading.exchange"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=str(directory),
        **account,
    )
    other = f"http://127.0.0.1:{port}/services/exchange/"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(other, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, (wb.config.parent / "exchange-2.log").read_text()
        time.sleep(0.2)
    yield other
    proc.terminate()
    proc.wait(10)
    log.close()


def test_two_instances_keep_every_concurrent_submission(course, url, second_instance, tokens, api):
    students = ["stud-1", "stud-2"]
    before = {s: len(my_submissions(api[s])) for s in students}
    sent: dict[str, tuple[str, str]] = {}
    errors: list[str] = []

    def submit(i: int) -> None:
        student = students[i % 2]
        base = url if i < 20 else second_instance
        marker = f"concurrent-{i}"
        body = good_tar(marker)
        try:
            with httpx.Client(timeout=120, headers={"Authorization": f"token {tokens[student]}"}) as http:
                r = http.post(base + "api/v1/courses/algebra/assignments/ps1/submissions", content=body)
            if r.status_code != 201:
                errors.append(f"{i}: {r.status_code} {r.text}")
                return
            sent[marker] = (student, r.json()["sha256"])
            assert r.json()["sha256"] == hashlib.sha256(body).hexdigest()
        except Exception as e:  # reported below
            errors.append(f"{i}: {e!r}")

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    assert len(sent) == 40
    for student in students:
        mine = my_submissions(api[student], course="algebra")
        assert len(mine) == before[student] + 20
        assert len({s["timestamp"] for s in mine}) == len(mine)
        assert sum(s["latest"] for s in mine) == 1
    # Every one is there, intact, from either instance.
    for i, (marker, (student, sha)) in enumerate(sorted(sent.items())):
        base = url if i % 2 else second_instance
        mine = {s["sha256"]: s for s in my_submissions(api[student], course="algebra")}
        record = mine[sha]
        with httpx.Client(timeout=60, headers={"Authorization": f"token {tokens[student]}"}) as http:
            data = http.get(base + f"api/v1/courses/algebra/submissions/{record['id']}/archive").content
        assert hashlib.sha256(data).hexdigest() == sha
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            payload = json.loads(tar.extractfile("ps1.ipynb").read())
        assert payload == {"marker": marker}


# ---- the same, from where users and graders really run it ---------------------------------------------------------


def test_nbgraders_assignment_list_in_a_students_server_uses_the_exchange(wb, course, api):
    """The lab extension's server side in stud-2's own server, with only the server's own token and config."""
    from harness import wait_server

    b = Browser(wb)
    b.login("stud-2", PASSWORD)
    b.spawn()
    wait_server(wb, "stud-2")
    base = f"{wb.url}/user/stud-2"
    # The lab extension's requests, with the browser's session (the server's own token does the rest).
    server = b.http
    xsrf = server.get(f"{base}/lab").cookies.get("_xsrf") or server.cookies.get("_xsrf", path="/user/stud-2/")
    headers = {"X-XSRFToken": xsrf or ""}
    r = server.get(f"{base}/assignments", params={"course_id": "algebra"}, headers=headers)
    assert r.status_code == 200 and r.json()["success"], r.text[:2000]
    [released] = [a for a in r.json()["value"] if a["status"] in ("released", "fetched")]
    assert (released["course_id"], released["assignment_id"]) == ("algebra", "ps1")
    before = len(my_submissions(api["stud-2"]))
    for action in ("fetch", "submit"):
        r = server.post(
            f"{base}/assignments/{action}",
            data={"course_id": "algebra", "assignment_id": "ps1"},
            headers=headers,
        )
        assert r.status_code == 200 and r.json()["success"], r.text[:2000]
    assert len(my_submissions(api["stud-2"])) == before + 1
    submitted = [a for a in r.json()["value"] if a.get("submissions")]
    assert submitted and submitted[0]["student_id"] == "stud-2"
    b.api("DELETE", "/users/stud-2/server")
    b.close()


def test_a_course_formgrader_is_staff_of_its_own_course_only(wb, url):
    """The formgrader service of algebra (running as grader-algebra) reaches the exchange with its own token."""
    import psutil

    env = None
    deadline = time.monotonic() + 30
    while env is None and time.monotonic() < deadline:
        for proc in psutil.process_iter():
            try:
                candidate = proc.environ()
            except (psutil.Error, OSError):
                continue
            if candidate.get("JUPYTERHUB_SERVICE_NAME") == "algebra" and candidate.get("JUPYTERHUB_API_TOKEN"):
                env = candidate
                break
        else:
            time.sleep(0.5)
    assert env is not None, "algebra's formgrader is not running"
    assert env["ATLASLAB_EXCHANGE_URL"] == url
    assert (Path(env["JUPYTER_CONFIG_PATH"]) / "nbgrader_config.py").exists()
    grader = Api(url, env["JUPYTERHUB_API_TOKEN"])
    me = grader.get("whoami").json()
    assert me == {"name": "algebra", "kind": "service", "admin": False, "courses": {"algebra": "staff"}}
    listed = grader.get("courses/algebra/submissions", params={"latest": "1"})
    assert listed.status_code == 200 and {s["student"] for s in listed.json()["submissions"]} <= {"stud-1", "stud-2"}
    assert grader.get("courses/biology/submissions").status_code == 403
    assert grader.post("courses/algebra/assignments/ps1/submissions", good_tar("grader")).status_code == 403


# ---- due dates -------------------------------------------------------------------------------------------------


def test_a_release_carries_the_gradebooks_due_date_to_students(nbgrader, api):
    """The instructor sets a due date in biology's gradebook; releasing with nbgrader's CLI hands it to students."""
    root = nbgrader.home("teach-b") / "biology"
    root.mkdir()
    (root / "nbgrader_config.py").write_text(
        f"c = get_config()\nc.CourseDirectory.course_id = 'biology'\nc.CourseDirectory.root = {str(root)!r}\n"
    )
    write_notebook(root / "source" / "lab2" / "lab2.ipynb")
    nbgrader("teach-b", "db", "assignment", "add", "lab2", "--duedate=2031-06-30 23:59:00 Europe/Paris", cwd=root)
    nbgrader("teach-b", "generate_assignment", "lab2", cwd=root)
    r = nbgrader("teach-b", "release_assignment", "lab2", cwd=root)
    assert "Released as: biology lab2" in r.stdout + r.stderr
    records = {a["assignment"]: a for a in api["stud-b"].get("assignments", params={"course": "biology"}).json()[
        "assignments"]}  # fmt: skip
    # Paris is on summer time (UTC+2) in June: 21:59 UTC.
    assert records["lab2"]["due"] == "2031-06-30T21:59:00.000000+00:00"
    # lab1 was released by hand without a due date (test_courses_are_walled_off): none is made up.
    assert records["lab1"]["due"] is None
    r = nbgrader("stud-b", "list", "--course", "biology")
    assert "biology lab2 (due 2031-06-30 21:59:00" in r.stdout + r.stderr
    # A release with a due date that is no date is refused, and the release is unchanged.
    bad = api["teach-b"].put("courses/biology/assignments/lab2", good_tar("x"), params={"force": "1", "due": "soon"})
    assert bad.status_code == 400 and "bad due date" in bad.json()["error"]
    assert api["stud-b"].get("courses/biology/assignments/lab2").json()["due"] == records["lab2"]["due"]
