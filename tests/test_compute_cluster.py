"""``atlaslab.compute.cluster()``: the plan from injected facts (GPU paths on CPU), then a real cluster in a real
user's server through the hub: within the server's limits, its dashboard reachable only through that server,
its scheduler closed to other users."""

from __future__ import annotations

import contextlib
import json
import os

import httpx
import pytest
import websocket
from harness import Browser, Workbench, execute, run_code, unique, wait_server, write_site

from atlaslab.compute.dask_cluster import MIN_WORKER_MEMORY, plan

GiB = 1024**3
CPU_FACTS = {"cpu_count": 16, "total_memory": 64 * GiB, "nproc_limit": None, "dask_cuda": False}


def test_cpu_plan_stays_within_the_servers_limits() -> None:
    p = plan({"CPU_LIMIT": "2", "MEM_LIMIT": str(2 * GiB)}, **CPU_FACTS)
    assert (p.kind, p.n_workers, p.threads_per_worker) == ("cpu", 2, 1)
    assert p.n_workers * p.memory_limit <= 2 * GiB * 0.75
    # Little memory: fewer, wider workers, never below the minimum per worker.
    p = plan({"CPU_LIMIT": "8", "MEM_LIMIT": str(2 * GiB)}, **CPU_FACTS)
    assert p.n_workers == 3 and p.threads_per_worker == 3 and p.memory_limit >= MIN_WORKER_MEMORY
    # No limits set (outside the hub): the machine's.
    p = plan({}, **CPU_FACTS)
    assert p.n_workers == 16 and p.memory_limit * 16 <= 48 * GiB
    # A tight process limit: one process of threads.
    p = plan({"CPU_LIMIT": "4", "MEM_LIMIT": str(8 * GiB)}, **{**CPU_FACTS, "nproc_limit": 64})
    assert (p.processes, p.n_workers, p.threads_per_worker) == (False, 1, 4)


def test_gpu_plans_from_injected_devices() -> None:
    eight = ",".join(f"GPU-{i}" for i in range(8))
    facts = {**CPU_FACTS, "dask_cuda": True, "device_memory": 80 * GiB}
    p = plan({"CUDA_VISIBLE_DEVICES": eight, "CPU_LIMIT": "32", "MEM_LIMIT": str(256 * GiB)}, nvlink=True, **facts)
    assert (p.kind, p.n_workers, p.threads_per_worker, p.protocol) == ("cuda", 8, 4, "ucx")
    assert p.rmm_pool_size == int(80 * GiB * 0.8)
    # Without NVLink, or on MIG instances: TCP.
    assert plan({"CUDA_VISIBLE_DEVICES": eight}, nvlink=False, **facts).protocol == "tcp"
    mig = plan({"CUDA_VISIBLE_DEVICES": "MIG-aaaa,MIG-bbbb"}, nvlink=True, **facts)
    assert (mig.n_workers, mig.protocol) == (2, "tcp")
    assert plan({"CUDA_VISIBLE_DEVICES": "GPU-1"}, cudf=True, **facts).cudf_spill
    # CPU environments (no device, or "none") and a machine without dask-cuda get a CPU cluster.
    for env in ({"CUDA_VISIBLE_DEVICES": ""}, {"NVIDIA_VISIBLE_DEVICES": "none"}):
        assert plan(env, **facts).kind == "cpu"
    no_cuda = plan({"CUDA_VISIBLE_DEVICES": "GPU-1"}, **CPU_FACTS)
    assert no_cuda.kind == "cpu" and "dask-cuda is not installed" in no_cuda.reason


PASSWORD = "cluster-workshop-password"
A, B = unique("dska-"), unique("dskb-")
CODE = """
import json
from atlaslab.compute import cluster
c = cluster()
total = sum(c.submit(lambda x: x + 1, i).result() for i in range(10))
workers = list(c.scheduler_info()["workers"].values())
print(json.dumps({"total": total, "same": cluster() is c, "address": c.scheduler.address,
                  "link": c.dashboard_link, "threads": [w["nthreads"] for w in workers],
                  "memory": [w["memory_limit"] for w in workers]}))
"""


