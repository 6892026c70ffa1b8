"""dask-gateway-server's backends, with every worker's start and stop in AtlasLab's usage ledger.

Where workers start and stop differs by backend, so the hook sits at the narrowest point of each:

* local backends (``DBBackendBase``): ``do_start_worker`` has launched the process when its generator ends, and
  ``do_stop_worker`` stops one; ``do_stop_cluster`` stops the scheduler and, with it, every worker the base class
  then marks stopped without calling ``do_stop_worker`` (so the cluster's open sessions close there too);
* Kubernetes: the API server (``KubeBackend``) never sees a worker, only a replica count it writes into the
  ``DaskCluster`` object; the controller creates and deletes the worker pods and watches them
  (``on_pod_update``/``on_pod_delete``). A worker is charged from the moment its pod is bound to a node (it holds
  the GPU from then) until the pod ends or is deleted.

Both also check the budgets on every heartbeat of a cluster's scheduler (``on_cluster_heartbeat``, every
``cluster_heartbeat_period``), in the API server, which holds the cluster's configuration and can stop it:

* running clusters follow the servers' rule (:func:`gateway.running_check`): warnings at ``warn_at``, a stop
  notice at ``stop_at``, and the cluster stopped ``grace`` after it. The deadline is the notice's time in the
  ledger, so a gateway restart keeps it, and the hub is not involved;
* scale requests are re-checked: ``cluster_max_workers`` is fixed when the cluster is created, and a user with two
  clusters, or a server started since, must not get more workers than their concurrent-GPU limit leaves now.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from dask_gateway_server.backends.db_base import JobStatus
from dask_gateway_server.backends.kubernetes.backend import KubeBackend
from dask_gateway_server.backends.kubernetes.controller import KubeController, get_cluster_key
from dask_gateway_server.backends.local import LocalBackend, UnsafeLocalBackend
from traitlets import Unicode
from traitlets.config import LoggingConfigurable

from atlaslab.compute import gateway
from atlaslab.compute.usage import UsageLedger


class LedgerMixin(LoggingConfigurable):
    """The ledger, and the scale re-check shared by the gateway's backends."""

    ledger_path = Unicode("", help="The usage ledger (STATE_DIR/compute/usage.sqlite); empty: nothing is counted.").tag(
        config=True
    )

    # Time for the budget checks (tests move it).
    clock: Callable[[], float] = staticmethod(time.time)

    def recorder(self) -> gateway.UsageRecorder | None:
        return gateway.UsageRecorder(UsageLedger(self.ledger_path, clock=self.clock)) if self.ledger_path else None

    def budget_stop(self, config: dict, cluster: str) -> str | None:
        """Why ``cluster`` must stop now (its user's budget has been spent for the grace), or None; warnings and
        the stop notice are recorded for the user's session on the way."""
        charge = gateway.charge_of_cluster(config)
        recorder = self.recorder()
        loaded = getattr(self, "site", None)
        if charge is None or recorder is None or loaded is None:
            return None
        recorded, why = gateway.running_check(recorder.ledger, loaded.site.credits, charge, cluster, self.clock())
        for message in recorded:
            self.log.warning("Credits notice for %s (cluster %s): %s", charge.user, cluster, message)
        return why

    def allowed_count(self, config: dict, cluster: str, asked: int) -> int:
        """``asked`` workers, less what the user's budgets do not leave for this cluster now."""
        charge = gateway.charge_of_cluster(config)
        recorder = self.recorder()
        if charge is None or recorder is None:
            return asked
        loaded = getattr(self, "site", None)
        if loaded is None:
            return asked
        mine = len(recorder.running(charge.user, cluster))
        cap = config.get("cluster_max_workers")
        limit = gateway.worker_limit(
            recorder.ledger,
            loaded.site.credits,
            charge,
            self.clock(),
            gateway.DEFAULT_MAX_WORKERS if cap is None else int(cap),
            running=mine,
        )
        return min(asked, limit)

    async def capped_heartbeat(self, cluster_name: str, config: dict, msg: dict) -> dict | None:
        """``msg`` with its worker count capped by the budgets; None if the cluster was stopped instead."""
        why = await asyncio.to_thread(self.budget_stop, dict(config), cluster_name)
        if why:
            self.log.warning("Stopping cluster %s: %s", cluster_name, why)
            await self.stop_cluster(cluster_name)  # type: ignore[attr-defined]
            return None
        count = msg.get("count", 0)
        allowed = await asyncio.to_thread(self.allowed_count, dict(config), cluster_name, count)
        if allowed < count:
            self.log.info("Cluster %s asked for %d workers; its user's budgets leave %d", cluster_name, count, allowed)
            msg = {**msg, "count": allowed}
        return msg


def _site_of(backend) -> Any:
    options = backend.cluster_options
    return getattr(options, "loaded", None)


