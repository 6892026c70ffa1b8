"""Dask Gateway: each user's environments and budgets decide what their clusters get (pure functions, then the
worker pod dask-gateway-server's own Kubernetes controller builds from that, validated), the chart's gateway
objects, and a real dask-gateway-server on 127.0.0.1 behind a real hub: a user's cluster computes and its worker
lands in the usage ledger; another user cannot reach it; a user without credit is refused with the spawn words.
"""

from __future__ import annotations

import collections
import gc
import os
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import httpx
import kubernetes_validate
import pytest
import yaml
from harness import Workbench, free_port, logged_in, unique, write_site
from kube_support import K8S_VERSION, by_kind, chart_without_dependency, render

from atlaslab.compute import credits as credits_mod
from atlaslab.compute import gateway
from atlaslab.compute.credits import Charge
from atlaslab.compute.dask_cluster import cluster, gateway_options
from atlaslab.compute.hubpart import gateway_part
from atlaslab.compute.usage import UsageLedger
from atlaslab.config import parse
from atlaslab.core import kube
from atlaslab.core.hubpart import merge

GiB = 1024**3
HOUR = 3600.0
NOW = 1_780_000_000.0  # a fixed moment in a month, for the ledger's clock
SITE = """
site: {state_dir: STATE}
kubernetes:
  enabled: true
  namespace_prefix: lab-
  placement:
    gpu-slice: {node_selector: {nvidia.com/gpu.product: A100-SXM4-80GB}}
tenants:
  campus: {title: Campus, environments: [cpu-small, gpu-shared]}
  rnd: {title: R&D, environments: [cpu-small, gpu-one, gpu-two, gpu-slice]}
courses:
  ml101: {title: ML 101, tenant: campus, students: [sara], environments: [cpu-small]}
teams:
  vision: {tenant: rnd, members: [rana]}
environments:
  cpu-small: {cpu: 1, memory: 2G, default: true}
  gpu-one: {cpu: 4, memory: 16G, gpu: {count: 1}}
  gpu-two: {cpu: 8, memory: 32G, gpu: {count: 2}, image: "registry.example/atlaslab/user-gpu:0.1.0"}
  gpu-slice: {cpu: 4, memory: 16G, gpu: {mig: 1g.10gb}}
  gpu-shared: {cpu: 2, memory: 8G, gpu: {shared: 4}}
credits:
  users:
    rana: {gpu_hours: 10, max_gpus: 2, period: month}
  default_user: {cpu_hours: 100, gpu_hours: 20}
"""
SARA = ["tenant:campus", "course:ml101:students"]
RANA = ["tenant:rnd", "team:vision"]


@pytest.fixture
def loaded(tmp_path):
    return parse(SITE.replace("STATE", str(tmp_path / "state")))


@pytest.fixture
def ledger(tmp_path) -> UsageLedger:
    clock = SimpleNamespace(now=NOW)
    led = UsageLedger(tmp_path / "usage.sqlite", clock=lambda: clock.now)
    led.clock_box = clock  # type: ignore[attr-defined]
    return led


def used(led: UsageLedger, holder: str, user: str, gpus: float, cpus: float, hours: float, scopes) -> None:
    """A finished session of ``hours`` ending now."""
    box = led.clock_box  # type: ignore[attr-defined]
    box.now = NOW - hours * HOUR
    led.open(holder, user, "x", cpus, gpus, scopes)
    box.now = NOW
    led.close(holder)


def user(name: str, groups: list[str], admin: bool = False) -> SimpleNamespace:
    return SimpleNamespace(name=name, groups=groups, admin=admin)


def options_for(loaded, led, who):
    return gateway.ClusterOptions(loaded, lambda: led, clock=lambda: NOW)(who)


# ---- options per user ---------------------------------------------------------------------------------------


