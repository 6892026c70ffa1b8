"""``atlaslab.compute.cluster()``: a Dask client in one call, sized to the server it runs in.

With GPUs assigned to the server (``CUDA_VISIBLE_DEVICES``) and dask-cuda installed: a LocalCUDACluster, one
worker per GPU, an RMM pool where RMM is installed and cuDF spilling where cuDF is, UCX only between whole GPUs
joined by NVLink and only where distributed-ucxx is installed (never on MIG instances, which have no NVLink).
Otherwise a LocalCluster within the server's CPU and memory limits (``CPU_LIMIT``, ``MEM_LIMIT``, set by the
spawner, and the CPUs this process may run on), leaving room for the notebook's own kernel.

The scheduler and workers talk TLS with throw-away certificates (``security=True``): on a shared machine their
ports on 127.0.0.1 are reachable by other users' processes, and without TLS anyone could submit code to run as
this user. The dashboard link goes through the user's own server (jupyter-server-proxy), behind the hub's login.

The decisions are pure functions of plain values (:func:`plan`), tested with injected devices on CPU; only
:func:`_facts` and :func:`_nvml_facts` look at the machine.
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
# RMM pool and spill threshold, as fractions of each device's own memory (a MIG slice's, not its parent GPU's).
RMM_POOL_FRACTION = 0.8
DEVICE_SPILL_FRACTION = 0.8
# Tasks that one worker process costs beyond its compute threads (processes and threads both count against
# RLIMIT_NPROC and pids.max): 3-4 measured with TLS on distributed 2026.8; 8 leaves room for offload threads.
TASKS_PER_WORKER_PROCESS = 8
# Worker processes may take this share of the account's process limit; the rest is for the kernel, the server
# and the user's other work (a terminal, pip, a second kernel).
NPROC_SHARE = 0.25
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
    rmm_pool_size: int | None = None  # bytes per worker
    device_memory_limit: int | None = None  # bytes per worker; None: dask-cuda's default
    cudf_spill: bool = False
    reason: str = ""
    extra: dict = field(default_factory=dict)


def visible_devices(env: Mapping[str, str]) -> tuple[str, ...]:
    value = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    if not value or value.lower() in ("none", "void", "-1"):
        return ()
    return tuple(d.strip() for d in value.split(",") if d.strip())


def is_mig(device: str) -> bool:
    return device.startswith("MIG-")


def nvlink_joined(active_links: Mapping[str, int]) -> bool:
    """Whether UCX over NVLink can help: two or more whole GPUs, each with at least one active NVLink.

    Per-link peers are not checked: on NVSwitch systems (DGX/HGX) every link's peer is a switch, not a GPU,
    and a GPU with an active link there reaches all the others.
    """
    whole = {d: n for d, n in active_links.items() if not is_mig(d)}
    return len(whole) > 1 and len(whole) == len(active_links) and all(n > 0 for n in whole.values())


def plan(
    env: Mapping[str, str],
    *,
    cpu_count: int,
    total_memory: int,
    nproc_limit: int | None,
    dask_cuda: bool,
    cudf: bool = False,
    rmm: bool = False,
    ucx: bool = False,
    nvlink: bool = False,
    device_memory: int | None = None,
) -> Plan:
    """What cluster to start in a server with this environment and these facts about the machine.

    ``cpu_count``: CPUs this process may run on (sched_getaffinity); ``total_memory``: the machine's;
    ``nproc_limit``: RLIMIT_NPROC (None: unlimited); ``device_memory``: the smallest assigned device's memory;
    ``nvlink``: see :func:`nvlink_joined`; the rest: whether that package is importable.
    """
    # CPU_LIMIT is a share of CPU time; the affinity mask is the cores we can actually run on. The smaller wins.
    cpus = min(float(env.get("CPU_LIMIT") or 0) or float(cpu_count), float(cpu_count))
    cores = max(1, math.floor(cpus))
    memory = min(int(float(env.get("MEM_LIMIT") or 0)) or total_memory, total_memory)
    usable = memory - max(MIN_KERNEL_RESERVE, int(memory * KERNEL_RESERVE))
    usable = max(usable, MIN_WORKER_MEMORY)
    devices = visible_devices(env)
    if devices and dask_cuda:
        mig = any(is_mig(d) for d in devices)
        use_ucx = ucx and nvlink and not mig and len(devices) > 1
        # Sizes in bytes from the device's own memory: dask-cuda resolves a fraction against the parent GPU of
        # a MIG instance (a 10 GB slice of an 80 GB GPU would get a 64 GB pool and never spill).
        pool = int(device_memory * RMM_POOL_FRACTION) if (rmm and device_memory) else None
        spill = int(device_memory * DEVICE_SPILL_FRACTION) if device_memory else None
        notes = [f"{len(devices)} {'MIG instance' if mig else 'GPU'}(s) assigned"]
        notes += ["UCX over NVLink"] if use_ucx else []
        notes += [] if pool else ["no RMM pool (rmm not installed or device memory unknown)"]
        return Plan(
            kind="cuda",
            n_workers=len(devices),
            threads_per_worker=max(1, cores // len(devices)),
            memory_limit=usable // len(devices),
            devices=devices,
            protocol="ucx" if use_ucx else "tcp",
            rmm_pool_size=pool,
            device_memory_limit=spill,
            cudf_spill=cudf,
            reason="; ".join(notes),
        )
    workers = max(1, min(cores, usable // MIN_WORKER_MEMORY))
    threads = max(1, math.ceil(cores / workers))
    processes = nproc_limit is None or workers * (TASKS_PER_WORKER_PROCESS + threads) <= nproc_limit * NPROC_SHARE
    if not processes:  # one process of threads: no worker processes to crowd the account's process limit
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


def cuda_kwargs(p: Plan) -> dict:
    """LocalCUDACluster's arguments for a "cuda" plan (besides the common host/dashboard/security ones)."""
    kw: dict = {
        "CUDA_VISIBLE_DEVICES": ",".join(p.devices),
        "n_workers": p.n_workers,
        "threads_per_worker": p.threads_per_worker,
        "memory_limit": p.memory_limit,
        "protocol": p.protocol,
    }
    if p.rmm_pool_size:
        kw["rmm_pool_size"] = p.rmm_pool_size
    if p.device_memory_limit:
        kw["device_memory_limit"] = p.device_memory_limit
    if p.cudf_spill:
        kw["enable_cudf_spill"] = True
    return kw