class _LocalUsage(LedgerMixin):
    """Usage for the database-backed backends (local processes)."""

    @property
    def site(self):
        return _site_of(self)

    async def do_start_worker(self, worker):
        async for state in super().do_start_worker(worker):  # type: ignore[misc]
            yield state
        # The process exists now: it runs (and counts) until do_stop_worker or the cluster's stop.
        charge = gateway.charge_of_cluster(worker.cluster.config)
        recorder = self.recorder()
        if charge is not None and recorder is not None:
            await asyncio.to_thread(recorder.started, charge, worker.cluster.name, worker.name)

    async def do_stop_worker(self, worker):
        try:
            await super().do_stop_worker(worker)  # type: ignore[misc]
        finally:
            await self._close(worker.cluster, [worker.name])

    async def do_stop_cluster(self, cluster):
        try:
            await super().do_stop_cluster(cluster)  # type: ignore[misc]
        finally:
            await self._close(cluster, None)

    async def _close(self, cluster, workers: list[str] | None) -> None:
        charge = gateway.charge_of_cluster(cluster.config)
        recorder = self.recorder()
        if charge is None or recorder is None:
            return
        if workers is None:
            await asyncio.to_thread(recorder.stop_cluster, charge.user, cluster.name)
        else:
            for name in workers:
                await asyncio.to_thread(recorder.stopped, charge.user, cluster.name, name)

    async def on_cluster_heartbeat(self, cluster_name, msg):
        cluster = self.db.get_cluster(cluster_name)  # type: ignore[attr-defined]
        if cluster is not None and cluster.target <= JobStatus.RUNNING:  # not once it is stopping
            msg = await self.capped_heartbeat(cluster_name, cluster.config, msg)
            if msg is None:
                return
        await super().on_cluster_heartbeat(cluster_name, msg)  # type: ignore[misc]


class AtlasLabLocalBackend(_LocalUsage, LocalBackend):
    """LocalBackend (a system account per user, as the gateway's root) with usage counted."""


class AtlasLabUnsafeLocalBackend(_LocalUsage, UnsafeLocalBackend):
    """UnsafeLocalBackend (workers run as the gateway's own account; tests only) with usage counted."""


class AtlasLabKubeBackend(LedgerMixin, KubeBackend):
    """KubeBackend whose scale requests are re-checked against the budgets (its controller counts the pods)."""

    @property
    def site(self):
        return _site_of(self)

    async def on_cluster_heartbeat(self, cluster_name, msg):
        cluster = self.clusters.get(cluster_name)
        if cluster is not None:
            msg = await self.capped_heartbeat(cluster_name, cluster.config, msg)
            if msg is None:
                return
        await super().on_cluster_heartbeat(cluster_name, msg)


def worker_pod_event(pod: dict, deleted: bool = False) -> tuple[str, gateway.Charge, str, str] | None:
    """What a worker pod's event means for the ledger: ("start" | "stop", charge, cluster, worker), or None.

    A pod counts once bound to a node (``spec.nodeName``: the device plugin gave it its GPU) and until it has
    ended (Succeeded or Failed) or is deleted. Pods without AtlasLab's annotations are not ours to count.
    """
    labels = pod.get("metadata", {}).get("labels") or {}
    if labels.get("app.kubernetes.io/component") != "dask-worker":
        return None
    key = get_cluster_key(pod)
    charge = gateway.charge_of_pod(pod)
    if key is None or charge is None:
        return None
    name = pod["metadata"]["name"]
    phase = (pod.get("status") or {}).get("phase", "Unknown")
    if deleted or phase in ("Succeeded", "Failed"):
        return "stop", charge, key, name
    if (pod.get("spec") or {}).get("nodeName") and phase in ("Pending", "Running"):
        return "start", charge, key, name
    return None


class AtlasLabKubeController(LedgerMixin, KubeController):
    """The gateway's Kubernetes controller, counting worker pods in the usage ledger."""

    name = "atlaslab-dask-gateway-controller"

    def _count(self, pod: dict, deleted: bool) -> None:
        event = worker_pod_event(pod, deleted)
        recorder = self.recorder()
        if event is None or recorder is None:
            return
        kind, charge, cluster, worker = event
        try:
            if kind == "stop":
                recorder.stopped(charge.user, cluster, worker)
            elif worker not in self._counted(recorder, charge.user, cluster):
                # Informers replay every pod on a restart: a worker already counted keeps its session.
                recorder.started(charge, cluster, worker)
        except Exception:
            self.log.error("Could not record worker %s of %s in the usage ledger", worker, cluster, exc_info=True)

    def _counted(self, recorder: gateway.UsageRecorder, user: str, cluster: str) -> set[str]:
        return recorder.running(user, cluster)

    def on_pod_update(self, pod, old=None):
        self._count(pod, deleted=False)
        return super().on_pod_update(pod, old)

    def on_pod_delete(self, pod):
        self._count(pod, deleted=True)
        return super().on_pod_delete(pod)

    async def setup(self):
        await super().setup()
        # Workers that ended while no controller watched: close their sessions (at their last sight).
        recorder = self.recorder()
        if recorder is None:
            return
        pods = {p["metadata"]["name"] for p in self.informers["pod"].cache.values()}
        for session in recorder.ledger.open_sessions():
            parts = session.holder.split("/")
            if len(parts) == 4 and parts[1] == "dask" and parts[3] not in pods:
                recorder.ledger.close(session.holder)


main = AtlasLabKubeController.launch_instance

if __name__ == "__main__":
    main()
