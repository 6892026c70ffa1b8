"""Spawn burst: N users log in, start a server, run a cell and stop, all at once, on AtlasLab and on stock JupyterHub.

Both systems run on this machine, one after the other, with the same workload and the same kind of spawner:

* AtlasLab, started with ``atlaslab up`` from a generated site config: shared-password login and
  ``spawner.isolation: none`` (servers run as the hub's account, like SimpleLocalProcessSpawner).
* Stock JupyterHub with SimpleLocalProcessSpawner and SharedPasswordAuthenticator; the hub starts its own
  configurable-http-proxy (the same binary AtlasLab uses).

Every simulated user is a thread doing what a browser does, through the public proxy:

1. ``login``: GET the login form, POST it (username, shared password, XSRF token).
2. ``spawn-ready``: POST /hub/api/users/NAME/server with the session cookie and XSRF header, follow the
   progress event stream until the hub says ready, then until the server answers through the proxy.
3. ``first-result``: create a kernel and execute a cell over its websocket, through the proxy; measured
   from the spawn request.
4. ``warm RTT``: once every user has a first result, users take turns (one at a time, so the figure is
   latency and not CPU contention) running ``--rounds`` trivial cells through the proxy, then the same
   number straight to the server's port (``warm RTT direct``, for reference).
5. ``stop``: once everyone is done, all users stop their servers at once (DELETE, then wait until gone).

A warm-up user runs the whole path alone before the burst (not counted), so both systems start with the
same page cache. Peak memory is the largest sum of RSS over the system's process tree (supervisor or hub,
proxy, services, user servers, kernels), sampled every 0.25 s during the run. From the burst's start to the
last first result the same sampler counts CPU seconds per kind of process, the time the hub and proxy spent
waiting for a CPU, and the CPU the machine spent on processes that are not this run's (other people's work
skews the figures; each system also waits for an idle CPU before it starts, ``--settle``).

Stock JupyterHub gives a server 30 s (``Spawner.http_timeout``) to answer; on a small machine a burst of 30
exceeds that and most stock users fail. ``--stock-http-timeout 300`` lets them finish for a like-for-like
comparison of times.

    python benchmarks/spawn_burst.py                  # 30 users, both systems, ratios
    python benchmarks/spawn_burst.py --users 1        # one uncontended user
    python benchmarks/spawn_burst.py --only atlaslab --json out.json

Exit status: 0 when every AtlasLab user succeeded (or every stock user, with ``--only stock``), 1 when any
failed, 2 when a system could not be started. Stock users failing in a comparison run are reported, not fatal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import websocket
import yaml

ROOT = Path(__file__).resolve().parent.parent
METRICS = (
    ("login", "login", "s"),
    ("spawn_ready", "spawn-ready", "s"),
    ("first_result", "first-result", "s"),
    ("warm_rtt", "warm RTT via proxy", "ms"),
    ("warm_rtt_direct", "warm RTT direct", "ms"),
    ("stop", "stop", "s"),
)
TARGETS = (
    # (metric, percentile, most AtlasLab/stock ratio allowed, label)
    ("first_result", 50, 0.5, "first-result p50 <= 0.5x stock"),
    ("first_result", 95, 0.6, "burst first-result p95 <= 0.6x stock"),
    ("spawn_ready", 95, 0.6, "burst spawn-ready p95 <= 0.6x stock"),
    ("warm_rtt", 50, 0.3, "warm round-trip p50 <= 0.3x stock"),
)


class SetupError(RuntimeError):
    """The system under test could not be started or stopped; the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_chp() -> str:
    found = shutil.which("configurable-http-proxy") or str(ROOT / "node_modules" / ".bin" / "configurable-http-proxy")
    if not Path(found).exists():
        raise SetupError("configurable-http-proxy not found (run `npm install` in the repository)")
    return found


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---- the systems under test ---------------------------------------------------------------------------------


