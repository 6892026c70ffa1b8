"""Dask Gateway for AtlasLab: which environments a user's clusters may use, what each worker looks like, how many
workers the user's budgets leave, and every worker counted in the usage ledger.

Pure functions (in the manner of KubeSpawner's ``objects.py``, and of :mod:`atlaslab.core.kube`) turn the site
config, a user's hub groups and the ledger into the configuration dask-gateway-server's ``cluster_options``
handler returns for one cluster. The handler runs server-side, as the user the hub vouched for, so nothing in it
can be chosen by the user except the environment, and that only among the ones their groups allow. The backends
that record workers in the ledger live in :mod:`atlaslab.compute.gateway_backends` (they import the server).

Three places use this module:

* the gateway pod: ``dask-gateway-server --config F`` with F calling :func:`configure_gateway` (and
  ``dask-gateway-server kube-controller --config F`` with the same F);
* the hub pod: :func:`atlaslab.compute.hubpart.gateway_part` registers the gateway as a JupyterHub service, lets
  users' tokens reach it and tells users' pods where it is (``DASK_GATEWAY__ADDRESS``, read by
  :func:`atlaslab.compute.cluster`);
* tests, which run a real dask-gateway-server on 127.0.0.1 with a local backend.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from traitlets.config import Config

from atlaslab.compute import credits as credits_mod
from atlaslab.compute.credits import Charge
from atlaslab.compute.usage import UsageLedger
from atlaslab.config import LoadedConfig
from atlaslab.config.mounted import load_mounted
from atlaslab.config.mounted import state_dir as mounted_state_dir
from atlaslab.config.schema import Credits, Environment, Kubernetes
from atlaslab.core.kube import gpu_limits, scheduling, tenant_namespace
from atlaslab.core.membership import Membership, access_rules, allowed_environments, default_environments

SERVICE_NAME = "dask-gateway"  # as atlaslab.compute.hubpart registers it
# A budget's remaining hours must pay every worker of a cluster for this long: a student with 1 GPU-hour left
# gets at most 2 one-GPU workers, not 60 workers that would spend it in a minute and be stopped mid-computation.
MIN_WORKER_HOURS = 0.5
# Workers per cluster when no budget says less (GPU workers are bounded by the tenant's quota anyway).
DEFAULT_MAX_WORKERS = 8
SCHEDULER_CORES = 1
SCHEDULER_MEMORY = 2 * 1024**3
IDLE_TIMEOUT = 1800  # seconds: a forgotten cluster's workers stop counting against the budget
ANNOTATION = "atlaslab.io/"
CHARGE_ENV = "ATLASLAB_CHARGE_"


class Refused(ValueError):
    """A cluster the user may not have; dask-gateway-server answers its text to the client."""


# ---- who, which environment, which worker -------------------------------------------------------------------


def allowed_for(loaded: LoadedConfig, groups: list[str], admin: bool) -> list[str]:
    """The environments a user's clusters may use: exactly those their servers may (same rules, same order)."""
    return allowed_environments(
        loaded.site.environments, access_rules(loaded), groups, admin=admin, fallback=default_environments(loaded)
    )


def forbidden(requested: str, allowed: list[str]) -> str:
    """The spawn page's wording for an environment that is not the user's."""
    listing = ", ".join(allowed) or "none"
    return f"You may not start the environment '{requested}'. Environments open to you: {listing}."


def worker_command(env: Environment, dask: str = "dask") -> list[str]:
    """``dask cuda worker`` (one worker process per visible GPU, RMM and spilling) for GPU environments."""
    return [dask, "cuda", "worker"] if env.gpu is not None else [dask, "worker"]


