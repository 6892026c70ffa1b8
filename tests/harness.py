"""Start a real AtlasLab workbench (proxy + hub via `atlaslab up`) on 127.0.0.1 and drive it like a user.

Nothing here is mocked: the hub, configurable-http-proxy, the single-user servers and their kernels
are the real programs; browsers are replaced by HTTP clients that fill in the real forms.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websocket
import yaml

ROOT = Path(__file__).resolve().parent.parent
ATLASLAB = [sys.executable, "-m", "atlaslab.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_range(size: int = 20) -> int:
    """The first of ``size`` consecutive free ports (for the site's own services)."""
    for _ in range(100):
        base = free_port()
        if base + size < 65000 and all(_free(base + i) for i in range(size)):
            return base
    raise RuntimeError("no free port range")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def write_site(directory: Path, overrides: dict[str, Any] | None = None) -> Path:
    """A site config in ``directory`` with free ports and a private state dir; ``overrides`` merge on top."""
    site: dict[str, Any] = {
        "site": {
            "bind": f"127.0.0.1:{free_port()}",
            "hub_port": free_port(),
            "proxy_api_port": free_port(),
            "service_ports": free_port_range(),
            "state_dir": str(_state_root() / uuid.uuid4().hex[:12] / "state"),
            "admins": ["admin"],
        },
        "services": {"idle_culler": True, "metrics": True},
    }
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(site.get(key), dict):
            site[key] = {**site[key], **value}
        else:
            site[key] = value
    directory.mkdir(parents=True, exist_ok=True)
    _make_traversable(directory)
    path = directory / "atlaslab.yaml"
    path.write_text(yaml.safe_dump(site, sort_keys=False))
    return path


STATE_ROOT = Path("/var/tmp/atlaslab-tests")


def _state_root() -> Path:
    """Where test sites keep their state: like /var/lib, other accounts may pass through but not list.

    Not under pytest's temp root: pytest makes that 0700 again whenever another session starts, and a
    course's grader account must reach its course directory inside the state dir.
    """
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    STATE_ROOT.chmod(0o711)
    return STATE_ROOT


def _make_traversable(directory: Path) -> None:
    """Let other accounts pass through (not list) the test dir's parents, as they can /var/lib on a real site.

    pytest's temp root is 0700; a course's grader account must reach its course directory in the state dir.
    """
    for parent in [directory, *directory.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o011)


@dataclass
class Workbench:
    config: Path
    proc: subprocess.Popen | None = None
    output: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        data = yaml.safe_load(self.config.read_text())
        self.site = data["site"]
        host, port = self.site["bind"].rsplit(":", 1)
        self.url = f"http://{host}:{port}"
        self.state = self.config.parent / self.site.get("state_dir", "state")

    @property
    def api(self) -> str:
        return f"{self.url}/hub/api"

    def secret(self, name: str) -> str:
        return (self.state / "secrets" / name).read_text().strip()

    def admin_api(self) -> httpx.Client:
        """The CLI service's identity: what `atlaslab status` and `users import` use."""
        return httpx.Client(base_url=self.api, headers={"Authorization": f"token {self.secret('cli-token')}"})

    def start(self, *extra: str, timeout: float = 60) -> Workbench:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._log_mark = len(self.log_text())
        log = open(self.config.parent / "up.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*ATLASLAB, "up", "--config", str(self.config), *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"atlaslab up exited {self.proc.returncode}:\n{self.log()}")
            try:
                ready = "AtlasLab is running" in self.log_text()[self._log_mark :]
                if ready and httpx.get(self.api + "/", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"workbench not ready after {timeout}s:\n{self.log()}")

    def log_text(self) -> str:
        path = self.config.parent / "up.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log(self) -> str:
        hub = self.state / "logs" / "hub.log"
        text = self.log_text()
        if hub.exists():
            text += "\n--- hub.log (tail) ---\n" + "\n".join(hub.read_text(errors="replace").splitlines()[-40:])
        return text

    def restart_hub(self, timeout: float = 60) -> None:
        """SIGHUP to `atlaslab up`: the hub restarts, the proxy and users' servers keep running."""
        assert self.proc is not None
        marker = len(self.log_text())
        os.kill(self.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while "Hub restarted." not in self.log_text()[marker:]:
            if time.monotonic() > deadline:
                raise TimeoutError(self.log())
            time.sleep(0.1)

    def stop(self, timeout: float = 60) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        os.kill(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


class Browser:
    """A cookie-keeping HTTP client that uses the hub's pages the way a person's browser does."""

    def __init__(self, wb: Workbench):
        self.wb = wb
        self.http = httpx.Client(base_url=wb.url, follow_redirects=True, timeout=60)

    def close(self) -> None:
        self.http.close()

    def _xsrf(self, page: str) -> str:
        m = re.search(r'name="_xsrf"\s+value="([^"]+)"', page)
        if m:
            return m.group(1)
        return self.hub_xsrf()

    def hub_xsrf(self) -> str:
        """The hub's XSRF cookie (users' servers set their own, under /user/NAME/)."""
        return self.http.cookies.get("_xsrf", "", path="/hub/") or ""

    def signup(self, username: str, password: str) -> httpx.Response:
        page = self.http.get("/hub/signup")
        return self.http.post(
            "/hub/signup",
            data={
                "username": username,
                "signup_password": password,
                "signup_password_confirmation": password,
                "_xsrf": self._xsrf(page.text),
            },
        )

    def login(self, username: str, password: str) -> httpx.Response:
        page = self.http.get("/hub/login")
        return self.http.post(
            "/hub/login?next=", data={"username": username, "password": password, "_xsrf": self._xsrf(page.text)}
        )

    def logged_in_as(self) -> str | None:
        r = self.api("GET", "/user")
        return r.json()["name"] if r.status_code == 200 else None

    def api(self, method: str, path: str, **kwargs) -> httpx.Response:
        """Call the hub API with the session cookie, as the hub's own pages do (XSRF header included)."""
        headers = {"X-XSRFToken": self.hub_xsrf()}
        return self.http.request(method, f"/hub/api{path}", headers=headers, **kwargs)

    def spawn_form(self) -> str:
        return self.http.get("/hub/spawn").text

    def spawn(self, environment: str | None = None, timeout: float = 60) -> httpx.Response:
        page = self.http.get("/hub/spawn")
        data = {"_xsrf": self._xsrf(page.text)}
        if environment:
            data["environment"] = environment
        r = self.http.post("/hub/spawn", data=data)
        return r

    def token(self, note: str = "test") -> str:
        name = self.logged_in_as()
        r = self.api("POST", f"/users/{name}/tokens", json={"note": note, "expires_in": 3600})
        r.raise_for_status()
        return r.json()["token"]


def logged_in(wb: Workbench, name: str, password: str) -> Browser:
    """A Browser logged in as ``name`` (checked)."""
    b = Browser(wb)
    b.login(name, password)
    assert b.logged_in_as() == name, f"{name} could not log in"
    return b


def wait_service(wb: Workbench, name: str, path: str = "", timeout: float = 120) -> None:
    """Wait until the hub's proxy reaches service ``name``, without cookies: each retry of a browser's OAuth
    dance leaves a state cookie behind, and enough of them overflow the proxy's header limit (431)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=10, follow_redirects=False) as http:
        while time.monotonic() < deadline:
            try:
                if http.get(f"{wb.url}/services/{name}/{path}").status_code not in (404, 502, 503):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
    raise TimeoutError(f"service {name} not reachable through the proxy\n{wb.log()}")


def wait_server(wb: Workbench, user: str, timeout: float = 60) -> dict:
    with wb.admin_api() as api:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = api.get(f"/users/{user}").json()
            server = (model.get("servers") or {}).get("")
            if server and server.get("ready"):
                return server
            if not model.get("pending") and not server:
                raise RuntimeError(f"{user}'s server is not starting: {model}\n{wb.log()}")
            time.sleep(0.1)
    raise TimeoutError(f"{user}'s server not ready\n{wb.log()}")


def run_code(wb: Workbench, user: str, token: str, code: str, timeout: float = 60) -> str:
    """Start a kernel through the proxy (REST), execute ``code`` over its websocket, return stdout."""
    base = f"{wb.url}/user/{user}/api"
    headers = {"Authorization": f"token {token}"}
    kernel = httpx.post(f"{base}/kernels", headers=headers, json={"name": "python3"}, timeout=timeout)
    kernel.raise_for_status()
    kid = kernel.json()["id"]
    try:
        ws = websocket.create_connection(
            f"{base.replace('http', 'ws', 1)}/kernels/{kid}/channels",
            header=[f"Authorization: token {token}"],
            timeout=timeout,
        )
        try:
            return execute(ws, code, timeout)
        finally:
            ws.close()
    finally:
        httpx.delete(f"{base}/kernels/{kid}", headers=headers, timeout=timeout)


class KernelDied(RuntimeError):
    """The kernel died while running the cell (killed by a limit, or crashed)."""


def execute(ws: websocket.WebSocket, code: str, timeout: float = 60) -> str:
    msg_id = uuid.uuid4().hex
    ws.send(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "username": "test",
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
    ws.settimeout(timeout)
    while time.monotonic() < deadline:
        msg = json.loads(ws.recv())
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] in ("restarting", "dead"):
            raise KernelDied(msg["content"]["execution_state"])
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        if kind == "stream":
            out.append(msg["content"]["text"])
        elif kind == "error":
            out.append("ERROR: " + msg["content"]["ename"] + ": " + msg["content"]["evalue"])
        elif kind == "status" and msg["content"]["execution_state"] == "idle":
            return "".join(out)
    raise TimeoutError(f"no reply to {code!r}")