class System:
    """One system under test: a process tree started here, a public URL, the proxy's REST API."""

    label = ""

    def __init__(self, workdir: Path, password: str):
        self.workdir = workdir
        self.password = password
        self.port, self.hub_port, self.api_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proxy_api = f"http://127.0.0.1:{self.api_port}/api/routes"
        self.proxy_token = ""
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "run.log"
        self.seen: dict[int, float] = {}  # pid -> create_time of every process seen in the tree

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def logs(self) -> list[Path]:
        return [self.log_path]

    def start(self, timeout: float) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SetupError(f"{self.label} exited with code {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/hub/login", timeout=5).status_code == 200:
                    self.after_start()
                    return
            time.sleep(0.1)
        raise SetupError(f"{self.label} did not answer at {self.url} within {timeout:.0f} s:\n{self.log_tail()}")

    def after_start(self) -> None:
        pass

    def log_tail(self) -> str:
        return "\n".join(f"--- {p} ---\n{tail(p)}" for p in self.logs() if p.exists())

    def stop_signal(self) -> int:
        return signal.SIGTERM

    def stop(self, timeout: float = 90) -> None:
        """Stop the tree gracefully; kill what is left of the processes this run started (by pid)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal())
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for pid, created in self.seen.items():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if proc.create_time() == created:  # the same process, not a reused pid
                    proc.kill()

    def tree(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return []
        for p in procs:
            with contextlib.suppress(psutil.Error):
                self.seen.setdefault(p.pid, p.create_time())
        return procs

    def server_base(self, user: str) -> str:
        """The user's server straight on its port, bypassing the proxy (from the proxy's routing table)."""
        r = httpx.get(self.proxy_api, headers={"Authorization": f"token {self.proxy_token}"}, timeout=30)
        r.raise_for_status()
        route = r.json().get(f"/user/{user}")
        if not route:
            raise RuntimeError(f"no proxy route for {user}")
        return f"{route['target'].rstrip('/')}/user/{user}"


class AtlasLab(System):
    label = "AtlasLab"

    def __init__(self, workdir: Path, password: str):
        super().__init__(workdir, password)
        self.config = workdir / "atlaslab.yaml"

    def command(self) -> list[str]:
        secret = self.workdir / "user-password"
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password + "\n")
        site = {
            "site": {
                "name": "spawn-burst",
                "bind": f"127.0.0.1:{self.port}",
                "hub_port": self.hub_port,
                "proxy_api_port": self.api_port,
                "state_dir": "state",
            },
            "login": [{"provider": "shared-password", "password": {"file": secret.name}}],
            # The same no-account spawning as SimpleLocalProcessSpawner. Everything else as shipped (including
            # limits.concurrent_spawns, 100 like stock's concurrent_spawn_limit).
            "spawner": {"isolation": "none"},
        }
        self.config.write_text(yaml.safe_dump(site, sort_keys=False))
        return [sys.executable, "-m", "atlaslab.cli", "up", "--config", str(self.config)]

    def logs(self) -> list[Path]:
        logs = self.workdir / "state" / "logs"
        return [self.log_path, logs / "hub.log", logs / "proxy.log"]

    def after_start(self) -> None:
        self.proxy_token = (self.workdir / "state" / "secrets" / "proxy-token").read_text().strip()

    def stop_signal(self) -> int:
        return signal.SIGINT  # `atlaslab up` stops the servers, the hub, then the proxy


class Stock(System):
    label = "stock"
    http_timeout: float | None = None

    def command(self) -> list[str]:
        self.proxy_token = secrets.token_hex(32)
        config = f"""# Stock JupyterHub for spawn_burst.py: SimpleLocalProcessSpawner, SharedPasswordAuthenticator.
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = {self.password!r}
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = {str(self.workdir / "homes")!r} + "/{{username}}"
c.JupyterHub.bind_url = {self.url + "/"!r}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {self.hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.api_port}"
c.ConfigurableHTTPProxy.auth_token = {self.proxy_token!r}
c.ConfigurableHTTPProxy.command = [{find_chp()!r}]
c.JupyterHub.db_url = "sqlite:///{self.workdir / "jupyterhub.sqlite"}"
c.JupyterHub.cookie_secret_file = {str(self.workdir / "cookie_secret")!r}
c.JupyterHub.pid_file = {str(self.workdir / "jupyterhub.pid")!r}
c.Spawner.default_url = "/lab"
"""
        if self.http_timeout:
            config += f"c.Spawner.http_timeout = {self.http_timeout!r}\n"
        if os.geteuid() == 0:
            config += 'c.Spawner.args = ["--allow-root"]  # jupyter_server refuses to run as root otherwise\n'
        path = self.workdir / "jupyterhub_config.py"
        path.write_text(config)
        return [sys.executable, "-m", "jupyterhub", "-f", str(path)]


# ---- one simulated user -------------------------------------------------------------------------------------


class Phase:
    """A barrier that tolerates users that failed: each user arrives once; waiters stop at a deadline."""

    def __init__(self, count: int):
        self.count = count
        self.arrived = 0
        self.cond = threading.Condition()

    def arrive(self) -> None:
        with self.cond:
            self.arrived += 1
            self.cond.notify_all()

    def wait(self, deadline: float) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.arrived >= self.count, max(0.0, deadline - time.monotonic()))


@dataclass
class UserResult:
    name: str
    times: dict[str, float] = field(default_factory=dict)
    warm: list[float] = field(default_factory=list)
    warm_direct: list[float] = field(default_factory=list)
    stage: str = "start"
    error: str | None = None


@dataclass
class Burst:
    users: int
    rounds: int
    timeout: float
    first_done: Phase = field(init=False)
    warm_done: Phase = field(init=False)
    go: threading.Event = field(default_factory=threading.Event)
    warm_lock: threading.Lock = field(default_factory=threading.Lock)
    deadline: float = 0.0

    def __post_init__(self) -> None:
        self.first_done = Phase(self.users)
        self.warm_done = Phase(self.users)

    def warm_budget(self) -> float:
        """Bound for the serialised warm phase: generous for ~50 ms round trips, still finite."""
        return self.users * (2 * self.rounds + 4) * 1.0 + 120


def execute(ws: websocket.WebSocket, code: str, timeout: float) -> str:
    """Send an execute_request, return its stdout once the kernel is idle again."""
    msg_id = uuid.uuid4().hex
    ws.send(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "username": "bench",
                    "session": uuid.uuid4().hex,
                    "msg_type": "execute_request",
                    "version": "5.3",
                },
                "parent_header": {},
                "metadata": {},
                "content": {"code": code, "silent": False, "store_history": False, "allow_stdin": False},
                "channel": "shell",
            }
        )
    )
    out: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = json.loads(ws.recv())
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            raise RuntimeError(f"cell failed: {msg['content']['ename']}: {msg['content']['evalue']}")
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return "".join(out)
    raise TimeoutError(f"no reply to {code!r} within {timeout:.0f} s")


class User:
    def __init__(self, system: System, name: str, burst: Burst):
        self.system = system
        self.name = name
        self.burst = burst
        self.result = UserResult(name)
        self.http = httpx.Client(base_url=system.url, timeout=httpx.Timeout(60.0), follow_redirects=False)
        self.token = ""
        self.kernel = ""

    # -- helpers --

    def remaining(self) -> float:
        left = self.burst.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"per-user time limit ({self.burst.timeout:.0f} s) reached")
        return left

    def xsrf(self) -> dict[str, str]:
        for cookie in self.http.cookies.jar:
            if cookie.name == "_xsrf":
                return {"X-XSRFToken": cookie.value or ""}
        return {}

    def check(self, r: httpx.Response, *ok: int) -> httpx.Response:
        if r.status_code not in ok:
            raise RuntimeError(f"{r.request.method} {r.request.url.path} -> {r.status_code}: {r.text[:300]}")
        return r

    def ws_connect(self, base: str, timeout: float) -> websocket.WebSocket:
        url = f"{base.replace('http', 'ws', 1)}/api/kernels/{self.kernel}/channels"
        return websocket.create_connection(url, header=[f"Authorization: token {self.token}"], timeout=timeout)

    # -- the path --

    def run(self, measured: bool = True) -> UserResult:
        first_arrived = warm_arrived = False
        try:
            if measured:
                self.burst.go.wait()
            self.burst.deadline = self.burst.deadline or time.monotonic() + self.burst.timeout
            self.login()
            self.spawn_and_first_result()
            if measured:
                self.burst.first_done.arrive()
                first_arrived = True
                self.burst.first_done.wait(self.burst.deadline)
            self.warm_rounds()
            if measured:
                self.burst.warm_done.arrive()
                warm_arrived = True
                self.burst.warm_done.wait(time.monotonic() + self.burst.warm_budget())
            self.stop_server()
            self.result.stage = "done"
        except Exception as e:
            self.result.error = f"{type(e).__name__}: {e}"
            if os.environ.get("SPAWN_BURST_TRACEBACK"):
                traceback.print_exc()
            with contextlib.suppress(Exception):
                self.http.delete(f"/hub/api/users/{self.name}/server", headers=self.xsrf(), timeout=30)
        finally:
            if measured and not first_arrived:
                self.burst.first_done.arrive()
            if measured and not warm_arrived:
                self.burst.warm_done.arrive()
            self.http.close()
        return self.result

    def login(self) -> None:
        self.result.stage = "login"
        t0 = time.perf_counter()
        page = self.check(self.http.get("/hub/login"), 200)
        match = re.search(r'name="_xsrf"\s+value="([^"]+)"', page.text)
        form = {"username": self.name, "password": self.system.password}
        if match:
            form["_xsrf"] = match.group(1)
        r = self.check(self.http.post("/hub/login?next=", data=form), 302)
        if "/hub/login" in r.headers.get("location", ""):
            raise RuntimeError("login refused")
        self.result.times["login"] = time.perf_counter() - t0
        # A token for the user's own server API (what JupyterLab gets through OAuth in a browser).
        r = self.http.post(
            f"/hub/api/users/{self.name}/tokens", json={"note": "spawn-burst", "expires_in": 3600}, headers=self.xsrf()
        )
        self.token = self.check(r, 200, 201).json()["token"]

    def spawn_and_first_result(self) -> None:
        self.result.stage = "spawn"
        t0 = time.perf_counter()
        r = self.http.post(
            f"/hub/api/users/{self.name}/server",
            json={},
            headers=self.xsrf(),
            timeout=httpx.Timeout(self.remaining()),
        )
        self.check(r, 201, 202)
        if r.status_code == 202:
            self.follow_progress()
        self.wait_reachable()
        self.result.times["spawn_ready"] = time.perf_counter() - t0

        self.result.stage = "first-result"
        headers = {"Authorization": f"token {self.token}"}
        base = f"/user/{self.name}/api/kernels"
        r = self.http.post(base, json={"name": "python3"}, headers=headers, timeout=httpx.Timeout(self.remaining()))
        self.kernel = self.check(r, 201).json()["id"]
        ws = self.ws_connect(f"{self.system.url}/user/{self.name}", min(60.0, self.remaining()))
        try:
            out = execute(ws, "print(6 * 7)", self.remaining())
        finally:
            ws.close()
        if out.strip() != "42":
            raise RuntimeError(f"unexpected cell output {out!r}")
        self.result.times["first_result"] = time.perf_counter() - t0

    def follow_progress(self) -> None:
        url = f"/hub/api/users/{self.name}/server/progress"
        timeout = httpx.Timeout(30.0, read=self.remaining())
        with self.http.stream("GET", url, headers=self.xsrf(), timeout=timeout) as resp:
            self.check(resp, 200)
            for line in resp.iter_lines():
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                if event.get("ready"):
                    return
                if event.get("failed"):
                    raise RuntimeError(f"spawn failed: {event.get('message')}")
        raise RuntimeError("progress stream ended without a ready event")

    def wait_reachable(self) -> None:
        headers = {"Authorization": f"token {self.token}"}
        while True:
            with contextlib.suppress(httpx.TransportError):
                r = self.http.get(f"/user/{self.name}/api/status", headers=headers, timeout=min(30.0, self.remaining()))
                if r.status_code == 200:
                    return
                if r.status_code in (401, 403):
                    # Seen with stock JupyterHub: two spawns got the same random port, the hub took the other
                    # user's server for this one's and routed this user there, which refuses the token.
                    raise RuntimeError(f"the proxy routes {self.name} to a server that refuses its token")
            time.sleep(0.02)
            self.remaining()

    def warm_rounds(self) -> None:
        if self.burst.rounds <= 0:
            return
        self.result.stage = "warm"
        with self.burst.warm_lock:
            for base, into in (
                (f"{self.system.url}/user/{self.name}", self.result.warm),
                (self.system.server_base(self.name), self.result.warm_direct),
            ):
                ws = self.ws_connect(base, 60)  # the per-user limit covers the way to a first result, not this
                try:
                    execute(ws, "1 + 1", 60)  # not counted: the connection's first message
                    for _ in range(self.burst.rounds):
                        t0 = time.perf_counter()
                        execute(ws, "1 + 1", 60)
                        into.append(time.perf_counter() - t0)
                finally:
                    ws.close()

    def stop_server(self) -> None:
        self.result.stage = "stop"
        t0 = time.perf_counter()
        self.check(self.http.delete(f"/hub/api/users/{self.name}/server", headers=self.xsrf()), 202, 204)
        stop_deadline = time.monotonic() + 120
        while time.monotonic() < stop_deadline:
            model = self.check(self.http.get(f"/hub/api/users/{self.name}", headers=self.xsrf()), 200).json()
            if not model.get("servers") and not model.get("pending"):
                self.result.times["stop"] = time.perf_counter() - t0
                return
            time.sleep(0.1)
        raise TimeoutError("server did not stop within 120 s")


# ---- running one system --------------------------------------------------------------------------------------


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all cores, since boot)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0) + getattr(t, "steal", 0.0)


def run_delay(pid: int) -> float:
    """Seconds the process's main thread has spent runnable but waiting for a CPU (/proc/PID/schedstat)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def category(proc: psutil.Process) -> str:
    cmd = " ".join(proc.cmdline())
    for needle, name in (
        ("ipykernel", "kernels"),
        ("singleuser", "servers"),
        ("yarn.js", "servers"),  # stock servers run `node yarn.js config` while they start
        ("configurable-http-proxy", "proxy"),
        ("idle_culler", "services"),
        ("jupyterhub", "hub"),
    ):
        if needle in cmd:
            return name
    return "other"