def test_a_student_is_offered_only_their_environments_and_refused_others(loaded, ledger) -> None:
    sara = user("sara", SARA)
    opts = options_for(loaded, ledger, sara)
    [field] = opts.get_specification()
    assert field["field"] == "environment" and field["spec"]["options"] == ["cpu-small", "gpu-shared"]
    # The same list KubeSpawner offers her servers.
    profiles = kube.profiles_for(kube.profiles(loaded), *_rules(loaded), SARA, False)
    assert [p["slug"] for p in profiles] == ["cpu-small", "gpu-shared"]
    # Attack: another tenant's GPU environment, by hand, in the request.
    with pytest.raises(gateway.Refused) as e:
        opts.parse_options({"environment": "gpu-two"})
    assert str(e.value) == (
        "You may not start the environment 'gpu-two'. Environments open to you: cpu-small, gpu-shared."
    )
    # And if the option check were bypassed, the handler refuses again.
    with pytest.raises(gateway.Refused, match="may not start the environment 'gpu-two'"):
        gateway.cluster_config(loaded, ledger, "sara", SARA, False, "gpu-two", NOW)
    # Unknown fields (e.g. trying to set the worker command or the maxima directly) are refused by the gateway.
    with pytest.raises(ValueError, match="Unknown fields"):
        opts.parse_options({"environment": "cpu-small", "cluster_max_workers": 100})
    config = opts.get_configuration(opts.parse_options({}), sara)
    assert config["namespace"] == "lab-campus" and config["environment"]["ATLASLAB_ENVIRONMENT"] == "cpu-small"
    # A user in no group gets the site's default environment only; admins get all, in their own namespace.
    assert options_for(loaded, ledger, user("new", [])).get_specification()[0]["spec"]["options"] == ["cpu-small"]
    assert len(options_for(loaded, ledger, user("root", [], admin=True)).get_specification()[0]["spec"]["options"]) == 5


def _rules(loaded):
    from atlaslab.core.membership import access_rules, default_environments

    return access_rules(loaded), default_environments(loaded)


# ---- worker specs ---------------------------------------------------------------------------------------------