@contextlib.contextmanager
def kernel(wb: Workbench, user: str, token: str):
    base = f"{wb.url}/user/{user}/api"
    headers = {"Authorization": f"token {token}"}
    kid = httpx.post(f"{base}/kernels", headers=headers, json={"name": "python3"}, timeout=60).json()["id"]
    ws = websocket.create_connection(
        f"{base.replace('http', 'ws', 1)}/kernels/{kid}/channels", header=[f"Authorization: token {token}"], timeout=120
    )
    try:
        yield ws
    finally:
        ws.close()
        httpx.delete(f"{base}/kernels/{kid}", headers=headers, timeout=60)


@pytest.fixture(scope="module")
def wb(tmp_path_factory):
    os.environ["ATLASLAB_TEST_CLUSTER_PASSWORD"] = PASSWORD
    site = {
        "login": [{"provider": "shared-password", "password": {"env": "ATLASLAB_TEST_CLUSTER_PASSWORD"}}],
        "environments": {"cpu-two": {"cpu": 2, "memory": "2G", "default": True}},
    }
    wb = Workbench(write_site(tmp_path_factory.mktemp("cluster"), site)).start()
    yield wb
    wb.stop()


@pytest.mark.root
def test_a_cluster_in_a_users_server_is_theirs_alone(wb):
    a, b = Browser(wb), Browser(wb)
    a.login(A, PASSWORD)
    b.login(B, PASSWORD)
    for who, name in ((a, A), (b, B)):
        who.spawn()
        wait_server(wb, name, timeout=120)
    token_a, token_b = a.token(), b.token()
    # Users' servers carry the workbench panel's server side: it knows the server's limits.
    r = httpx.get(
        f"{wb.url}/user/{A}/atlaslab/api/workbench/environment", headers={"Authorization": f"token {token_a}"}
    )
    assert r.status_code == 200 and r.json()["cpu_limit"] == 2.0 and r.json()["gpus"] == [], r.text
    with kernel(wb, A, token_a) as ws:  # the cluster lives as long as A's kernel
        out = json.loads(execute(ws, CODE, timeout=120).strip().splitlines()[-1])
        check_cluster(wb, out, token_a, token_b)


def check_cluster(wb: Workbench, out: dict, token_a: str, token_b: str) -> None:
    assert out["total"] == 55 and out["same"]
    assert len(out["threads"]) == 2 and sum(out["memory"]) <= 2 * GiB
    assert out["address"].startswith("tls://127.0.0.1:")
    # The dashboard link goes through A's own server.
    assert out["link"].startswith(f"/user/{A}/proxy/") and out["link"].endswith("/status")
    r = httpx.get(wb.url + out["link"], headers={"Authorization": f"token {token_a}"}, timeout=60)
    assert r.status_code == 200 and "dask" in r.text.lower()
    r = httpx.get(wb.url + out["link"], headers={"Authorization": f"token {token_b}"}, timeout=60)
    assert r.status_code in (403, 404)
    r = httpx.get(wb.url + out["link"], timeout=60, follow_redirects=False)
    assert r.status_code in (302, 401, 403) and "dask" not in r.text.lower()
    # B, on the same machine, cannot use A's scheduler: it wants A's TLS certificate.
    attack = f"""
from distributed import Client
try:
    Client({out["address"]!r}, timeout=5).submit(lambda: 1).result(timeout=5)
    print("ATTACK WORKED")
except Exception as e:
    print("refused", type(e).__name__)
"""
    result = run_code(wb, B, token_b, attack, timeout=120)
    assert "refused" in result and "ATTACK WORKED" not in result, result


def test_gpu_benchmark_skips_cleanly_here_and_its_workload_runs_on_cpu() -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent.parent / "benchmarks" / "gpu_dask.py"
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    if "skipped: no GPU" not in r.stdout:
        pytest.skip("this machine has a GPU stack; run the benchmark itself")
    assert r.returncode == 0
    r = subprocess.run(
        [sys.executable, str(script), "--cpu-only", "--rows", "100000", "--matrix", "256"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0 and "CPU LocalCluster" in r.stdout, r.stdout + r.stderr