class Sampler(threading.Thread):
    """Samples the system's process tree: peak total RSS over the run, CPU seconds per kind of process.

    CPU is counted from the burst's start until ``freeze()`` (called once every user has a first result):
    a process's own time, plus its reaped children's for servers (the short-lived helpers they run).
    """

    def __init__(self, system: System, interval: float = 0.25):
        super().__init__(daemon=True)
        self.system = system
        self.interval = interval
        self.peak = 0
        self.peak_procs = 0
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self.counting = False
        self.base: dict[int, float] = {}
        self.cpu: dict[int, tuple[str, float]] = {}
        self.kinds: dict[int, str] = {}
        self.base_wait: dict[int, float] = {}
        self.waits: dict[int, tuple[str, float]] = {}
        self.peak_by_kind: dict[str, int] = {}

    def sample(self) -> None:
        total = 0
        by_kind: dict[str, int] = {}
        procs = self.system.tree()
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                kind = self.kinds.get(proc.pid) or self.kinds.setdefault(proc.pid, category(proc))
                rss = proc.memory_info().rss
                total += rss
                by_kind[kind] = by_kind.get(kind, 0) + rss
                with self.lock:
                    if not self.counting:
                        continue
                    if kind != "kernels" and self.kinds.get(proc.ppid()) == "servers":
                        continue  # a server's short-lived helper: counted in the server's children_* once reaped
                    t = proc.cpu_times()
                    used = t.user + t.system + (t.children_user + t.children_system if kind == "servers" else 0)
                    self.cpu[proc.pid] = (kind, used - self.base.get(proc.pid, 0.0))
                    self.waits[proc.pid] = (kind, run_delay(proc.pid) - self.base_wait.get(proc.pid, 0.0))
        if total > self.peak:
            self.peak, self.peak_procs, self.peak_by_kind = total, len(procs), by_kind

    def start_counting(self) -> None:
        with self.lock:
            for proc in self.system.tree():
                with contextlib.suppress(psutil.Error):
                    t = proc.cpu_times()
                    self.base[proc.pid] = t.user + t.system
                    self.base_wait[proc.pid] = run_delay(proc.pid)
            self.counting = True

    def freeze(self) -> None:
        self.sample()
        with self.lock:
            self.counting = False

    def cpu_by_kind(self, waits: bool = False) -> dict[str, float]:
        kinds: dict[str, float] = {}
        with self.lock:
            for kind, used in (self.waits if waits else self.cpu).values():
                kinds[kind] = kinds.get(kind, 0.0) + used
        return kinds

    def run(self) -> None:
        while not self.halt.is_set():
            self.sample()
            self.halt.wait(self.interval)