def test_worker_resources_and_commands_follow_the_environment(loaded) -> None:
    envs, k = loaded.site.environments, loaded.site.kubernetes
    cpu = gateway.worker_config("cpu-small", envs["cpu-small"], k)
    assert cpu["worker_cmd"] == ["dask", "worker"] and "worker_extra_container_config" not in cpu
    assert cpu["environment"]["NVIDIA_VISIBLE_DEVICES"] == "none"
    assert (cpu["worker_cores"], cpu["worker_memory_limit"], cpu["worker_threads"]) == (1.0, 2 * GiB, 1)
    two = gateway.worker_config("gpu-two", envs["gpu-two"], k)
    assert two["worker_cmd"] == ["dask", "cuda", "worker"] and two["image"].endswith("user-gpu:0.1.0")
    assert two["worker_extra_container_config"]["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert two["worker_extra_pod_config"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert "NVIDIA_VISIBLE_DEVICES" not in two["environment"]
    mig = gateway.worker_config("gpu-slice", envs["gpu-slice"], k)
    assert mig["worker_extra_container_config"]["resources"]["requests"] == {"nvidia.com/mig-1g.10gb": "1"}
    assert mig["worker_extra_pod_config"]["nodeSelector"]["nvidia.com/gpu.product"] == "A100-SXM4-80GB"
    shared = gateway.worker_config("gpu-shared", envs["gpu-shared"], k)
    assert shared["worker_extra_container_config"]["resources"]["limits"] == {"nvidia.com/gpu.shared": "1"}
    assert shared["worker_cmd"] == ["dask", "cuda", "worker"]
    for key, env in envs.items():
        # Same resources as the environment's server pods (kube.py), only requests equal to limits.
        override = kube.environment_override(key, env, k)
        assert override.get("extra_resource_limits", {}) == gateway.worker_config(key, env, k).get(
            "worker_extra_container_config", {}
        ).get("resources", {}).get("limits", {})


# ---- budgets ------------------------------------------------------------------------------------------------


def test_max_workers_from_budget_and_concurrent_gpus(loaded, ledger) -> None:
    credits = loaded.site.credits
    scopes = Charge("rana", "rnd", ("vision",)).scopes()
    used(ledger, "rana/old", "rana", gpus=1, cpus=1, hours=9, scopes=scopes)  # 9 of 10 GPU-hours: 1 left
    ledger.open("rana/", "rana", "gpu-one", 4, 1, scopes)  # a server holding 1 GPU now (limit 2 at once)
    assert gateway.gpu_room(ledger, credits, Charge("rana", "rnd", ("vision",), "gpu-one", 1.0, 4.0)) == 1
    config = gateway.cluster_config(loaded, ledger, "rana", RANA, False, "gpu-one", NOW)
    assert config["cluster_max_workers"] == 1 and config["namespace"] == "lab-rnd"
    # The gateway's own arithmetic from cores and memory gives the same single worker.
    from dask_gateway_server.backends.kubernetes.backend import KubeClusterConfig

    assert KubeClusterConfig(**config).to_dict()["cluster_max_workers"] == 1
    cores, memory = config["cluster_max_cores"], config["cluster_max_memory"]
    assert (cores - gateway.SCHEDULER_CORES) // 4 == 1 and (memory - gateway.SCHEDULER_MEMORY) // (16 * GiB) == 1
    # Attack: a second cluster while the first one's worker runs gets nothing more (the ledger counts it).
    ledger.open(gateway.holder("rana", "lab-rnd.c1", "w1"), "rana", "gpu-one", 4, 1, scopes)
    with pytest.raises(gateway.Refused) as e:
        gateway.cluster_config(loaded, ledger, "rana", RANA, False, "gpu-one", NOW)
    spawn = credits_mod.spawn_refusal(ledger, credits, Charge("rana", "rnd", ("vision",), gpus=1.0), NOW)
    assert (
        str(e.value)
        == spawn
        == ("Your budget allows 2 GPU(s) at once and 2 are in use; stop another GPU server or start a CPU environment.")
    )
    # ... while a CPU cluster is still fine (GPU limits do not apply to it).
    assert gateway.cluster_config(loaded, ledger, "rana", RANA, False, "cpu-small", NOW)["cluster_max_workers"] >= 1


def test_hours_left_bound_the_workers_and_an_empty_budget_is_refused_with_the_spawn_words(loaded, ledger) -> None:
    credits = loaded.site.credits
    scopes = Charge("rana", "rnd", ("vision",)).scopes()
    # 1 GPU-hour left, no GPU held: two one-GPU workers for half an hour each, not more.
    used(ledger, "rana/old", "rana", gpus=1, cpus=1, hours=9, scopes=scopes)
    assert gateway.worker_limit(ledger, credits, Charge("rana", "rnd", ("vision",), "gpu-one", 1.0, 4.0), NOW) == 2
    # A two-GPU worker needs 1 GPU-hour for half an hour: one fits.
    assert gateway.worker_limit(ledger, credits, Charge("rana", "rnd", ("vision",), "gpu-two", 2.0, 8.0), NOW) == 1
    # 0.2 GPU-hours left: a server could start, a worker cannot; the message says why.
    used(ledger, "rana/old2", "rana", gpus=1, cpus=1, hours=0.8, scopes=scopes)
    with pytest.raises(gateway.Refused) as e:
        gateway.cluster_config(loaded, ledger, "rana", RANA, False, "gpu-one", NOW)
    assert str(e.value).startswith("No credit left in your own budget: 9.80 of 10 GPU-hours used this month")
    assert "one Dask worker needs 0.5 GPU-hours" in str(e.value)
    # Nothing left: exactly the spawn page's refusal.
    used(ledger, "rana/old3", "rana", gpus=1, cpus=1, hours=1, scopes=scopes)
    spawn = credits_mod.spawn_refusal(ledger, credits, Charge("rana", "rnd", ("vision",), gpus=1.0), NOW)
    assert spawn and spawn.startswith("No credit left in your own budget")
    with pytest.raises(gateway.Refused) as e:
        gateway.cluster_config(loaded, ledger, "rana", RANA, False, "gpu-one", NOW)
    assert str(e.value) == spawn
    # Attack: asking for more workers than the budget allows at scale time is capped by the backend's re-check.
    from atlaslab.compute.gateway_backends import AtlasLabKubeBackend

    fresh = UsageLedger(ledger.db.with_name("fresh.sqlite"), clock=lambda: NOW)
    used_fresh = gateway.cluster_config(loaded, fresh, "sara", SARA, False, "cpu-small", NOW)
    backend = AtlasLabKubeBackend(ledger_path=str(fresh.db))
    backend.cluster_options = gateway.ClusterOptions(loaded, lambda: fresh)
    assert backend.allowed_count(used_fresh, "lab-campus.c", 50) == gateway.DEFAULT_MAX_WORKERS


async def test_a_running_cluster_is_warned_then_stopped_after_the_grace_and_others_are_untouched(loaded, tmp_path):
    from atlaslab.compute.gateway_backends import AtlasLabKubeBackend

    box = SimpleNamespace(now=NOW)
    led = UsageLedger(tmp_path / "running.sqlite", clock=lambda: box.now)
    configs = {
        "lab-rnd.r1": gateway.cluster_config(loaded, led, "rana", RANA, False, "gpu-one", NOW),
        "lab-campus.s1": gateway.cluster_config(loaded, led, "sara", SARA, False, "gpu-shared", NOW),
    }
    for name, config in configs.items():
        charge = gateway.charge_of_cluster(config)
        assert charge is not None
        gateway.UsageRecorder(led).started(charge, name, "w1")
    stopped: list[str] = []

    def gateway_process() -> AtlasLabKubeBackend:
        backend = AtlasLabKubeBackend(ledger_path=str(led.db))
        backend.cluster_options = gateway.ClusterOptions(loaded, lambda: led)
        backend.clock = lambda: box.now

        async def stop_cluster(name: str, failed: bool = False) -> None:  # the CRD patch, without a Kubernetes
            stopped.append(name)

        backend.stop_cluster = stop_cluster  # type: ignore[method-assign]
        return backend

    backend = gateway_process()

    async def heartbeats() -> None:
        for name, config in configs.items():
            assert (await backend.capped_heartbeat(name, config, {"count": 1}) is None) == (name in stopped)

    # Rana's one-GPU worker spends her 10 GPU-hours a month; Sara's quarter GPU spends little of her 20.
    box.now = NOW + 8.2 * HOUR
    await heartbeats()
    assert [n["message"].split(":")[0] for n in led.notices("rana")] == ["80% of your own budget"]
    box.now = NOW + 10 * HOUR
    await heartbeats()
    [*_, stop] = led.notices("rana")
    assert stop["level"] == "stop" and "Your Dask clusters stop in 5 min 0 s" in stop["message"]
    box.now += 299
    await heartbeats()
    assert stopped == []
    # The gateway restarts during the grace: the stop is still due at the notice's time plus the grace.
    backend = gateway_process()
    box.now += 1
    await heartbeats()
    assert stopped == ["lab-rnd.r1"]
    assert led.notices("rana")[-1]["message"].startswith("Your Dask cluster lab-rnd.r1 was stopped: no credit left")
    assert led.notices("sara") == []


# ---- the worker pod dask-gateway-server builds ----------------------------------------------------------------


async def test_the_gateways_own_kubernetes_code_builds_valid_worker_pods(loaded, ledger, tmp_path) -> None:
    from dask_gateway_server.backends.kubernetes.controller import KubeController
    from dask_gateway_server.utils import FrozenAttrDict

    from atlaslab.compute.gateway_backends import AtlasLabKubeBackend

    backend = AtlasLabKubeBackend(cluster_options=gateway.ClusterOptions(loaded, lambda: ledger))
    controller = KubeController(gateway_instance="atlaslab", api_url="http://atlaslab-gateway.atlaslab.svc:8000/api")
    rana = SimpleNamespace(name="rana", groups=RANA, admin=False)
    for env, resource in (("gpu-two", "nvidia.com/gpu"), ("gpu-slice", "nvidia.com/mig-1g.10gb"), ("cpu-small", None)):
        _, config = await backend.process_cluster_options(rana, {"environment": env})
        spec = FrozenAttrDict(config.to_dict())
        assert spec.namespace == "lab-rnd"
        pod = controller.make_pod(spec.namespace, "abc123", spec, is_worker=True)
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
        [c] = pod["spec"]["containers"]
        if resource:
            assert c["args"][:3] == ["dask", "cuda", "worker"]
            count = "2" if env == "gpu-two" else "1"
            assert c["resources"]["limits"][resource] == c["resources"]["requests"][resource] == count
            assert pod["spec"]["nodeSelector"]["nvidia.com/gpu.present"] == "true"
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
        else:
            assert c["args"][:2] == ["dask", "worker"] and not any("nvidia" in r for r in c["resources"]["limits"])
        assert pod["metadata"]["annotations"]["atlaslab.io/user"] == "rana"
        assert pod["spec"]["automountServiceAccountToken"] is False
        scheduler = controller.make_pod(spec.namespace, "abc123", spec, is_worker=False)
        kubernetes_validate.validate(scheduler, K8S_VERSION, strict=True)
        sched_env = {e["name"]: e.get("value") for e in scheduler["spec"]["containers"][0]["env"]}
        assert sched_env["NVIDIA_VISIBLE_DEVICES"] == "none"
        assert not any("nvidia" in r for r in scheduler["spec"]["containers"][0]["resources"]["limits"])
    # A forbidden environment never reaches the controller: the gateway answers the refusal to the client.
    from dask_gateway_server.backends.base import PublicException

    sara = SimpleNamespace(name="sara", groups=SARA, admin=False)
    with pytest.raises(PublicException, match="may not start the environment 'gpu-slice'"):
        await backend.process_cluster_options(sara, {"environment": "gpu-slice"})


async def test_the_controller_counts_worker_pods_in_the_ledger(loaded, ledger) -> None:
    from dask_gateway_server.backends.kubernetes.controller import ClusterInfo
    from dask_gateway_server.utils import FrozenAttrDict
    from dask_gateway_server.workqueue import WorkQueue

    from atlaslab.compute.gateway_backends import AtlasLabKubeController

    controller = AtlasLabKubeController(gateway_instance="atlaslab", api_url="http://x/api", ledger_path=str(ledger.db))
    controller.cluster_info = collections.defaultdict(ClusterInfo)
    controller.stopped_clusters, controller.queue = {}, WorkQueue()
    from dask_gateway_server.backends.kubernetes.backend import KubeClusterConfig

    made = gateway.cluster_config(loaded, None, "rana", RANA, False, "gpu-one", NOW)
    config = FrozenAttrDict(KubeClusterConfig(**made).to_dict())
    pod = controller.make_pod("lab-rnd", "c1", config, is_worker=True)
    pod["metadata"].update(name="dask-worker-c1-xyz", namespace="lab-rnd")
    pod["status"] = {"phase": "Pending"}
    controller.on_pod_update(pod)  # not yet on a node: holds no GPU
    assert ledger.open_sessions() == []
    pod["spec"]["nodeName"] = "gpu-node-1"
    running = {"phase": "Running", "containerStatuses": [{"name": "dask-worker", "state": {"running": {}}}]}
    pod["status"] = running
    controller.on_pod_update(pod)
    controller.on_pod_update(pod)  # informers replay: still one session
    [s] = ledger.open_sessions()
    assert (s.holder, s.user, s.gpus, s.cpus) == ("rana/dask/lab-rnd.c1/dask-worker-c1-xyz", "rana", 1.0, 4.0)
    assert ledger.gpus_held(("team", "vision")) == 1.0 and ledger.gpus_held(("tenant", "rnd")) == 1.0
    controller.on_pod_delete(pod)
    assert ledger.open_sessions() == []
    # The controller's ledger keeps real time: the session is closed and charged to the user, tenant and team.
    charged = {(scope, name) for scope, name, _ in ledger.report(0, time.time() + HOUR)}
    assert charged == {("tenant", "rnd"), ("team", "vision"), ("user", "rana")}
    # Someone else's pod without AtlasLab's annotations is not counted (and not mistaken for one).
    del pod["metadata"]["annotations"]
    pod["metadata"]["name"] = "dask-worker-c1-other"
    controller.on_pod_update(pod)
    assert ledger.open_sessions() == []


# ---- configuring the gateway and the hub ------------------------------------------------------------------------


def test_gateway_and_hub_configuration(loaded, tmp_path) -> None:
    from traitlets.config import Config

    c = Config()
    gateway.configure_gateway(c, loaded, env={"ATLASLAB_STATE_DIR": str(tmp_path / "state")})
    assert c.DaskGateway.authenticator_class == "dask_gateway_server.auth.JupyterHubAuthenticator"
    assert c.DaskGateway.backend_class == "atlaslab.compute.gateway_backends.AtlasLabKubeBackend"
    # The service name turns on dask-gateway's check that the token may access this service.
    assert c.JupyterHubAuthenticator.jupyterhub_service_name == "dask-gateway"
    assert c.KubeController.ledger_path == str(tmp_path / "state" / "compute" / "usage.sqlite")
    # The API server reads the ledger too: it re-checks scale requests and stops clusters whose budget is spent.
    assert c.KubeBackend.ledger_path == c.KubeController.ledger_path
    part = gateway_part("tok", "http://atlaslab-gateway.ns.svc:8000", "gateway://traefik.ns.svc:8786")
    assert part == gateway_part("tok", "http://atlaslab-gateway.ns.svc:8000", "gateway://traefik.ns.svc:8786")
    assert [s["name"] for s in part.services] == ["dask-gateway"] and part.services[0]["api_token"] == "tok"
    assert part.user_scopes == ("access:services!service=dask-gateway",)
    assert "access:services!service=dask-gateway" in merge([part]).server_scopes
    assert part.server_env["DASK_GATEWAY__ADDRESS"] == "http://atlaslab-gateway.ns.svc:8000"
    # In the hub pod: only when the chart generated the gateway's token (gateway.enabled).
    from atlaslab.hub import incluster

    for token in ("", "t0k"):
        parts = incluster.gateway(
            incluster.Cluster("atlaslab", "10.0.0.5", "http://proxy"), {"ATLASLAB_GATEWAY_TOKEN": token}
        )
        assert [s["name"] for p in parts for s in p.services] == (["dask-gateway"] if token else [])


def test_cluster_scale_uses_the_gateway_only_where_one_is_configured(monkeypatch) -> None:
    assert gateway_options({}) is None
    env = {"DASK_GATEWAY__ADDRESS": "http://proxy/services/dask-gateway", "ATLASLAB_ENVIRONMENT": "gpu-one"}
    assert gateway_options(env) == {"environment": "gpu-one"}
    monkeypatch.delenv("DASK_GATEWAY__ADDRESS", raising=False)
    with pytest.raises(RuntimeError, match="No Dask Gateway here"):
        cluster(scale=2)


# ---- the chart ----------------------------------------------------------------------------------------------------


def test_the_chart_renders_the_gateway_when_enabled(tmp_path) -> None:
    chart = chart_without_dependency(tmp_path)
    site = yaml.safe_load(SITE.replace("STATE", "/srv/x"))
    del site["site"]
    off = tmp_path / "off.yaml"
    off.write_text(yaml.safe_dump({"jupyterhub": {"enabled": False}, "atlaslab": site}))
    assert not [o for o in render(chart, off, lint=False) if "gateway" in o["metadata"]["name"]]
    on = tmp_path / "on.yaml"
    on.write_text(yaml.safe_dump({"jupyterhub": {"enabled": False}, "atlaslab": site, "gateway": {"enabled": True}}))
    objects = render(chart, on)
    deployments = by_kind(objects, "Deployment")
    dep = deployments[("", "atlaslab-gateway")]["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in dep["containers"]}
    assert containers["api"]["command"][:1] == ["dask-gateway-server"]
    assert "atlaslab.compute.gateway_backends" in " ".join(containers["controller"]["command"])
    api_env = {e["name"]: e for e in containers["api"]["env"]}
    assert api_env["JUPYTERHUB_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "atlaslab-service-tokens",
        "key": "dask-gateway",
    }
    assert api_env["JUPYTERHUB_SERVICE_NAME"]["value"] == "dask-gateway"
    assert ("", "atlaslab-gateway") in by_kind(objects, "Service")
    [crd] = by_kind(objects, "CustomResourceDefinition").values()
    assert crd["spec"]["group"] == "gateway.dask.org" and crd["spec"]["names"]["plural"] == "daskclusters"
    tokens = by_kind(objects, "Secret")[("", "atlaslab-service-tokens")]
    assert "dask-gateway" in tokens["data"]
    # The gateway's service account may manage pods only in the users' namespaces (Roles there, not cluster-wide).
    bindings = by_kind(objects, "RoleBinding")
    assert {ns for ns, name in bindings if name == "atlaslab-gateway"} == {"lab-rnd", "lab-campus", "lab-users"}
    cluster_roles = by_kind(objects, "ClusterRole")
    [gw_role] = [r for (_, name), r in cluster_roles.items() if name == "atlaslab-gateway"]
    assert not any("pods" in rule["resources"] and "create" in rule["verbs"] for rule in gw_role["rules"])
    # Dask pods in the tenants' namespaces reach the gateway API; users' pods reach the gateway's proxy.
    policies = by_kind(objects, "NetworkPolicy")
    assert ("lab-rnd", "atlaslab-dask") in policies


# ---- end to end on 127.0.0.1 ------------------------------------------------------------------------------------

E2E_PASSWORD = "gateway-workshop-password"


def e2e_site(alice: str, bob: str, broke: str, carol: str) -> dict:
    return {
        "login": [{"provider": "shared-password", "password": {"env": "ATLASLAB_TEST_GATEWAY_PASSWORD"}}],
        "tenants": {
            "campus": {"title": "Campus", "environments": ["cpu-small"], "members": [alice, bob, broke, carol]}
        },
        "environments": {
            "cpu-small": {"title": "CPU small", "cpu": 1, "memory": "1G", "default": True},
            "cpu-big": {"title": "CPU big", "cpu": 2, "memory": "2G"},
        },
        # Alice's budget pays one 1-CPU worker for half an hour: one worker, whatever she asks.
        # Carol's is spent while her cluster runs; 2 s of grace before it stops.
        "credits": {
            "users": {alice: {"cpu_hours": 0.6}, broke: {"cpu_hours": 1}, carol: {"cpu_hours": 1}},
            "default_user": {"cpu_hours": 5},
            "grace": "2s",
        },
        "services": {"idle_culler": False, "metrics": False},
    }


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gateway")
    names = SimpleNamespace(alice=unique("ga-"), bob=unique("gb-"), broke=unique("gz-"), carol=unique("gc-"))
    os.environ["ATLASLAB_TEST_GATEWAY_PASSWORD"] = E2E_PASSWORD
    wb = Workbench(write_site(directory, e2e_site(names.alice, names.bob, names.broke, names.carol))).start()
    ledger_db = wb.state / "compute" / "usage.sqlite"
    spend(ledger_db, names.broke, 1000)  # of their 1 this month
    api, http_port, tcp_port = free_port(), free_port(), free_port()
    config = directory / "gateway_config.py"
    config.write_text(
        textwrap.dedent(f"""
        from atlaslab.compute.gateway import configure_gateway
        from atlaslab.config import load
        configure_gateway(c, load({str(wb.config)!r}, check_secrets=False),
                          env={{"ATLASLAB_STATE_DIR": {str(wb.state)!r}}}, backend="local")
        # Workers run as this account (root here, no per-user accounts): tests only.
        c.DaskGateway.backend_class = "atlaslab.compute.gateway_backends.AtlasLabUnsafeLocalBackend"
        c.DaskGateway.address = "127.0.0.1:{api}"
        c.Proxy.address = "127.0.0.1:{http_port}"
        c.Proxy.tcp_address = "127.0.0.1:{tcp_port}"
        c.JupyterHubAuthenticator.jupyterhub_api_url = {wb.api!r}
        c.JupyterHubAuthenticator.jupyterhub_api_token = "unused-for-user-lookups"
        # The hub of `atlaslab up` does not register this service (the chart's hub does), so no user token has
        # its access scope: checked by identity only here.
        c.JupyterHubAuthenticator.use_service_access_scopes = False
        c.LocalBackend.clusters_directory = {str(directory / "clusters")!r}
        c.LocalBackend.cluster_heartbeat_period = 2
        c.LocalBackend.worker_status_period = 1
        """)
    )
    log = open(directory / "gateway.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "dask_gateway_server", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=directory,
    )
    address = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{address}/api/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, (directory / "gateway.log").read_text()
        time.sleep(0.2)
    tokens = {n: logged_in(wb, n, E2E_PASSWORD).token() for n in vars(names).values()}
    yield SimpleNamespace(
        wb=wb, names=names, tokens=tokens, address=address, proxy=f"gateway://127.0.0.1:{tcp_port}", ledger=ledger_db
    )
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    wb.stop()
    print((directory / "gateway.log").read_text()[-3000:])


def spend(db, name: str, cpu_hours: float) -> None:
    """A finished session of ``cpu_hours`` CPU-hours, ending now (10 s of many CPUs: within this month)."""
    past = SimpleNamespace(now=time.time() - 10)
    ledger = UsageLedger(db, clock=lambda: past.now)
    holder = f"{name}/spent-{past.now}"
    ledger.open(holder, name, "cpu-big", cpu_hours * 360, 0, [("tenant", "campus")])
    past.now += 10
    ledger.close(holder)


def wait_for(what: str, done, timeout: float = 45):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := done():
            return result
        time.sleep(0.3)
    raise TimeoutError(what)


def client_of(e2e, name: str):
    from dask_gateway import Gateway, JupyterHubAuth

    return Gateway(address=e2e.address, proxy_address=e2e.proxy, auth=JupyterHubAuth(api_token=e2e.tokens[name]))


def test_end_to_end_a_users_cluster_computes_and_its_worker_is_counted(e2e) -> None:
    alice, bob, broke = e2e.names.alice, e2e.names.bob, e2e.names.broke
    gw = client_of(e2e, alice)
    assert gw.cluster_options()["environment"] == "cpu-small"
    # Attack: an environment her groups do not grant.
    with pytest.raises(ValueError, match="may not start the environment 'cpu-big'"):
        gw.new_cluster(environment="cpu-big")
    # dask-gateway's half-made cluster object closes itself on its client's loop when collected; collected later,
    # inside a Dask client's start on that loop, it would deadlock it (a client-side quirk, not the gateway's).
    gc.collect()
    remote = gw.new_cluster(environment="cpu-small")
    try:
        # Attack: more workers than her budget pays for.
        remote.scale(3)
        client = remote.get_client()
        try:
            assert client.submit(lambda x: x + 1, 41).result(timeout=45) == 42
            time.sleep(3)  # room for any extra worker to (wrongly) start
            assert len(client.scheduler_info()["workers"]) == 1
        finally:
            client.close()
        ledger = UsageLedger(e2e.ledger)
        mine = [s for s in ledger.open_sessions() if s.user == alice]
        assert len(mine) == 1 and mine[0].holder.startswith(f"{alice}/dask/{remote.name}/")
        # Attack: another user's token can neither see nor reach nor scale it.
        other = client_of(e2e, bob)
        assert [c.name for c in other.list_clusters()] == []
        with pytest.raises(Exception, match=r"403|404|lacks permissions|not found"):
            other.connect(remote.name)
        r = httpx.post(
            f"{e2e.address}/api/v1/clusters/{remote.name}/scale",
            json={"count": 2},
            headers={"Authorization": f"jupyterhub {e2e.tokens[bob]}"},
        )
        assert r.status_code in (403, 404), r.text
        r = httpx.delete(
            f"{e2e.address}/api/v1/clusters/{remote.name}",
            headers={"Authorization": f"jupyterhub {e2e.tokens[bob]}"},
        )
        assert r.status_code in (403, 404), r.text
        # A made-up token is not anybody (the hub answers 403; dask-gateway reports that as its own failure, 500).
        nobody = httpx.get(f"{e2e.address}/api/v1/clusters/", headers={"Authorization": "jupyterhub nope"})
        assert nobody.status_code in (401, 403, 500) and remote.name not in nobody.text
    finally:
        remote.shutdown()
    deadline = time.monotonic() + 20
    while [s for s in UsageLedger(e2e.ledger).open_sessions() if s.user == alice] and time.monotonic() < deadline:
        time.sleep(0.2)
    ledger = UsageLedger(e2e.ledger)
    assert not [s for s in ledger.open_sessions() if s.user == alice]
    report = {(scope, name): u.cpu_hours for scope, name, u in ledger.report(time.time() - 600, time.time())}
    assert report[("user", alice)] > 0 and report[("tenant", "campus")] >= report[("user", alice)]
    # Broke's budget is spent: refused with the words the spawn page uses.
    loaded = parse(e2e.wb.config.read_text(), source=e2e.wb.config, check_secrets=False)
    spawn = credits_mod.spawn_refusal(ledger, loaded.site.credits, Charge(broke, "campus"), time.time())
    assert spawn and spawn.startswith("No credit left in your own budget")
    with pytest.raises(ValueError) as e:
        client_of(e2e, broke).new_cluster(environment="cpu-small")
    assert spawn.split(";")[0] in str(e.value)
    gc.collect()


def test_end_to_end_a_spent_budget_warns_then_stops_the_users_running_cluster_only(e2e) -> None:
    carol, bob = e2e.names.carol, e2e.names.bob

    def workers(name: str) -> list[str]:
        return [s.holder for s in UsageLedger(e2e.ledger).open_sessions() if s.user == name]

    def levels() -> list[str]:
        return [n["level"] for n in UsageLedger(e2e.ledger).notices(carol)]

    gc.collect()
    gw_carol, gw_bob = client_of(e2e, carol), client_of(e2e, bob)
    mine, theirs = gw_carol.new_cluster(), gw_bob.new_cluster()
    try:
        mine.scale(1)
        theirs.scale(1)
        wait_for("both workers counted", lambda: workers(carol) and workers(bob))
        # 85% of Carol's CPU-hours: the next heartbeat warns her, and the cluster keeps running.
        spend(e2e.ledger, carol, 0.85)
        wait_for("the 80% warning", lambda: levels() == ["warning"])
        assert mine.name in [c.name for c in gw_carol.list_clusters()]
        # Spent: a stop notice, and 2 s later the cluster and its worker stop.
        spend(e2e.ledger, carol, 0.2)
        wait_for("the stop notice", lambda: "stop" in levels())
        wait_for("Carol's cluster stopped", lambda: not workers(carol) and not gw_carol.list_clusters())
        assert levels() == ["warning", "stop", "stopped"]
        # The session sees them in the credits service, as it sees its servers'.
        r = httpx.get(
            f"{e2e.wb.url}/services/credits/api/v1/me", headers={"Authorization": f"token {e2e.tokens[carol]}"}
        )
        notices = r.json()["notices"]
        assert "Your Dask clusters stop in 0 min 2 s" in notices[1]["message"]
        assert notices[2]["message"].startswith(f"Your Dask cluster {mine.name} was stopped: no credit left")
        # Bob's cluster, on another budget, runs on with its worker.
        assert [c.name for c in gw_bob.list_clusters()] == [theirs.name] and workers(bob)
        assert UsageLedger(e2e.ledger).notices(bob) == []
    finally:
        theirs.shutdown()
        mine.close()
        gw_carol.close()
        gw_bob.close()
    gc.collect()
