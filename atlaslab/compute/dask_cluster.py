"""``atlaslab.compute.cluster()``: a Dask client in one call, sized to the server it runs in.

With GPUs assigned to the server (``CUDA_VISIBLE_DEVICES``) and dask-cuda installed: a LocalCUDACluster, one
worker per GPU, an RMM pool and cuDF spilling where cuDF is installed, UCX only between whole GPUs joined by
NVLink (never on MIG instances, which have no NVLink). Otherwise a LocalCluster within the server's CPU and
memory limits (``CPU_LIMIT``, ``MEM_LIMIT``, set by the spawner), leaving room for the notebook's own kernel.

The scheduler and workers talk TLS with throw-away certificates (``security=True``): on a shared machine their
ports on 127.0.0.1 are reachable by other users' processes, and without TLS anyone could submit code to run as
this user. The dashboard link goes through the user's own server (jupyter-server-proxy), behind the hub's login.

The decisions are pure functions of plain values (:func:`plan`), tested with injected devices on CPU.
"""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Mapping
from dataclasses import dataclass, field

MiB = 1024**2
MIN_WORKER_MEMORY = 512 * MiB
KERNEL_RESERVE = 0.25  # of the server's memory, for the notebook's kernel and the scheduler
MIN_KERNEL_RESERVE = 384 * MiB
RMM_POOL_FRACTION = 0.8
# Below this many processes (RLIMIT_NPROC) worker processes would crowd the user's other work: use threads.
MIN_NPROC_FOR_PROCESSES = 256
DASHBOARD_LINK = "{JUPYTERHUB_SERVICE_PREFIX}proxy/{port}/status"

_client = None


@dataclass(frozen=True)
class Plan:
    kind: str  # "cuda" or "cpu"
    n_workers: int
    threads_per_worker: int
    memory_limit: int  # bytes per worker (host memory)
    processes: bool = True
    devices: tuple[str, ...] = ()
    protocol: str = "tcp"
    rmm_pool_size: int | None = None
    cudf_spill: bool = False
    reason: str = ""
    extra: dict = field(default_factory=dict)


def visible_devices(env: Mapping[str, str]) -> tuple[str, ...]:
    value = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    if not value or value.lower() in ("none", "void", "-1"):
        return ()
    return tuple(d.strip() for d in value.split(",") if d.strip())


def plan(
    env: Mapping[str, str],
    *,
    cpu_count: int,
    total_memory: int,
    nproc_limit: int | None,
    dask_cuda: bool,
    cudf: bool = False,
    nvlink: bool = False,
    device_memory: int | None = None,
) -> Plan:
    """What cluster to start in a server with this environment and these facts."""
    cpus = float(env.get("CPU_LIMIT") or 0) or float(cpu_count)
    cores = max(1, math.floor(cpus))
    memory = int(float(env.get("MEM_LIMIT") or 0)) or total_memory
    usable = memory - max(MIN_KERNEL_RESERVE, int(memory * KERNEL_RESERVE))
    usable = max(usable, MIN_WORKER_MEMORY)
    devices = visible_devices(env)
    if devices and dask_cuda:
        mig = any(d.startswith("MIG-") for d in devices)
        ucx = nvlink and not mig and len(devices) > 1
        return Plan(
            kind="cuda",
            n_workers=len(devices),
            threads_per_worker=max(1, cores // len(devices)),
            memory_limit=usable // len(devices),
            devices=devices,
            protocol="ucx" if ucx else "tcp",
            rmm_pool_size=int(device_memory * RMM_POOL_FRACTION) if device_memory else None,
            cudf_spill=cudf,
            reason=f"{len(devices)} GPU(s) assigned" + (", NVLink: UCX" if ucx else ""),
        )
    workers = max(1, min(cores, usable // MIN_WORKER_MEMORY))
    threads = max(1, math.ceil(cores / workers))
    processes = nproc_limit is None or nproc_limit >= MIN_NPROC_FOR_PROCESSES
    if not processes:
        workers, threads = 1, cores
    why = "no GPU assigned" if not devices else "GPUs assigned but dask-cuda is not installed"
    return Plan(
        kind="cpu",
        n_workers=workers,
        threads_per_worker=threads,
        memory_limit=usable // workers,
        processes=processes,
        reason=f"{why}; {cpus:g} CPU, {memory // MiB} MiB",
    )


def _facts(devices: tuple[str, ...]) -> dict:
    import importlib.util

    import psutil

    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    facts = {
        "cpu_count": len(os.sched_getaffinity(0)),
        "total_memory": psutil.virtual_memory().total,
        "nproc_limit": None if soft == resource.RLIM_INFINITY else soft,
        "dask_cuda": importlib.util.find_spec("dask_cuda") is not None,
        "cudf": importlib.util.find_spec("cudf") is not None,
    }
    if devices and facts["dask_cuda"]:
        facts.update(_nvml_facts(devices))
    return facts


def _nvml_facts(devices: tuple[str, ...]) -> dict:
    """Device memory and whether the assigned whole GPUs are joined by NVLink (False when unsure)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return {}
    try:
        handles = [pynvml.nvmlDeviceGetHandleByUUID(d) for d in devices]
        memory = min(pynvml.nvmlDeviceGetMemoryInfo(h).total for h in handles)
        nvlink = False
        for h in handles:
            for link in range(getattr(pynvml, "NVML_NVLINK_MAX_LINKS", 18)):
                try:
                    if pynvml.nvmlDeviceGetNvLinkState(h, link):
                        nvlink = True
                        break
                except pynvml.NVMLError:
                    break
        return {"device_memory": memory, "nvlink": nvlink}
    except Exception:
        return {}
    finally:
        pynvml.nvmlShutdown()


def start(p: Plan):
    """Start the planned cluster and return a connected ``distributed.Client``."""
    import dask
    from distributed import Client

    if os.environ.get("JUPYTERHUB_SERVICE_PREFIX"):  # in a hub server: the dashboard through that server
        dask.config.set({"distributed.dashboard.link": DASHBOARD_LINK})
    common = {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0", "security": True}
    if p.kind == "cuda":
        from dask_cuda import LocalCUDACluster

        kw = dict(
            CUDA_VISIBLE_DEVICES=",".join(p.devices),
            threads_per_worker=p.threads_per_worker,
            memory_limit=p.memory_limit,
            protocol=p.protocol,
            rmm_pool_size=p.rmm_pool_size,
            **common,
        )
        if p.cudf_spill:
            kw["enable_cudf_spill"] = True
        if p.protocol == "ucx":
            kw.pop("security")  # UCX does not take TLS; NVLink traffic stays on the machine's fabric
        cluster = LocalCUDACluster(**kw)
    else:
        from distributed import LocalCluster

        cluster = LocalCluster(
            n_workers=p.n_workers,
            threads_per_worker=p.threads_per_worker,
            memory_limit=p.memory_limit,
            processes=p.processes,
            **common,
        )
    return Client(cluster)


def start_here(**overrides):
    """A new cluster planned for this process's environment and machine (see :func:`plan`)."""
    env = dict(os.environ)
    p = plan(env, **_facts(visible_devices(env)))
    if overrides:
        p = Plan(**{**p.__dict__, **overrides})
    return start(p)


def cluster(**overrides):
    """A Dask client for this server: the same one on every call in a kernel. ``overrides`` replace plan fields."""
    global _client
    if _client is not None and _client.status == "running":
        return _client
    _client = start_here(**overrides)
    return _client