def settle(limit: float, busy_below: float = 25.0) -> float:
    """Wait (at most ``limit`` s) until the whole machine's CPU is mostly idle for 2 s; return that busy %."""
    deadline = time.monotonic() + limit
    busy = psutil.cpu_percent(interval=2)
    while busy >= busy_below and time.monotonic() < deadline:
        busy = psutil.cpu_percent(interval=2)
    return busy


def run_system(system: System, args: argparse.Namespace) -> dict:
    busy = settle(args.settle)
    print(f"\n== {system.label}: starting (workdir {system.workdir}; machine {busy:.0f}% busy)", flush=True)
    load_before = os.getloadavg()
    system.start(args.start_timeout)
    sampler = Sampler(system)
    sampler.start()
    report: dict = {"system": system.label, "users": args.users, "rounds": args.rounds, "busy_before_pct": busy}
    try:
        if not args.no_warmup:
            warm = User(system, "warmup", Burst(1, 2, args.timeout)).run(measured=False)
            report["warmup_error"] = warm.error
            print(f"   warm-up user: {'ok' if warm.error is None else warm.error}", flush=True)
        burst = Burst(args.users, args.rounds, args.timeout)
        users = [User(system, f"{args.prefix}{i:03d}", burst) for i in range(args.users)]
        threads = [threading.Thread(target=u.run, daemon=True, name=u.name) for u in users]
        for t in threads:
            t.start()
        time.sleep(0.5)  # every thread is parked at the gate
        sampler.peak = 0
        report["busy_at_burst_pct"] = psutil.cpu_percent(interval=None)
        print(f"   burst: {args.users} users at once", flush=True)
        t0 = time.monotonic()
        burst.deadline = t0 + args.timeout
        sampler.start_counting()
        client_cpu = sum(os.times()[:2])
        machine_cpu = machine_busy()
        burst.go.set()
        burst.first_done.wait(burst.deadline + 5)
        sampler.freeze()
        report["first_results_wall_s"] = time.monotonic() - t0
        report["cpu_s"] = sampler.cpu_by_kind() | {"benchmark client": sum(os.times()[:2]) - client_cpu}
        report["cpu_wait_s"] = sampler.cpu_by_kind(waits=True)
        # CPU the whole machine spent meanwhile, less this run's: other people's work that skews the figures.
        report["foreign_cpu_s"] = max(0.0, machine_busy() - machine_cpu - sum(report["cpu_s"].values()))
        # Bounded: the per-user limit, then the warm rounds (serialised) and the stop, each bounded too.
        budget = args.timeout + burst.warm_budget() + 180
        for t in threads:
            t.join(max(0.0, t0 + budget - time.monotonic()))
        report["burst_wall_s"] = time.monotonic() - t0
        report["load_during"] = os.getloadavg()
        results = [u.result for u in users]
        for t, u in zip(threads, users, strict=True):
            if t.is_alive() and u.result.error is None:
                u.result.error = f"still running at the benchmark's time limit (stage {u.result.stage})"
    finally:
        sampler.halt.set()
        sampler.join(5)
        print(f"   stopping {system.label} ...", flush=True)
        system.stop()
    failures = [r for r in results if r.error]
    report["failures"] = len(failures) + (1 if report.get("warmup_error") else 0)
    report["failure_details"] = [f"{r.name} at {r.stage}: {r.error}" for r in failures][:20]
    report["peak_rss_mib"] = sampler.peak / 2**20
    report["peak_rss_mib_by_kind"] = {k: v / 2**20 for k, v in sorted(sampler.peak_by_kind.items())}
    report["peak_processes"] = sampler.peak_procs
    report["load_before"] = load_before
    values: dict[str, list[float]] = {key: [] for key, _, _ in METRICS}
    for r in results:
        for key, value in r.times.items():
            values[key].append(value)
        values["warm_rtt"] += r.warm
        values["warm_rtt_direct"] += r.warm_direct
    report["metrics"] = {
        key: {"n": len(v), "p50": percentile(v, 50), "p95": percentile(v, 95), "max": max(v, default=math.nan)}
        for key, v in values.items()
    }
    if failures or report.get("warmup_error"):
        print(f"   {report['failures']} failure(s); logs kept in {system.workdir}", flush=True)
        for line in report["failure_details"][:5]:
            print(f"     {line}", flush=True)
    return report


