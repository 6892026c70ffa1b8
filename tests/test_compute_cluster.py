"""``atlaslab.compute.cluster()``: the plan from injected facts (GPU paths on CPU), then a real cluster in a real
user's server through the hub: within the server's limits, its dashboard reachable only through that server,
its scheduler closed to other users."""

from __future__ import annotations

import contextlib
import json
import os
from urllib.parse import quote

import httpx
import pytest
import websocket
from harness import Browser, Workbench, execute, run_code, unique, wait_server, write_site

from atlaslab.compute.dashboard import local_dashboard
from atlaslab.compute.dask_cluster import MIN_WORKER_MEMORY, cuda_kwargs, nvlink_joined, plan

GiB = 1024**3
CPU_FACTS = {"cpu_count": 16, "total_memory": 64 * GiB, "nproc_limit": None, "dask_cuda": False}
GPU_FACTS = {**CPU_FACTS, "dask_cuda": True, "rmm": True, "ucx": True, "device_memory": 80 * GiB}
EIGHT = ",".join(f"GPU-{i}" for i in range(8))


def test_cpu_plan_stays_within_the_servers_limits() -> None:
    p = plan({"CPU_LIMIT": "2", "MEM_LIMIT": str(2 * GiB)}, **CPU_FACTS)
    assert (p.kind, p.n_workers, p.threads_per_worker, p.processes) == ("cpu", 2, 1, True)
    assert p.n_workers * p.memory_limit <= 2 * GiB * 0.75
    # Little memory: fewer, wider workers, never below the minimum per worker.
    p = plan({"CPU_LIMIT": "8", "MEM_LIMIT": str(2 * GiB)}, **CPU_FACTS)
    assert p.n_workers == 3 and p.threads_per_worker == 3 and p.memory_limit >= MIN_WORKER_MEMORY
    # No limits set (outside the hub): the machine's, less the kernel's share.
    p = plan({}, **CPU_FACTS)
    assert p.n_workers == 16 and p.memory_limit * 16 <= 48 * GiB
    # A fractional CPU limit rounds down, never to zero.
    assert plan({"CPU_LIMIT": "0.5", "MEM_LIMIT": str(GiB)}, **CPU_FACTS).n_workers == 1


def test_cpu_plan_never_exceeds_the_cores_or_memory_the_process_really_has() -> None:
    # CPU_LIMIT above the affinity mask (a server pinned to 2 cores with a 6-core share): 2 workers.
    p = plan({"CPU_LIMIT": "6", "MEM_LIMIT": str(16 * GiB)}, **{**CPU_FACTS, "cpu_count": 2})
    assert p.n_workers * p.threads_per_worker == 2
    # MEM_LIMIT above the machine's memory: the machine's is what there is.
    p = plan({"CPU_LIMIT": "4", "MEM_LIMIT": str(64 * GiB)}, **{**CPU_FACTS, "total_memory": 8 * GiB})
    assert p.n_workers * p.memory_limit <= 6 * GiB


def test_cpu_plan_respects_the_accounts_process_limit() -> None:
    limits = {"CPU_LIMIT": "4", "MEM_LIMIT": str(8 * GiB)}
    # The default environment's 512: four worker processes fit in a quarter of it.
    assert plan(limits, **{**CPU_FACTS, "nproc_limit": 512}).processes
    # A tight limit: one process of threads, all cores in it.
    p = plan(limits, **{**CPU_FACTS, "nproc_limit": 64})
    assert (p.processes, p.n_workers, p.threads_per_worker) == (False, 1, 4)
    # Many cores, a moderate limit: still within it.
    p = plan({"CPU_LIMIT": "32", "MEM_LIMIT": str(64 * GiB)}, **{**CPU_FACTS, "cpu_count": 32, "nproc_limit": 512})
    assert not p.processes or p.n_workers * (8 + p.threads_per_worker) <= 128


def test_gpu_plans_from_injected_devices() -> None:
    dgx = {**GPU_FACTS, "cpu_count": 112, "total_memory": 2048 * GiB}  # an 8-GPU machine
    p = plan({"CUDA_VISIBLE_DEVICES": EIGHT, "CPU_LIMIT": "32", "MEM_LIMIT": str(256 * GiB)}, nvlink=True, **dgx)
    assert (p.kind, p.n_workers, p.threads_per_worker, p.protocol) == ("cuda", 8, 4, "ucx")
    assert p.rmm_pool_size == int(80 * GiB * 0.8) and p.device_memory_limit == int(80 * GiB * 0.8)
    assert p.n_workers * p.memory_limit <= 256 * GiB * 0.75
    # Without NVLink, without distributed-ucxx, or on MIG instances: TCP (TLS).
    assert plan({"CUDA_VISIBLE_DEVICES": EIGHT}, nvlink=False, **GPU_FACTS).protocol == "tcp"
    assert plan({"CUDA_VISIBLE_DEVICES": EIGHT}, nvlink=True, **{**GPU_FACTS, "ucx": False}).protocol == "tcp"
    assert plan({"CUDA_VISIBLE_DEVICES": "GPU-0"}, nvlink=True, **GPU_FACTS).protocol == "tcp"  # one GPU: no peer
    # cuDF spilling only where cuDF is; the RMM pool only where RMM is (dask-cuda refuses a pool without it).
    assert plan({"CUDA_VISIBLE_DEVICES": "GPU-1"}, cudf=True, **GPU_FACTS).cudf_spill
    assert not plan({"CUDA_VISIBLE_DEVICES": "GPU-1"}, **GPU_FACTS).cudf_spill
    no_rmm = plan({"CUDA_VISIBLE_DEVICES": "GPU-1"}, **{**GPU_FACTS, "rmm": False})
    assert no_rmm.rmm_pool_size is None and "no RMM pool" in no_rmm.reason
    # CPU environments (no device, or "none") and a machine without dask-cuda get a CPU cluster.
    for env in ({"CUDA_VISIBLE_DEVICES": ""}, {"CUDA_VISIBLE_DEVICES": "none"}, {"NVIDIA_VISIBLE_DEVICES": "none"}):
        assert plan(env, **GPU_FACTS).kind == "cpu"
    no_cuda = plan({"CUDA_VISIBLE_DEVICES": "GPU-1"}, **CPU_FACTS)
    assert no_cuda.kind == "cpu" and "dask-cuda is not installed" in no_cuda.reason