def worker_config(key: str, env: Environment, kube: Kubernetes, dask: str = "dask") -> dict[str, Any]:
    """The worker (and scheduler) part of a KubeClusterConfig for ``env``: the same image, limits, GPU resources,
    node selector and tolerations as the environment's servers (:mod:`atlaslab.core.kube`)."""
    cores = float(env.cpu)
    memory = int(env.memory)
    limits = {name: str(n) for name, n in gpu_limits(env, kube).items()}
    selector, tolerations = scheduling(key, env, kube)
    environment = {"ATLASLAB_ENVIRONMENT": key}
    if not limits:
        # The NVIDIA container runtime would otherwise expose every GPU of the node to a CPU worker.
        environment.update({"NVIDIA_VISIBLE_DEVICES": "none", "CUDA_VISIBLE_DEVICES": ""})
    pod: dict[str, Any] = {}
    if selector:
        pod["nodeSelector"] = selector
    if tolerations:
        pod["tolerations"] = tolerations
    config: dict[str, Any] = {
        "image": env.image or kube.default_image,
        # Requests equal limits, unlike servers (a quarter): a worker is busy whenever it exists, and an evicted
        # worker loses the data it holds.
        "worker_cores": cores,
        "worker_cores_limit": cores,
        "worker_memory": memory,
        "worker_memory_limit": memory,
        "worker_threads": max(1, math.floor(cores)),
        "worker_cmd": worker_command(env, dask),
        "scheduler_cmd": [dask, "scheduler"],
        "scheduler_cores": SCHEDULER_CORES,
        "scheduler_memory": SCHEDULER_MEMORY,
        "environment": environment,
        "worker_extra_pod_config": pod,
        # The scheduler never needs a GPU, even in a GPU environment's cluster.
        "scheduler_extra_container_config": {"env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "none"}]},
    }
    if limits:
        config["worker_extra_container_config"] = {"resources": {"limits": limits, "requests": dict(limits)}}
    return config


# ---- how many workers the budgets leave -----------------------------------------------------------------------


def gpu_room(ledger: UsageLedger, credits: Credits, charge: Charge) -> int | None:
    """Workers like ``charge``'s that may start beyond what runs now (servers and every cluster's workers, as
    the ledger holds them) under the concurrent-GPU limits (``max_gpus``); None: no such limit applies."""
    room: int | None = None
    gpus = charge.gpus
    for scope, quota in credits_mod.quotas_for(credits, charge):
        if gpus and quota.max_gpus is not None:
            free = max(0, math.floor((quota.max_gpus - ledger.gpus_held(scope)) / gpus + 1e-9))
            room = free if room is None else min(room, free)
    return room


def committed(ledger: UsageLedger, user: str) -> tuple[float, float]:
    """GPUs and CPUs the user's running servers and workers hold now: they spend the same budgets."""
    mine = [x for x in ledger.open_sessions() if x.user == user]
    return sum(x.gpus for x in mine), sum(x.cpus for x in mine)


def hours_room(ledger: UsageLedger, credits: Credits, charge: Charge, now: float) -> int | None:
    """New workers like ``charge``'s the budgets' remaining hours (before ``stop_at``) pay for
    :data:`MIN_WORKER_HOURS` each, after paying as long for what the user already runs; None: no budget counts
    hours of this kind."""
    room: int | None = None
    held = dict(zip(("gpu", "cpu"), committed(ledger, charge.user), strict=True))
    for b in credits_mod.budgets(ledger, credits, charge, now):
        per_worker = charge.per_worker(b.kind)
        if not per_worker:
            continue
        left = b.limit * credits.stop_at - b.used - held[b.kind] * MIN_WORKER_HOURS
        fits = max(0, math.floor(left / (per_worker * MIN_WORKER_HOURS) + 1e-9))
        room = fits if room is None else min(room, fits)
    return room


def worker_limit(
    ledger: UsageLedger,
    credits: Credits,
    charge: Charge,
    now: float,
    cap: int = DEFAULT_MAX_WORKERS,
    running: int = 0,
) -> int:
    """Most workers like ``charge``'s a cluster of its user may have now, ``running`` of which already run (and
    are in the ledger): the site's ``cap``, and what the concurrent-GPU limits and the budgets' hours leave beyond
    everything the user runs."""
    rooms = [r for r in (gpu_room(ledger, credits, charge), hours_room(ledger, credits, charge, now)) if r is not None]
    return max(0, min(cap, running + min(rooms)) if rooms else cap)


def refusal(
    ledger: UsageLedger, credits: Credits, charge: Charge, now: float, cap: int = DEFAULT_MAX_WORKERS
) -> str | None:
    """Why this user may not have a cluster of such workers now: the spawn page's reason, or, when the budget
    has room for a server but not for one worker, the same words with how much a worker needs."""
    why = credits_mod.spawn_refusal(ledger, credits, charge, now)
    if why:
        return why
    if worker_limit(ledger, credits, charge, now, cap) >= 1:
        return None
    for b in credits_mod.budgets(ledger, credits, charge, now):
        per_worker = charge.per_worker(b.kind)
        if per_worker and b.limit * credits.stop_at - b.used < per_worker * MIN_WORKER_HOURS:
            what = "a CPU environment, or " if b.kind == "gpu" else ""
            return (
                f"No credit left in {b.describe()}: one Dask worker needs {per_worker * MIN_WORKER_HOURS:g}"
                f" {credits_mod.KIND_LABEL[b.kind]}. Start {what}wait for the renewal, or ask for more."
            )
    return (
        "Your budgets have no room for another Dask worker while your other servers and clusters run; stop one,"
        " or start a CPU environment."
    )


def cluster_config(
    loaded: LoadedConfig,
    ledger: UsageLedger | None,
    user: str,
    groups: list[str],
    admin: bool,
    requested: str,
    now: float,
    *,
    dask: str = "dask",
    cap: int = DEFAULT_MAX_WORKERS,
) -> dict[str, Any]:
    """What one new cluster of ``user`` gets when they ask for environment ``requested``; :class:`Refused` if
    the environment is not theirs or their budgets leave no worker."""
    site = loaded.site
    allowed = allowed_for(loaded, groups, admin)
    if requested not in allowed:
        raise Refused(forbidden(requested, allowed))
    env = site.environments[requested]
    charge = Charge.of(user, Membership.of(groups), requested, env)
    limit = cap
    if ledger is not None:
        why = refusal(ledger, site.credits, charge, now, cap)
        if why:
            raise Refused(why)
        limit = worker_limit(ledger, site.credits, charge, now, cap)
    config = worker_config(requested, env, site.kubernetes, dask)
    kube = site.kubernetes
    config["namespace"] = tenant_namespace(groups, kube.namespace_prefix, f"{kube.namespace_prefix}users")
    config["cluster_max_workers"] = limit
    # The gateway derives the worker count from these too (scheduler included): keep them consistent.
    config["cluster_max_cores"] = SCHEDULER_CORES + limit * charge.cpus
    config["cluster_max_memory"] = SCHEDULER_MEMORY + limit * int(env.memory)
    config["idle_timeout"] = IDLE_TIMEOUT
    # Who pays, read back by the usage hook from the worker pod (KubeBackend) or the cluster config (local).
    values = charge.values()
    config["worker_extra_pod_annotations"] = {ANNOTATION + k: v for k, v in values.items()}
    config["environment"].update({f"{CHARGE_ENV}{k.upper()}": v for k, v in values.items()})
    return config


# ---- dask-gateway-server's cluster_options ----------------------------------------------------------------------


class ClusterOptions:
    """``c.Backend.cluster_options``: called with the authenticated user, it offers that user's environments and
    returns the handler that turns their choice into the cluster's configuration."""

    def __init__(
        self,
        loaded: LoadedConfig,
        ledger: Callable[[], UsageLedger | None],
        config_traits: set[str] | None = None,
        dask: str = "dask",
        cap: int = DEFAULT_MAX_WORKERS,
        clock: Callable[[], float] = time.time,
        whole_cores: bool = False,
    ):
        self.loaded, self.ledger, self.config_traits = loaded, ledger, config_traits
        self.dask, self.cap, self.clock, self.whole_cores = dask, cap, clock, whole_cores

    def __call__(self, user) -> Any:
        from dask_gateway_server.options import Options, Select

        groups, admin = list(user.groups or []), bool(user.admin)
        allowed = allowed_for(self.loaded, groups, admin)
        if not allowed:
            raise Refused(
                "No environment is open to your account yet. Ask your instructor or the site administrator to add"
                " you to a course, team or tenant."
            )
        envs = self.loaded.site.environments
        default = next((k for k in allowed if envs[k].default), allowed[0])

        class EnvironmentField(Select):
            def validate(self, x: object) -> str:
                if not isinstance(x, str) or x not in self.options:
                    raise Refused(forbidden(str(x), allowed))
                return x

        def handler(options: Mapping[str, Any], user) -> dict[str, Any]:
            config = cluster_config(
                self.loaded,
                self.ledger(),
                user.name,
                list(user.groups or []),
                bool(user.admin),
                options["environment"],
                self.clock(),
                dask=self.dask,
                cap=self.cap,
            )
            if self.config_traits is not None:
                # A local backend's config has no Kubernetes fields (namespace, image, pod extras).
                config = {k: v for k, v in config.items() if k in self.config_traits}
            if self.whole_cores:
                # The base ClusterConfig (local backends) counts cores in whole numbers.
                config["worker_cores"] = math.ceil(config["worker_cores"])
            return config

        field = EnvironmentField("environment", [(k, k) for k in allowed], default=default, label="Environment")
        return Options(field, handler=handler)


# ---- usage --------------------------------------------------------------------------------------------------------


def holder(user: str, cluster: str, worker: str) -> str:
    """A worker's name in the ledger: under its user, like their servers (``user/server``)."""
    return f"{user}/dask/{cluster}/{worker}"


def charge_of_cluster(config: Mapping[str, Any]) -> Charge | None:
    """Who a local cluster's workers are charged to, as :func:`cluster_config` wrote it into its environment."""
    return Charge.from_values(dict(config.get("environment") or {}), CHARGE_ENV)


def charge_of_pod(pod: Mapping[str, Any]) -> Charge | None:
    """Who a worker pod is charged to, from the annotations :func:`cluster_config` gave it."""
    return Charge.from_values(dict(pod.get("metadata", {}).get("annotations") or {}), ANNOTATION)


class UsageRecorder:
    """Opens a ledger session when a worker starts and closes it when it stops; the ledger is SQLite, so every
    start and stop is on disk before the call returns."""

    def __init__(self, ledger: UsageLedger):
        self.ledger = ledger

    def started(self, charge: Charge, cluster: str, worker: str) -> None:
        charge.open_session(self.ledger, holder(charge.user, cluster, worker))

    def stopped(self, user: str, cluster: str, worker: str) -> None:
        self.ledger.close(holder(user, cluster, worker))

    def running(self, user: str, cluster: str) -> set[str]:
        """Workers of ``cluster`` with an open session."""
        prefix = holder(user, cluster, "")
        return {s.holder[len(prefix) :] for s in self.ledger.open_sessions() if s.holder.startswith(prefix)}

    def stop_cluster(self, user: str, cluster: str) -> None:
        for worker in self.running(user, cluster):
            self.stopped(user, cluster, worker)


def running_check(
    ledger: UsageLedger, credits: Credits, charge: Charge, cluster: str, now: float
) -> tuple[list[str], str | None]:
    """A running cluster's budget check, under the rule servers follow (:func:`credits.enforce`): the notices
    recorded now (warnings shared with the user's servers, a stop notice of its own), and, once a budget its workers
    are charged to has been spent for the grace, why it stops (recorded as a "stopped" notice), else None."""
    recorded, spent = credits_mod.enforce(ledger, credits, charge, now, runs="dask")
    if spent is None:
        return recorded, None
    why = f"Your Dask cluster {cluster} was stopped: no credit left in {spent.describe()}."
    ledger.notify(charge.user, f"{spent.key}:stopped:dask:{cluster}", "stopped", why)
    return recorded, why


# ---- configuring the gateway server and the hub ----------------------------------------------------------------


def ledger_path(state_dir: Path) -> Path:
    return state_dir / "compute" / "usage.sqlite"


def load_site(env: Mapping[str, str]) -> LoadedConfig:
    """The site as the hub pod mounts it (``/etc/atlaslab``), materialised in a private directory."""
    return load_mounted(dict(env), Path(tempfile.mkdtemp(prefix="atlaslab-site-")), check_secrets=False)


def configure_gateway(
    c: Config,
    loaded: LoadedConfig | None = None,
    env: Mapping[str, str] | None = None,
    backend: str = "kube",
) -> LoadedConfig:
    """Everything ``dask-gateway-server --config`` needs, from the site config and the pod's environment.

    ``backend``: ``kube`` (KubeBackend in the user's tenant's namespace, and the controller that counts worker
    pods) or ``local`` (worker processes on this machine, for tests and single machines).
    """
    env = dict(os.environ if env is None else env)
    loaded = loaded or load_site(env)
    db = ledger_path(mounted_state_dir(env))
    cap = int(env.get("ATLASLAB_GATEWAY_MAX_WORKERS") or DEFAULT_MAX_WORKERS)

    def ledger() -> UsageLedger | None:
        return UsageLedger(db)

    c.DaskGateway.authenticator_class = "dask_gateway_server.auth.JupyterHubAuthenticator"
    # The token, API URL and service name come from the environment (JUPYTERHUB_*), set by the chart or the hub.
    c.JupyterHubAuthenticator.jupyterhub_service_name = env.get("JUPYTERHUB_SERVICE_NAME", SERVICE_NAME)
    if env.get("ATLASLAB_GATEWAY_ADDRESS"):
        c.DaskGateway.address = env["ATLASLAB_GATEWAY_ADDRESS"]
    if backend == "kube":
        from dask_gateway_server.backends.kubernetes.backend import KubeClusterConfig

        c.DaskGateway.backend_class = "atlaslab.compute.gateway_backends.AtlasLabKubeBackend"
        traits = set(KubeClusterConfig.class_trait_names())
        c.KubeBackend.cluster_options = ClusterOptions(loaded, ledger, traits, cap=cap)
        c.KubeBackend.gateway_instance = env.get("DASK_GATEWAY_INSTANCE", "atlaslab")
        # The API server re-checks scale requests and stops spent clusters: it reads the ledger too.
        c.KubeBackend.ledger_path = str(db)
        c.KubeController.gateway_instance = env.get("DASK_GATEWAY_INSTANCE", "atlaslab")
        c.KubeController.api_url = env.get("ATLASLAB_GATEWAY_API_URL", "")
        c.KubeController.proxy_prefix = env.get("ATLASLAB_GATEWAY_PREFIX", f"/services/{SERVICE_NAME}")
        c.KubeController.ledger_path = str(db)
    else:
        from dask_gateway_server.backends.local import LocalClusterConfig

        c.DaskGateway.backend_class = "atlaslab.compute.gateway_backends.AtlasLabLocalBackend"
        traits = set(LocalClusterConfig.class_trait_names())
        dask = str(Path(sys.executable).with_name("dask"))
        c.LocalBackend.cluster_options = ClusterOptions(loaded, ledger, traits, dask=dask, cap=cap, whole_cores=True)
        c.LocalBackend.ledger_path = str(db)
    return loaded
