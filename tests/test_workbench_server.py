"""The workbench panel's server extension in a real Jupyter server: each source answers, or says why not."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
from harness import free_port

TOKEN = "workbench-test-token"


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
    port = free_port()
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
    env.pop("ATLASLAB_CREDITS_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", f"--port={port}", "--ip=127.0.0.1", "--no-browser",
         f"--IdentityProvider.token={TOKEN}", "--ServerApp.jpserver_extensions=atlaslab.workbench=True",
         f"--ServerApp.root_dir={root}", "--allow-root"],
        env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/atlaslab/api/workbench"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=2)
            break
        except httpx.HTTPError:
            time.sleep(0.2)
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