def test_mig_slices_get_pools_sized_to_the_slice_and_never_ucx() -> None:
    slices = "MIG-4f1e2a3b-0000-5000-8000-000000000001,MIG-4f1e2a3b-0000-5000-8000-000000000002"
    p = plan({"CUDA_VISIBLE_DEVICES": slices}, nvlink=True, **{**GPU_FACTS, "device_memory": 10 * GiB})
    assert (p.kind, p.n_workers, p.protocol) == ("cuda", 2, "tcp")
    assert p.devices == tuple(slices.split(","))
    # 80% of the 10 GB slice, not of its 80 GB parent GPU (what a fraction passed to dask-cuda would mean).
    assert p.rmm_pool_size == int(10 * GiB * 0.8) and p.device_memory_limit == int(10 * GiB * 0.8)
    kw = cuda_kwargs(p)
    assert kw["CUDA_VISIBLE_DEVICES"] == slices and kw["rmm_pool_size"] == p.rmm_pool_size
    assert "enable_cudf_spill" not in kw


def test_nvlink_is_used_only_between_whole_gpus_that_all_have_active_links() -> None:
    assert nvlink_joined({f"GPU-{i}": 18 for i in range(8)})
    assert not nvlink_joined({"GPU-0": 4})  # one GPU has no peer
    assert not nvlink_joined({"GPU-0": 4, "GPU-1": 0})  # PCIe-only peer
    assert not nvlink_joined({"MIG-a": 0, "MIG-b": 0})
    assert not nvlink_joined({"GPU-0": 4, "MIG-b": 0})


def test_cuda_arguments_match_dask_cudas_signature() -> None:
    dask_cuda = pytest.importorskip("dask_cuda", reason="dask-cuda not installed (the gpu extra)")
    import inspect

    accepted = set(inspect.signature(dask_cuda.LocalCUDACluster.__init__).parameters)
    p = plan({"CUDA_VISIBLE_DEVICES": EIGHT}, cudf=True, nvlink=True, **GPU_FACTS)
    assert set(cuda_kwargs(p)) <= accepted


def test_importing_the_compute_package_stays_cheap() -> None:
    import subprocess
    import sys

    code = "import sys, atlaslab.compute; print(sorted({'distributed', 'dask', 'pynvml'} & set(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


@pytest.mark.parametrize(
    ("link", "expected"),
    [
        ("/user/ann/proxy/39551/status", ("/user/ann/proxy/39551", "http://127.0.0.1:39551")),
        ("proxy/8787", ("/user/ann/proxy/8787", "http://127.0.0.1:8787")),
        ("http://lab.example:8000/user/ann/proxy/8787/status", ("/user/ann/proxy/8787", "http://127.0.0.1:8787")),
        ("/user/ann/proxy/8787/", ("/user/ann/proxy/8787", "http://127.0.0.1:8787")),
        ("/user/bob/proxy/8787/status", None),  # another user's server: not a shortcut to take
        ("http://elsewhere:8000/user/ann/proxy/8787/status", None),  # another host
        ("/user/ann/lab", None),
        ("http://127.0.0.1:8787/status", None),  # a plain dashboard: dask-labextension's own check
        ("/user/ann/proxy/99999/status", None),
    ],
)
def test_dashboard_links_behind_the_users_own_server_are_recognised(link: str, expected) -> None:
    assert local_dashboard(link, "/user/ann/", "lab.example:8000") == expected


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
    # dask-labextension finds it: its server-side check, called as the lab's search button calls it, says
    # active and lists the plots, which then load through A's server.
    check = f"{wb.url}/user/{A}/dask/dashboard-check/{quote(out['link'], safe='')}"
    info = httpx.get(check, headers={"Authorization": f"token {token_a}"}, timeout=60).json()
    assert info["isActive"] and info["url"] == out["link"].removesuffix("/status"), info
    plot = info["plots"]["Individual Task Stream"]
    r = httpx.get(wb.url + info["url"] + plot, headers={"Authorization": f"token {token_a}"}, timeout=60)
    assert r.status_code == 200 and "bokeh" in r.text.lower()
    r = httpx.get(check, headers={"Authorization": f"token {token_b}"}, timeout=60, follow_redirects=False)
    assert r.status_code in (403, 404)
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