# ---- report --------------------------------------------------------------------------------------------------


def fmt(value: float, unit: str) -> str:
    if math.isnan(value):
        return "-"
    return f"{value * 1000:.1f}" if unit == "ms" else f"{value:.2f}"


def print_reports(reports: dict[str, dict], args: argparse.Namespace) -> list[str]:
    names = [n for n in ("AtlasLab", "stock") if n in reports]
    both = len(names) == 2

    def ratio(a: float, s: float) -> str:
        return "-" if not s or math.isnan(a) or math.isnan(s) else f"{a / s:.2f}x"

    header = f"{'metric':<26}" + "".join(f"{n + ' p50':>14}{n + ' p95':>14}" for n in names)
    header += f"{'ratio p50':>11}{'ratio p95':>11}" if both else ""
    print(f"\nspawn_burst: {args.users} user(s) at once, {args.rounds} warm rounds each (percentiles over the users")
    print("who reached each step; warm RTT over all their rounds)")
    print(header)
    print("-" * len(header))
    for key, label, unit in METRICS:
        row = f"{label + ' (' + unit + ')':<26}"
        for n in names:
            m = reports[n]["metrics"][key]
            row += f"{fmt(m['p50'], unit):>14}{fmt(m['p95'], unit):>14}"
        if both:
            a, s = reports["AtlasLab"]["metrics"][key], reports["stock"]["metrics"][key]
            row += f"{ratio(a['p50'], s['p50']):>11}{ratio(a['p95'], s['p95']):>11}"
        print(row)
    width = 28
    rows = [
        ("failures", lambda r: f"{r['failures']}", None),
        ("peak RSS (MiB)", lambda r: f"{r['peak_rss_mib']:.0f}", "peak_rss_mib"),
        ("all first results (s)", lambda r: f"{r.get('first_results_wall_s', math.nan):.1f}", "first_results_wall_s"),
    ]
    kinds = sorted({k for n in names for k in reports[n].get("cpu_s", {})})
    for kind in kinds:
        rows.append((f"CPU s, {kind}", lambda r, k=kind: f"{r.get('cpu_s', {}).get(k, 0.0):.1f}", None))
    rows.append(("CPU s, not this run", lambda r: f"{r.get('foreign_cpu_s', math.nan):.1f}", None))
    for kind in ("hub", "proxy"):
        rows.append((f"CPU wait s, {kind}", lambda r, k=kind: f"{r.get('cpu_wait_s', {}).get(k, 0.0):.2f}", None))
    for label, show, key in rows:
        row = f"{label:<26}" + "".join(f"{show(reports[n]):>{width}}" for n in names)
        if both and key:
            row += f"{ratio(reports['AtlasLab'].get(key, math.nan), reports['stock'].get(key, math.nan)):>11}"
        print(row)
    kinds = sorted({k for n in names for k in reports[n].get("peak_rss_mib_by_kind", {})})
    for kind in kinds:
        row = f"{'peak RSS MiB, ' + kind:<26}"
        row += "".join(f"{reports[n].get('peak_rss_mib_by_kind', {}).get(kind, 0.0):>{width}.0f}" for n in names)
        print(row)
    for n in names:
        r = reports[n]
        print(
            f"{n}: machine {r['busy_before_pct']:.0f}% busy before the start; load average "
            f"{r['load_before'][0]:.2f} before, {r['load_during'][0]:.2f} at the end"
        )
    verdicts = []
    if both:
        print("\ntargets:")
        for key, q, limit, label in TARGETS:
            a = reports["AtlasLab"]["metrics"][key][f"p{q}"]
            s = reports["stock"]["metrics"][key][f"p{q}"]
            value = a / s if s and not math.isnan(s) else math.nan
            verdicts.append(f"{label}: {value:.2f}x {'met' if value <= limit else 'NOT met'}")
            print(f"  {verdicts[-1]}")
        zero = reports["AtlasLab"]["failures"] == 0
        verdicts.append(f"zero AtlasLab failures: {'met' if zero else 'NOT met'}")
        print(f"  {verdicts[-1]}")
        if reports["stock"]["failures"]:
            print(
                f"  note: {reports['stock']['failures']} stock user(s) failed; stock percentiles cover only those who"
                " reached each step (the faster ones), so the ratios above understate AtlasLab's lead"
            )
    return verdicts


