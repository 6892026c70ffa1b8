"""`atlaslab up`: start the proxy and the hub on this machine, keep them running, stop them cleanly.

The proxy runs apart from the hub (JupyterHub's ``should_start=False``), so the hub can restart (SIGHUP
to `atlaslab up`, an upgrade, a crash) while users' servers keep running and stay reachable.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from atlaslab.config import LoadedConfig
from atlaslab.core.accounts import isolation_mode
from atlaslab.core.state import StateDir

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # atlaslab/
HUB_CONFIG = PACKAGE_DIR / "hub" / "jupyterhub_config.py"
REPO_NODE_BIN = PACKAGE_DIR.parent / "node_modules" / ".bin"
CHP_VERSION = "5"
HUB_RUNNING = "JupyterHub is now running"


class LaunchError(RuntimeError):
    """Something the operator must fix before the workbench can start; the message says what."""


def find_proxy(state: StateDir) -> Path | None:
    for candidate in (
        shutil.which("configurable-http-proxy"),
        REPO_NODE_BIN / "configurable-http-proxy",
        Path(sys.prefix).parent / "bin" / "configurable-http-proxy",  # scripts/install.sh's layout
        state.root / "node" / "node_modules" / ".bin" / "configurable-http-proxy",
    ):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    return None


def install_proxy(state: StateDir, echo=print) -> Path:
    """Install configurable-http-proxy with npm into the state dir (done once, at first start)."""
    npm = shutil.which("npm")
    if npm is None:
        raise LaunchError("configurable-http-proxy is missing and npm is not installed; install Node.js and npm")
    prefix = state.root / "node"
    prefix.mkdir(parents=True, exist_ok=True)
    echo(f"Installing configurable-http-proxy@{CHP_VERSION} into {prefix} ...")
    result = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix), f"configurable-http-proxy@{CHP_VERSION}"],
        capture_output=True,
        text=True,
    )
    found = prefix / "node_modules" / ".bin" / "configurable-http-proxy"
    if result.returncode != 0 or not found.exists():
        raise LaunchError(f"npm could not install configurable-http-proxy: {result.stderr.strip()[-400:]}")
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@dataclass
class Workbench:
    loaded: LoadedConfig
    echo: object = print
    keep_servers: bool = False

    def __post_init__(self) -> None:
        self.state = StateDir(self.loaded.state_dir)
        self.site = self.loaded.site.site
        self.proxy: subprocess.Popen | None = None
        self.hub: subprocess.Popen | None = None
        self._stop = False
        self._restart = False

    @property
    def hub_api(self) -> str:
        return f"http://127.0.0.1:{self.site.hub_port}{self.site.base_url}hub/api"

    def say(self, text: str) -> None:
        self.echo(text)  # type: ignore[operator]

    # ---- proxy ------------------------------------------------------------------------------------------

    def start_proxy(self) -> None:
        pid_file = self.state.run_dir / "proxy.pid"
        running = read_pid(pid_file)
        if running:
            self.say(f"Proxy already running (pid {running}); keeping it and its routes.")
            return
        if not _port_free(self.site.bind_host, self.site.bind_port):
            raise LaunchError(
                f"port {self.site.bind_port} on {self.site.bind_host} is in use; stop what uses it or change site.bind"
            )
        chp = find_proxy(self.state) or install_proxy(self.state, self.say)
        log = open(self.state.log_dir / "proxy.log", "ab")  # noqa: SIM115 (kept open for the child's lifetime)
        env = dict(os.environ, CONFIGPROXY_AUTH_TOKEN=self.state.secret("proxy-token"))
        hub = f"http://127.0.0.1:{self.site.hub_port}"
        self.proxy = subprocess.Popen(
            [
                str(chp),
                "--ip",
                self.site.bind_host,
                "--port",
                str(self.site.bind_port),
                "--api-ip",
                "127.0.0.1",
                "--api-port",
                str(self.site.proxy_api_port),
                "--default-target",
                hub,
                "--error-target",
                f"{hub}{self.site.base_url}hub/error",
                "--log-level",
                "warn",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        pid_file.write_text(str(self.proxy.pid))

    # ---- hub --------------------------------------------------------------------------------------------

    def start_hub(self) -> None:
        env = dict(os.environ)
        env["ATLASLAB_CONFIG"] = str(self.loaded.source.absolute()) if self.loaded.source else ""
        log = open(self.state.log_dir / "hub.log", "ab")  # noqa: SIM115
        self._hub_log_start = log.tell()
        self.hub = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(HUB_CONFIG)],
            cwd=self.state.root,
            # Whatever the hub writes in the state dir (database, journals, pid files) is private to it.
            preexec_fn=lambda: os.umask(0o077),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_hub_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.hub is not None and self.hub.poll() is not None:
                raise LaunchError(
                    f"the hub exited (code {self.hub.returncode}); see {self.state.log_dir / 'hub.log'}:\n"
                    + tail(self.state.log_dir / "hub.log")
                )
            # The API answers before the hub has started its services and restored the proxy's routes;
            # JupyterHub's own "now running" line marks the end of its start-up.
            if HUB_RUNNING in self._hub_log_since_start():
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(self.hub_api + "/", timeout=2).status_code == 200:
                        return
            time.sleep(0.1)
        raise LaunchError(f"the hub did not answer within {timeout:.0f} s; see {self.state.log_dir / 'hub.log'}")

    def _hub_log_since_start(self) -> str:
        try:
            with open(self.state.log_dir / "hub.log", "rb") as f:
                f.seek(getattr(self, "_hub_log_start", 0))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop_servers(self) -> None:
        headers = {"Authorization": f"token {self.state.secret('cli-token')}"}
        with contextlib.suppress(httpx.HTTPError):
            users = httpx.get(f"{self.hub_api}/users", headers=headers, params={"state": "active"}, timeout=10)
            for user in users.json() if users.status_code == 200 else []:
                for name in user.get("servers", {}):
                    url = (
                        f"{self.hub_api}/users/{user['name']}/servers/{name}"
                        if name
                        else (f"{self.hub_api}/users/{user['name']}/server")
                    )
                    httpx.delete(url, headers=headers, timeout=30)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                active = httpx.get(f"{self.hub_api}/users", headers=headers, params={"state": "active"}, timeout=10)
                if active.status_code != 200 or not active.json():
                    break
                time.sleep(0.2)

    @staticmethod
    def _terminate(proc: subprocess.Popen | None, timeout: float = 15) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        if not self.keep_servers:
            self.say("Stopping users' servers ...")
            self.stop_servers()
        self.say("Stopping the hub ...")
        self._terminate(self.hub)
        if self.proxy is not None or read_pid(self.state.run_dir / "proxy.pid"):
            self.say("Stopping the proxy ...")
            pid = read_pid(self.state.run_dir / "proxy.pid")
            if self.proxy is not None:
                self._terminate(self.proxy)
            elif pid:
                os.kill(pid, signal.SIGTERM)
            (self.state.run_dir / "proxy.pid").unlink(missing_ok=True)

    # ---- the whole thing --------------------------------------------------------------------------------

    def run(self) -> int:
        self.state.ensure()
        hub_pid = read_pid(self.state.run_dir / "jupyterhub.pid")
        if hub_pid:
            raise LaunchError(
                f"AtlasLab is already running with this state dir (hub pid {hub_pid}); "
                "use `atlaslab status`, or stop the other `atlaslab up` first"
            )
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_restart)
        self.start_proxy()
        try:
            self.start_hub()
            self.wait_hub_ready()
            self.say(self.welcome())
            crashes = 0
            while not self._stop:
                time.sleep(0.2)
                if self._restart:
                    self._restart = False
                    self.say("Restarting the hub (servers and routes are kept) ...")
                    self._terminate(self.hub)
                    self.start_hub()
                    self.wait_hub_ready()
                    self.say("Hub restarted.")
                elif self.hub is not None and self.hub.poll() is not None:
                    crashes += 1
                    if crashes > 3:
                        raise LaunchError(f"the hub keeps exiting; see {self.state.log_dir / 'hub.log'}")
                    self.say(f"The hub exited (code {self.hub.returncode}); restarting it.")
                    self.start_hub()
                    self.wait_hub_ready()
        finally:
            self.stop()
        self.say("AtlasLab stopped.")
        return 0

    def _on_stop(self, signum, frame) -> None:
        self._stop = True

    def _on_restart(self, signum, frame) -> None:
        self._restart = True

    def welcome(self) -> str:
        lines = [f"AtlasLab is running: {self.site.public_url}/"]
        provider = self.loaded.site.login[0]
        admins = self.site.admins
        if provider.provider == "native" and admins:
            lines.append(
                f"First login: user '{admins[0]}' with the password in "
                f"{self.state.secret_path('initial-admin-password')} (change it at /hub/change-password)."
            )
            lines.append("Students sign up at /hub/signup; approve newcomers at /hub/authorize.")
        elif provider.provider == "native":
            lines.append("No admin is listed under site.admins: add one to approve sign-ups.")
        elif provider.provider == "shared-password":
            lines.append("Log in with any username and the workshop's shared password.")
        else:
            lines.append(f"Log in with {provider.title or provider.provider}.")
        if isolation_mode(self.loaded.site.spawner.isolation) == "none":
            lines.append(
                "WARNING: development mode - every user's server runs as this account, so users are NOT "
                "isolated from each other. Run `atlaslab up` as root on a shared machine."
            )
        lines.append(f"Logs: {self.state.log_dir}. Press Ctrl-C to stop; send SIGHUP to restart only the hub.")
        return "\n".join(lines)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
