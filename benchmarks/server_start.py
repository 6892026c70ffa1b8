"""Where a user server's start-up time goes: jupyterhub-singleuser with and without each of AtlasLab's cuts.

Starts one single-user server at a time against a stand-in hub API on 127.0.0.1 (enough for the server's
start-up check and activity report), and measures from exec to the first HTTP answer on the server's API:
wall time, CPU time of the server and the helpers it ran, and RSS. Variants run interleaved, ``--reps`` times
each, so that a change in the machine's load affects them all alike; the table shows medians.

    python benchmarks/server_start.py                 # all variants, 7 rounds
    python benchmarks/server_start.py --importtime launcher-no-course   # slowest imports of one variant

The variants:

* ``stock``: jupyterhub-singleuser with every installed server extension.
* ``stock-old-atlaslab``: what AtlasLab did before: nbgrader's formgrader and course list disabled.
* ``launcher``: ``python -m atlaslab.workbench.singleuser`` (deferred rfc3987_syntax, no yarn probe), every extension.
* ``launcher-course``: the launcher with what a course member's server loads (no formgrader, course list,
  jupyter_lsp).
* ``launcher-no-course``: the launcher with what a user in no course loads (also no nbgrader student
  extensions): AtlasLab's default.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent
NBGRADER_INSTRUCTOR = ["nbgrader.server_extensions.formgrader", "nbgrader.server_extensions.course_list"]
NBGRADER_STUDENT = ["nbgrader.server_extensions.assignment_list", "nbgrader.server_extensions.validate_assignment"]
STOCK = [str(BIN / "jupyterhub-singleuser")]
LAUNCHER = [sys.executable, "-m", "atlaslab.workbench.singleuser"]


def disable(*names: str) -> list[str]:
    return [f"--ServerApp.jpserver_extensions={name}=False" for name in names]


VARIANTS = {
    "stock": STOCK,
    "stock-old-atlaslab": STOCK + disable(*NBGRADER_INSTRUCTOR),
    "launcher": LAUNCHER,
    "launcher-course": LAUNCHER + disable(*NBGRADER_INSTRUCTOR, "jupyter_lsp"),
    "launcher-no-course": LAUNCHER + disable(*NBGRADER_INSTRUCTOR, *NBGRADER_STUDENT, "jupyter_lsp"),
}


class FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers what a starting single-user server asks its hub: the version check and the activity report."""

    def _answer(self) -> None:
        body = json.dumps({"version": "6.1.1"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-JupyterHub-Version", "6.1.1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer()

    def log_message(self, *args) -> None:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_once(cmd: list[str], hub_port: int, env_extra: dict[str, str] | None = None) -> dict:
    port = free_port()
    home = tempfile.mkdtemp(prefix="server-start-")
    api = f"http://127.0.0.1:{hub_port}/hub/api"
    env = dict(
        os.environ,
        HOME=home,
        JUPYTERHUB_API_TOKEN="0" * 32,
        JUPYTERHUB_CLIENT_ID="jupyterhub-user-bench",
        JUPYTERHUB_API_URL=api,
        JUPYTERHUB_ACTIVITY_URL=f"{api}/users/bench/activity",
        JUPYTERHUB_BASE_URL="/",
        JUPYTERHUB_SERVICE_PREFIX="/user/bench/",
        JUPYTERHUB_SERVICE_URL=f"http://127.0.0.1:{port}/user/bench/",
        JUPYTERHUB_USER="bench",
        JUPYTERHUB_SERVER_NAME="",
        JUPYTERHUB_OAUTH_CALLBACK_URL="/user/bench/oauth_callback",
        JUPYTERHUB_OAUTH_SCOPES="[]",
        JUPYTERHUB_OAUTH_ACCESS_SCOPES="[]",
        JUPYTERHUB_OAUTH_CLIENT_ALLOWED_SCOPES="[]",
        JUPYTERHUB_HOST="",
        **(env_extra or {}),
    )
    args = ["--ServerApp.allow_root=True"] if os.geteuid() == 0 else []
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd + args, env=env, cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        deadline = t0 + 120
        while time.perf_counter() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                    s.sendall(b"GET /user/bench/api HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        break
            except OSError:
                time.sleep(0.005)
        else:
            raise TimeoutError("server did not answer within 120 s")
        wall = time.perf_counter() - t0
        p = psutil.Process(proc.pid)
        t = p.cpu_times()
        return {
            "wall": wall,
            "cpu": t.user + t.system + t.children_user + t.children_system,
            "rss_mib": p.memory_info().rss / 2**20,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7, help="starts per variant (default 7)")
    parser.add_argument("--variants", nargs="*", choices=sorted(VARIANTS), help="default: all")
    parser.add_argument("--importtime", choices=sorted(VARIANTS), help="print the slowest imports of one variant")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    hub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    hub_port = hub.server_address[1]

    if args.importtime:
        show_importtime(VARIANTS[args.importtime], hub_port)
        return 0

    names = args.variants or list(VARIANTS)
    start_once(VARIANTS[names[0]], hub_port)  # warm the page cache; not counted
    results: dict[str, list[dict]] = {name: [] for name in names}
    print(f"load average {os.getloadavg()[0]:.2f} before", flush=True)
    for _ in range(args.reps):
        for name in names:
            results[name].append(start_once(VARIANTS[name], hub_port))
    print(f"load average {os.getloadavg()[0]:.2f} after; medians of {args.reps} starts each\n")
    print(f"{'variant':<22}{'wall to HTTP s':>16}{'min s':>8}{'CPU s':>8}{'RSS MiB':>9}")
    base = statistics.median(r["wall"] for r in results[names[0]])
    summary = {}
    for name in names:
        runs = results[name]
        wall = statistics.median(r["wall"] for r in runs)
        summary[name] = {
            "wall_s": wall,
            "wall_min_s": min(r["wall"] for r in runs),
            "cpu_s": statistics.median(r["cpu"] for r in runs),
            "rss_mib": statistics.median(r["rss_mib"] for r in runs),
            "runs": runs,
        }
        s = summary[name]
        print(
            f"{name:<22}{wall:>16.2f}{s['wall_min_s']:>8.2f}{s['cpu_s']:>8.2f}{s['rss_mib']:>9.0f}"
            f"   {wall / base:.2f}x {names[0]}"
        )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    hub.shutdown()
    return 0


def show_importtime(cmd: list[str], hub_port: int, top: int = 15) -> None:
    """Run one start with -X importtime and print the modules with the largest own import time."""
    log = Path(tempfile.mkstemp(prefix="importtime-")[1])
    env = {"PYTHONPROFILEIMPORTTIME": "1"}
    real_popen = subprocess.Popen

    def popen(*a, **kw):
        kw["stderr"] = open(log, "w")  # noqa: SIM115 (closed with the process)
        return real_popen(*a, **kw)

    subprocess.Popen = popen  # type: ignore[misc]
    try:
        start_once(cmd, hub_port, env)
    finally:
        subprocess.Popen = real_popen  # type: ignore[misc]
    rows = []
    for line in log.read_text().splitlines():
        if line.startswith("import time:") and "|" in line:
            own, cumulative, name = (part.strip() for part in line[len("import time:") :].split("|"))
            if own.isdigit():
                rows.append((int(own), int(cumulative), name))
    total = sum(r[0] for r in rows)
    print(f"{len(rows)} modules, {total / 1e6:.2f} s of import time (inflated by -X importtime itself)")
    for own, cumulative, name in sorted(rows, reverse=True)[:top]:
        print(f"{own / 1e3:9.1f} ms own {cumulative / 1e3:9.1f} ms cumulative  {name}")
    log.unlink()


if __name__ == "__main__":
    sys.exit(main())