def machine() -> dict:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for module in ("jupyterhub", "jupyter_server", "jupyterlab", "tornado", "ipykernel", "atlaslab"):
        with contextlib.suppress(Exception):
            versions[module] = __import__(module).__version__
    with contextlib.suppress(Exception):
        versions["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    with contextlib.suppress(Exception):
        chp = json.loads((ROOT / "node_modules" / "configurable-http-proxy" / "package.json").read_text())
        versions["configurable-http-proxy"] = chp["version"]
    with contextlib.suppress(Exception):
        versions["git"] = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True
        ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=30, help="users starting at once (default 30)")
    parser.add_argument("--rounds", type=int, default=20, help="warm round-trips per user and path (default 20)")
    parser.add_argument("--only", choices=["atlaslab", "stock"], help="run one system only")
    parser.add_argument("--timeout", type=float, default=300, help="per-user limit from the burst's start (s)")
    parser.add_argument("--start-timeout", type=float, default=120, help="limit for a system to start (s)")
    parser.add_argument("--workdir", type=Path, help="where to put state and logs (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--no-warmup", action="store_true", help="skip the uncounted warm-up user")
    parser.add_argument("--prefix", default="burst", help="username prefix")
    parser.add_argument(
        "--settle", type=float, default=60, help="before each system, wait up to this long for an idle CPU (s)"
    )
    parser.add_argument(
        "--stock-http-timeout",
        type=float,
        help="give stock JupyterHub this Spawner.http_timeout instead of its default (30 s), so that its slowest"
        " users finish instead of failing",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.users < 1:
        parser.error("--users must be at least 1")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="spawn-burst-"))
    workdir.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(12)
    kinds = {"atlaslab": AtlasLab, "stock": Stock}
    chosen = [args.only] if args.only else ["atlaslab", "stock"]
    info = machine()
    print(
        f"spawn_burst on {info['cores']} cores ({info['cpu']}), {info['memory_gib']} GiB; "
        f"load {os.getloadavg()[0]:.2f}; {info['versions']}"
    )
    reports: dict[str, dict] = {}
    try:
        for kind in chosen:
            system = kinds[kind](workdir / kind, password)
            if kind == "stock" and args.stock_http_timeout:
                system.http_timeout = args.stock_http_timeout
            reports[system.label] = run_system(system, args)
    except SetupError as e:
        print(f"setup error: {e}", file=sys.stderr)
        return 2
    verdicts = print_reports(reports, args)
    # Stock JupyterHub failing under the burst is a finding about the baseline, not an error of this run.
    failures = sum(r["failures"] for name, r in reports.items() if name != "stock" or len(reports) == 1)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "args": vars(args) | {"workdir": str(workdir), "json": str(args.json)},
                    "reports": reports,
                    "targets": verdicts,
                },
                indent=2,
                default=str,
            )
        )
    if failures == 0 and not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"work directory kept: {workdir}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