def _facts(devices: tuple[str, ...]) -> dict:
    import importlib.util

    import psutil

    def have(module: str) -> bool:
        return importlib.util.find_spec(module) is not None

    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    facts = {
        "cpu_count": len(os.sched_getaffinity(0)),
        "total_memory": psutil.virtual_memory().total,
        "nproc_limit": None if soft == resource.RLIM_INFINITY else soft,
        # Imported, not just found: dask-cuda installed without its CUDA runtime (cuda-core) fails at import,
        # and a CPU cluster is then the useful answer. Only tried where GPUs are assigned: it is slow.
        "dask_cuda": bool(devices) and _imports("dask_cuda"),
        "cudf": have("cudf"),
        "rmm": have("rmm"),
        "ucx": have("distributed_ucxx"),
    }
    if devices and facts["dask_cuda"]:
        facts.update(_nvml_facts(devices))
    return facts


def _imports(module: str) -> bool:
    import importlib

    try:
        importlib.import_module(module)
    except Exception:
        return False
    return True


def _nvml_facts(devices: tuple[str, ...]) -> dict:
    """The smallest assigned device's memory, and whether NVLink joins them; {} when NVML cannot tell."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return {}
    try:
        # A MIG UUID gives the MIG device's handle: its memory is the slice's own.
        handles = {d: pynvml.nvmlDeviceGetHandleByUUID(d) for d in devices}
        memory = min(pynvml.nvmlDeviceGetMemoryInfo(h).total for h in handles.values())
        active = {d: 0 if is_mig(d) else _active_links(pynvml, h) for d, h in handles.items()}
        return {"device_memory": memory, "nvlink": nvlink_joined(active)}
    except Exception:
        return {}
    finally:
        pynvml.nvmlShutdown()


def _active_links(pynvml, handle) -> int:
    count = 0
    for link in range(getattr(pynvml, "NVML_NVLINK_MAX_LINKS", 18)):
        try:
            count += bool(pynvml.nvmlDeviceGetNvLinkState(handle, link))
        except pynvml.NVMLError:  # no such link (or no NVLink at all): the links are numbered from 0
            break
    return count


def start(p: Plan):
    """Start the planned cluster and return a connected ``distributed.Client``."""
    import dask
    from distributed import Client

    if os.environ.get("JUPYTERHUB_SERVICE_PREFIX"):  # in a hub server: the dashboard through that server
        dask.config.set({"distributed.dashboard.link": DASHBOARD_LINK})
    common = {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0", "security": True}
    if p.kind == "cuda":
        from dask_cuda import LocalCUDACluster

        kw = {**cuda_kwargs(p), **common}
        if p.protocol == "ucx":
            kw.pop("security")  # UCX does not take TLS; NVLink traffic stays on the machine's fabric
        else:
            kw["protocol"] = "tls"  # with security=True, "tcp" would be refused by the TLS-only listeners
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


def cluster(scale: int | None = None, **overrides):
    """A Dask client for this server: the same one on every call in a kernel. ``overrides`` replace plan fields
    (e.g. ``n_workers=1``) and apply only when a cluster is started, not to the one already running.

    ``scale=N``: N workers beyond this server, from the site's Dask Gateway (see :func:`gateway_cluster`)."""
    global _client
    if scale is not None:
        return gateway_cluster(scale)
    if _client is not None and _client.status == "running":
        return _client
    _client = start_here(**overrides)
    return _client


def gateway_options(env: Mapping[str, str]) -> dict[str, str] | None:
    """The new cluster's options: this server's environment (the gateway checks it is the user's); None where no
    gateway is configured (``DASK_GATEWAY__ADDRESS``, set in users' pods on Kubernetes when the chart runs one)."""
    if not env.get("DASK_GATEWAY__ADDRESS"):
        return None
    return {"environment": env["ATLASLAB_ENVIRONMENT"]} if env.get("ATLASLAB_ENVIRONMENT") else {}


def gateway_cluster(workers: int, environment: str | None = None):
    """A client of a new Dask Gateway cluster of ``workers`` workers, each like this server's environment (or
    ``environment``), counted against the user's budgets; it stops when the client closes or sits idle."""
    options = gateway_options(os.environ)
    if options is None:
        raise RuntimeError(
            "No Dask Gateway here (DASK_GATEWAY__ADDRESS is not set): scale-out runs on the site's Kubernetes"
            " cluster only. atlaslab.compute.cluster() without scale= uses this server's own CPUs and GPUs."
        )
    from dask_gateway import Gateway

    if environment:
        options["environment"] = environment
    # Address, proxy address and authentication come from dask's config, i.e. the DASK_GATEWAY__* variables.
    gw = Gateway()
    remote = gw.new_cluster(shutdown_on_close=True, **options)
    remote.scale(workers)
    return remote.get_client()
