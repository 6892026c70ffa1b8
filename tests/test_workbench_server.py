"""The workbench panel's server extension in a real Jupyter server: each source answers, or says why not.

The courses' due dates come from the real exchange (its tornado app and SQL store, in this process), which
checks the server's token with a stand-in for the hub's REST API (the two calls the exchange and the panel
make of it), so no hub has to run here.
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from harness import free_port
from jupyterhub.services.auth import HubAuth
from tornado import web
from tornado.httpserver import HTTPServer

from atlaslab.grading.exchange.api import Context, make_app
from atlaslab.grading.exchange.archive import pack_files, scan
from atlaslab.grading.exchange.store import DirectoryBlobStore, ExchangeStore

TOKEN = "workbench-test-token"
SERVER_TOKEN = "the-servers-own-hub-token"
STUDENT = "wb-student"
GROUPS = ["course:algebra:students", "course:biology:instructors", "course:chem:students", "tenant:school"]


def start_jupyter(root: Path, env: dict) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", f"--port={port}", "--ip=127.0.0.1", "--no-browser",
         f"--IdentityProvider.token={TOKEN}", "--ServerApp.jpserver_extensions=atlaslab.workbench=True",
         f"--ServerApp.root_dir={root}", "--allow-root"],
        env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=2)
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    return proc, port


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("workbench")
    # A tracking store with one run in it, as the team's MLflow would have.
    store = f"sqlite:///{root / 'mlflow.db'}"
    subprocess.run(
        [sys.executable, "-c", "import mlflow, sys\nmlflow.set_tracking_uri(sys.argv[1])\n"
         "with mlflow.start_run(run_name='baseline'):\n    mlflow.log_metric('rmse', 0.42)", store],
        check=True, capture_output=True, cwd=root, timeout=120,
    )  # fmt: skip
    env = {
        **os.environ,
        "ATLASLAB_ENVIRONMENT": "cpu-two",
        "CPU_LIMIT": "2",
        "MEM_LIMIT": str(2 * 1024**3),
        "ATLASLAB_GPUS": "GPU-00000000-test",
        "MLFLOW_TRACKING_URI": store,
        "JUPYTER_CONFIG_DIR": str(root / ".jupyter"),
        "JUPYTER_RUNTIME_DIR": str(root / ".runtime"),
    }
    for name in ("ATLASLAB_CREDITS_URL", "ATLASLAB_EXCHANGE_URL", "JUPYTERHUB_API_URL", "JUPYTERHUB_API_TOKEN"):
        env.pop(name, None)
    proc, port = start_jupyter(root, env)
    url = f"http://127.0.0.1:{port}/atlaslab/api/workbench"
    yield url, root
    proc.terminate()
    proc.wait(timeout=30)


def call(url: str, method: str = "GET", **kw) -> httpx.Response:
    return httpx.request(method, url, headers={"Authorization": f"token {TOKEN}"}, timeout=120, **kw)


def test_environment_with_limits_and_gpus(server) -> None:
    url, _ = server
    data = call(f"{url}/environment").json()
    assert data["environment"] == "cpu-two" and data["cpu_limit"] == 2.0 and data["mem_limit"] == 2 * 1024**3
    # No NVIDIA driver here: the assigned device is listed with the reason, not dropped.
    [gpu] = data["gpus"]
    assert gpu["uuid"] == "GPU-00000000-test" and ("error" in gpu or "utilization" in gpu)


def test_sources_that_cannot_answer_say_why(server) -> None:
    url, _ = server
    r = call(f"{url}/credits")
    assert r.status_code == 503 and "no credits service configured" in r.json()["error"]


def test_latest_runs_from_the_tracking_server(server) -> None:
    url, _ = server
    [run] = call(f"{url}/runs").json()["runs"]
    assert run["name"] == "baseline" and run["metrics"] == {"rmse": 0.42} and run["run_id"] in run["link"]


def test_dask_start_and_stop(server) -> None:
    url, _ = server
    assert call(f"{url}/dask").json() == {"running": False}
    started = call(f"{url}/dask", "POST", json={"action": "start"}).json()
    assert started["running"] and started["workers"] == 2 and started["dashboard"].endswith("/status")
    assert call(f"{url}/dask", "POST", json={"action": "stop"}).json() == {"running": False}
    assert call(f"{url}/dask", "POST", json={"action": "explode"}).status_code == 400


def test_nothing_without_the_servers_token(server) -> None:
    url, _ = server
    for path in ("environment", "credits", "runs", "dask"):
        assert httpx.get(f"{url}/{path}", timeout=30).status_code == 403
    assert httpx.post(f"{url}/dask", json={"action": "start"}, timeout=30).status_code == 403


def test_hub_sources_without_a_hub_say_why(server) -> None:
    url, _ = server
    for path in ("idle", "courses"):
        r = call(f"{url}/{path}")
        assert r.status_code == 503 and "not started by a hub" in r.json()["error"]


# ---- courses and due dates, from the exchange -------------------------------------------------------------------


class FakeHubUser(web.RequestHandler):
    """GET /hub/api/user (the exchange identifying a token) and /hub/api/users/NAME (the panel reading its user)."""

    def get(self, name: str | None = None) -> None:
        if self.request.headers.get("Authorization") not in (f"token {SERVER_TOKEN}", "token exchange-service-token"):
            raise web.HTTPError(403)
        if name is None and self.request.headers["Authorization"] != f"token {SERVER_TOKEN}":
            raise web.HTTPError(404)
        self.finish(
            {
                "kind": "user",
                "name": STUDENT,
                "admin": False,
                "groups": GROUPS,
                "scopes": ["access:services!service=exchange", f"read:users!user={STUDENT}"],
                "last_activity": datetime.now(UTC).isoformat(),
                "servers": {},
            }
        )


class Services:
    """A stand-in hub API and the real exchange, served from one thread with its own event loop."""

    def __init__(self, root: Path):
        self.hub_port, self.exchange_port = free_port(), free_port()
        self.store = ExchangeStore(f"sqlite:///{root / 'exchange.sqlite'}", DirectoryBlobStore(root / "blobs"))
        self.store.create_schema()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(30)

    @property
    def hub_api(self) -> str:
        return f"http://127.0.0.1:{self.hub_port}/hub/api"

    @property
    def exchange_url(self) -> str:
        return f"http://127.0.0.1:{self.exchange_port}/services/exchange/"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        hub = web.Application([(r"/hub/api/user", FakeHubUser), (r"/hub/api/users/([^/]+)", FakeHubUser)])
        auth = HubAuth(
            api_token="exchange-service-token",
            api_url=self.hub_api,
            cache_max_age=0,
            access_scopes={"access:services!service=exchange"},
        )
        exchange = make_app(Context(store=self.store, hub_auth=auth), "/services/exchange/")
        self.servers = [HTTPServer(hub), HTTPServer(exchange)]
        self.servers[0].listen(self.hub_port, "127.0.0.1")
        self.servers[1].listen(self.exchange_port, "127.0.0.1")
        self.ready.set()
        self.loop.run_forever()

    def stop_exchange(self) -> None:
        """The exchange goes down: its port refuses connections from now on."""
        done = threading.Event()

        def stop() -> None:
            self.servers[1].stop()
            done.set()

        self.loop.call_soon_threadsafe(stop)
        assert done.wait(10)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(lambda: [s.stop() for s in self.servers])
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def release(store: ExchangeStore, course: str, name: str, due: datetime | None) -> None:
    data = pack_files({f"{name}.ipynb": b"{}"})
    files = [f.to_dict() for f in scan(io.BytesIO(data))]
    store.release(course, name, sha256=store.blobs.put(data), size=len(data), files=files, by="teach", force=False,
                  due=due)  # fmt: skip


@pytest.fixture(scope="module")
def hub_server(tmp_path_factory):
    """A Jupyter server started as a hub starts it (its hub API, token, user and exchange in its environment)."""
    root = tmp_path_factory.mktemp("workbench-hub")
    services = Services(root)
    now = datetime.now(UTC)
    day = timedelta(days=1)
    store = services.store
    # algebra (a student): one missed, one past but submitted, four ahead (three shown), one with no due date.
    for name, due in [("ps1", now - 2 * day), ("ps2", now - day), ("ps3", now + day), ("ps4", now + 3 * day),
                      ("ps5", now + 2 * day), ("ps6", now + 10 * day), ("ps7", None)]:  # fmt: skip
        release(store, "algebra", name, due)
    data = pack_files({"ps2.ipynb": b"{}"})
    store.submit("algebra", "ps2", STUDENT, sha256=store.blobs.put(data), size=len(data), files=[])
    # biology (an instructor): nothing is "missed" by staff, who do not submit.
    release(store, "biology", "lab1", now - day)
    release(store, "biology", "lab2", now + 5 * day)
    # A course the user is not in: never shown.
    release(store, "physics", "hw1", now + day)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(root / ".jupyter"),
        "JUPYTER_RUNTIME_DIR": str(root / ".runtime"),
        "JUPYTERHUB_API_URL": services.hub_api,
        "JUPYTERHUB_API_TOKEN": SERVER_TOKEN,
        "JUPYTERHUB_USER": STUDENT,
        "ATLASLAB_EXCHANGE_URL": services.exchange_url,
    }
    proc, port = start_jupyter(root, env)
    yield f"http://127.0.0.1:{port}/atlaslab/api/workbench", services, now
    proc.terminate()
    proc.wait(timeout=30)
    services.close()


def test_courses_with_their_next_due_dates(hub_server) -> None:
    url, _, now = hub_server
    r = call(f"{url}/courses")
    assert r.status_code == 200, r.text
    data = r.json()
    assert "error" not in data, data
    courses = {c["id"]: c for c in data["courses"]}
    assert list(courses) == ["algebra", "biology", "chem"]
    algebra = courses["algebra"]
    assert algebra["roles"] == ["students"]
    # Future ones only, soonest first, three of them; with the exchange's dates (UTC, to the microsecond).
    assert [d["name"] for d in algebra["due"]] == ["ps3", "ps5", "ps4"]
    assert datetime.fromisoformat(algebra["due"][0]["due"]) == now + timedelta(days=1)
    assert all(datetime.fromisoformat(d["due"]) > now for d in algebra["due"])
    # Past due and never submitted: flagged; past due and submitted: not.
    assert [(d["name"], d["submitted"]) for d in algebra["overdue"]] == [("ps1", False)]
    assert [d["name"] for d in courses["biology"]["due"]] == ["lab2"] and courses["biology"]["overdue"] == []
    assert courses["biology"]["roles"] == ["instructors"]
    assert courses["chem"]["due"] == [] and courses["chem"]["overdue"] == []


def test_an_exchange_that_is_down_shows_in_the_courses_only(hub_server) -> None:
    url, services, _ = hub_server
    services.stop_exchange()
    r = call(f"{url}/courses")
    assert r.status_code == 200, r.text
    data = r.json()
    # The courses are still listed (from the hub), with the reason the due dates are missing.
    assert [c["id"] for c in data["courses"]] == ["algebra", "biology", "chem"]
    assert all(c["due"] == [] for c in data["courses"])
    assert "the exchange did not answer" in data["error"]
    # The other sources are not affected.
    assert call(f"{url}/environment").status_code == 200
    assert call(f"{url}/idle").status_code == 200
