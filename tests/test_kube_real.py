"""The chart and the hub's Kubernetes side against a real API server (tests/realkube.py: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, KWOK nodes with GPUs and MIG slices; one per test session).

Installed for real: helm/atlaslab with Zero to JupyterHub 4.3.1 and the GPU/MIG values, every object admitted;
the hub's config as the hub pod computes it (z2jh's own jupyterhub_config.py from the installed ConfigMap and
Secret, then AtlasLab's extraConfig) drives a real KubeSpawner with the hub's service-account token (RBAC as
installed, no admin credentials); servers run in their tenant's namespace on the right KWOK node, evict
placeholders, and a GPU server over the tenant's quota is refused with the reason. Then helm upgrade with a new
site config, and helm uninstall. No container runs: KWOK marks pods Running; NetworkPolicies are admitted but
nothing enforces them (docs/kubernetes.md says what this covers and what only a real cluster shows)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import yaml
from kube_real_support import (
    NAMESPACE,
    Helm,
    api_path,
    can,
    container_env,
    control_plane,
    ensure_namespace,
    full_chart,
    gone,
    hub_pod_files,
    pods,
    release_storage,
    relocate_mounts,
    running_pods,
    service_account_token,
    storage,
    with_here,
    write_values,
)
from kube_support import CHART, hub_user
from realkube import ApiError, ControlPlane, Kube

RELEASE = "atlaslab"
PREFIX = "lab-"  # the GPU/MIG values' kubernetes.namespace_prefix


@pytest.fixture(scope="session")
def plane(tmp_path_factory) -> ControlPlane:
    t0 = time.monotonic()
    plane, started = control_plane(tmp_path_factory.mktemp("control-plane"))
    print(f"[control plane] {'started' if started else 'reused'} in {time.monotonic() - t0:.1f} s", flush=True)
    yield plane
    if started:
        plane.stop()


@pytest.fixture(scope="module")
def admin(plane: ControlPlane) -> Kube:
    return plane.admin()


@pytest.fixture(scope="module")
def helm(plane: ControlPlane, tmp_path_factory) -> Helm:
    return Helm(plane, tmp_path_factory.mktemp("helm-home"))


def leftover(helm: Helm, admin: Kube, release: str, namespace: str) -> None:
    """A release an interrupted session left on a reused control plane goes first."""
    if helm("status", release, "-n", namespace, ok=False).returncode == 0:
        helm("uninstall", release, "-n", namespace, "--wait", "--timeout", "120s", ok=False)
        release_storage(admin)


@pytest.fixture(scope="module")
def release(plane: ControlPlane, admin: Kube, helm: Helm, tmp_path_factory) -> SimpleNamespace:
    """The chart with the GPU/MIG values, installed (`helm install --wait`)."""
    tmp = tmp_path_factory.mktemp("gpu-release")
    chart = full_chart(tmp)
    storage(admin, 12, plane.run / "volumes")
    ensure_namespace(admin, NAMESPACE)
    # What an operator creates before installing with tracking (docs/kubernetes.md, step 4).
    admin.apply(f"/api/v1/namespaces/{NAMESPACE}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "atlaslab-mlflow"},
        "stringData": {"database-url": "postgresql://mlflow:secret@postgres.example:5432/mlflow"},
    })  # fmt: skip
    values = with_here(yaml.safe_load((CHART / "ci" / "gpu-mig-values.yaml").read_text()))
    path = write_values(tmp / "values.yaml", values)
    leftover(helm, admin, RELEASE, NAMESPACE)
    helm("install", RELEASE, str(chart), "-n", NAMESPACE, "-f", str(path), "--wait", "--timeout", "240s")
    yield SimpleNamespace(chart=chart, values=values, path=path, tmp=tmp)
    if helm("status", RELEASE, "-n", NAMESPACE, ok=False).returncode == 0:
        helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "120s", ok=False)
    release_storage(admin)
    print(f"[helm] seconds: {helm.seconds}", flush=True)


def test_every_object_of_the_chart_is_admitted_and_running(release, admin: Kube, helm: Helm) -> None:
    manifest = helm.manifest(RELEASE)
    kinds = {o["kind"] for o in manifest}
    # Zero to JupyterHub's objects and AtlasLab's own, all in one release.
    assert {"Deployment", "Service", "ConfigMap", "Secret", "ServiceAccount", "Role", "RoleBinding", "ClusterRole",
            "ClusterRoleBinding", "Namespace", "ResourceQuota", "LimitRange", "NetworkPolicy", "PriorityClass",
            "CronJob", "PersistentVolumeClaim", "DaemonSet"} <= kinds, kinds  # fmt: skip
    for obj in manifest:
        assert admin.get(api_path(admin, obj), ok404=True) is not None, (obj["kind"], obj["metadata"]["name"])
    deployments = {
        d["metadata"]["name"]: d for d in admin.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments")["items"]
    }
    for name in ("hub", "proxy", "atlaslab-exchange", "atlaslab-mlflow"):
        status = deployments[name]["status"]
        assert status.get("availableReplicas") == deployments[name]["spec"]["replicas"], (name, status)
    claims = admin.get(f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims")["items"]
    assert {c["metadata"]["name"]: c["status"]["phase"] for c in claims} == {
        "hub-db-dir": "Bound",
        "atlaslab-exchange": "Bound",
    }
    # The quota the site asks for, as the API server computes it (status.hard is set by the quota controller).
    quota = admin.get(f"/api/v1/namespaces/{PREFIX}rnd/resourcequotas/atlaslab-gpus")
    assert quota["status"]["hard"]["requests.nvidia.com/gpu"] == "2"
    assert quota["status"]["hard"]["requests.nvidia.com/mig-1g.10gb"] == "2"
    for ns in (f"{PREFIX}rnd", f"{PREFIX}campus", f"{PREFIX}users"):
        policies = admin.get(f"/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies")["items"]
        assert "atlaslab-users" in {p["metadata"]["name"] for p in policies}, ns


def test_placeholders_hold_room_on_their_environments_nodes(release, admin: Kube) -> None:
    where = {"cpu-small": "students-0", "gpu-shared": "gpu-shared-0", "gpu-slice": "gpu-a100-0"}
    wanted = release.values["placeholders"]["replicas"]
    for env, node in where.items():
        selector = f"app.kubernetes.io/component=placeholder,atlaslab.io/environment={env}"
        found = admin.wait(f"{wanted[env]} placeholder(s) of {env} running",
                           lambda s=selector, n=wanted[env]: (r := running_pods(admin, NAMESPACE, s)) and len(r) == n
                           and r)  # fmt: skip
        assert {p["spec"]["nodeName"] for p in found} == {node}, env
        assert {p["spec"]["priority"] for p in found} == {-10}


def test_the_hubs_service_account_may_do_what_the_hub_needs_and_no_more(release, plane: ControlPlane,
                                                                         admin: Kube) -> None:  # fmt: skip
    hub = plane.as_token(service_account_token(admin, NAMESPACE, "hub"))
    for ns in (f"{PREFIX}rnd", f"{PREFIX}campus", f"{PREFIX}users"):
        for verb in ("create", "delete", "get"):
            assert can(hub, verb, "pods", ns), (verb, ns)
        assert can(hub, "create", "persistentvolumeclaims", ns)
        assert can(hub, "get", "resourcequotas", ns)
        assert not can(hub, "update", "resourcequotas", ns)
    # KubeSpawner watches pods and events of every namespace (it serves several) and may create its namespace.
    assert can(hub, "watch", "pods") and can(hub, "list", "events") and can(hub, "create", "namespaces")
    for verb, resource, ns in [("create", "pods", "kube-system"), ("get", "secrets", "kube-system"),
                               ("delete", "namespaces", ""), ("create", "clusterrolebindings", ""),
                               ("get", "secrets", f"{PREFIX}rnd-other")]:  # fmt: skip
        group = "rbac.authorization.k8s.io" if resource == "clusterrolebindings" else ""
        assert not can(hub, verb, resource, ns, group=group), (verb, resource, ns)
    # The refusal is the API server's own, not only the review's.
    with pytest.raises(ApiError) as refused:
        hub.get("/api/v1/namespaces/kube-system/secrets")
    assert refused.value.status == 403


def test_placeholder_schedules_scale_with_their_own_account(release, plane: ControlPlane, admin: Kube) -> None:
    """What each CronJob's pod runs (its image's kubectl, its arguments), with its service account's token."""
    beside = Path(sys.executable).parents[2] / "bin" / "kubectl"
    kubectl = str(beside) if beside.exists() else shutil.which("kubectl")
    assert kubectl, "no kubectl: run scripts/install.sh --test (it installs one into PREFIX/bin)"
    crons = admin.get(f"/apis/batch/v1/namespaces/{NAMESPACE}/cronjobs")["items"]
    jobs = {c["metadata"]["name"]: c["spec"]["jobTemplate"]["spec"]["template"]["spec"] for c in crons}
    selector = "app.kubernetes.io/component=placeholder,atlaslab.io/environment=gpu-shared"
    for name, count in (("placeholder-gpu-shared-0-up", 8), ("placeholder-gpu-shared-0-down", 1)):
        job = jobs[name]
        token = service_account_token(admin, NAMESPACE, job["serviceAccountName"])
        [container] = job["containers"]
        r = subprocess.run(
            [kubectl, *container["args"], "--kubeconfig", "/dev/null", "--server", plane.server, "--token", token,
             "--certificate-authority", str(plane.pki / "ca.crt"), "-n", NAMESPACE],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0, f"{name}: {r.stdout}{r.stderr}"
        # The shared-GPU node has 8 seats: all 8 placeholders fit, then one stays.
        admin.wait(f"{count} gpu-shared placeholders after {name}",
                   lambda n=count: len(running_pods(admin, NAMESPACE, selector)) == n
                   and len(pods(admin, NAMESPACE, selector)) == n)  # fmt: skip


# --- the hub's KubeSpawner, configured as in the hub pod ---------------------------------------------------------


@pytest.fixture(scope="module")
def hub_config(release, plane: ControlPlane, admin: Kube, tmp_path_factory):
    """The hub pod's config: z2jh's jupyterhub_config.py and values from the installed ConfigMap and Secret, its
    environment as the kubelet resolves it, AtlasLab's extraConfig; Kubernetes reached with the `hub` service
    account's token. Yields (config, environment)."""
    from kubernetes_asyncio.config import kube_config
    from kubespawner import clients
    from traitlets.config.loader import PyFileConfigLoader

    tmp = tmp_path_factory.mktemp("hub-pod")
    [pod] = running_pods(admin, NAMESPACE, "component=hub")
    files = hub_pod_files(admin, pod, tmp / "root")
    config_dir = files["/usr/local/etc/jupyterhub/config/"].parent
    relocate_mounts(tmp / "root", config_dir)
    [container] = [c for c in pod["spec"]["containers"] if c["name"] == "hub"]
    env = container_env(admin, pod, container)
    assert env["ATLASLAB_POD_IP"] == pod["status"]["podIP"] and env["ATLASLAB_POD_IP"].startswith(
        f"127.{plane.pod_net}.0."
    )
    # The hub's volume (/srv/jupyterhub) is a directory of this test's; the site is where the pod mounts it.
    env["ATLASLAB_STATE_DIR"] = str(tmp / "srv" / "atlaslab")
    env["ATLASLAB_SITE_DIR"] = str(files["/etc/atlaslab"])
    token_kubeconfig = plane.token_kubeconfig(
        service_account_token(admin, NAMESPACE, "hub", pod), tmp / "hub.kubeconfig"
    )
    patch = pytest.MonkeyPatch()
    for name, value in env.items():
        patch.setenv(name, value)
    # KubeSpawner tries the in-cluster config first (no token file here), then this kubeconfig: the hub's token.
    patch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(token_kubeconfig))
    clients.load_config.cache_clear()
    saved_path = list(sys.path)
    try:
        c = PyFileConfigLoader("jupyterhub_config.py", path=str(config_dir)).load_config()
        yield c, env
    finally:
        sys.path[:] = saved_path
        sys.modules.pop("z2jh", None)
        clients.load_config.cache_clear()
        patch.undo()


def spawner_for(c, name: str, groups: list[str], profile: str):
    from kubespawner import KubeSpawner

    spawner = KubeSpawner(_mock=True, config=c, user=hub_user(name, groups))
    spawner.api_token = f"token-of-{name}"
    spawner.user_options = {"profile": profile}
    return spawner


async def start(spawner) -> str:
    await spawner.load_user_options()
    await spawner.run_pre_spawn_hook()
    return await spawner.start()


async def stop_all(spawners) -> None:
    for s in spawners:
        await s.stop(now=True)


def notebook(pod: dict) -> dict:
    [c] = [c for c in pod["spec"]["containers"] if c["name"] == "notebook"]
    return c


async def test_kubespawner_starts_servers_in_the_tenants_namespace_on_the_right_nodes(hub_config, admin: Kube) -> None:
    from kubespawner import KubeSpawner

    c, env = hub_config
    # z2jh's config ran, then AtlasLab's: z2jh's networking kept, AtlasLab's spawner settings on top.
    assert c.JupyterHub.hub_connect_url == f"http://hub:{env['HUB_SERVICE_PORT']}"
    assert c.KubeSpawner.enable_user_namespaces is True and c.KubeSpawner.namespace == NAMESPACE
    started = []
    try:
        # R&D user on a MIG slice: the A100's only slice is held by a placeholder, which the server evicts.
        rania = spawner_for(c, "rania", ["tenant:rnd"], "gpu-slice")
        url = await start(rania)
        started.append(rania)
        pod = admin.get(f"/api/v1/namespaces/{PREFIX}rnd/pods/{rania.pod_name}")
        assert pod["status"]["phase"] == "Running" and pod["spec"]["nodeName"] == "gpu-a100-0"
        assert url == f"http://{pod['status']['podIP']}:8888"
        limits = notebook(pod)["resources"]["limits"]
        assert limits["nvidia.com/mig-1g.10gb"] == "1" and "nvidia.com/gpu" not in limits
        assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true",
                                               "nvidia.com/gpu.product": "A100-SXM4-80GB"}  # fmt: skip
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert pod["metadata"]["labels"]["hub.jupyter.org/network-access-hub"] == "true"
        placeholder = "app.kubernetes.io/component=placeholder,atlaslab.io/environment=gpu-slice"

        def evicted() -> bool:
            # Its replacement waits: the node has no slice left until the server stops.
            found = pods(admin, NAMESPACE, placeholder)
            return bool(found) and all(p["status"].get("phase") == "Pending" for p in found)

        admin.wait("the gpu-slice placeholder evicted and pending", evicted)
        # A student on the shared GPUs, in the campus namespace.
        nadia = spawner_for(c, "nadia", ["tenant:campus"], "gpu-shared")
        await start(nadia)
        started.append(nadia)
        pod = admin.get(f"/api/v1/namespaces/{PREFIX}campus/pods/{nadia.pod_name}")
        assert pod["spec"]["nodeName"] == "gpu-shared-0" and pod["status"]["phase"] == "Running"
        assert notebook(pod)["resources"]["limits"]["nvidia.com/gpu.shared"] == "1"
        # A CPU server on the student pool (its node selector and toleration), no GPU visible.
        omar = spawner_for(c, "omar", ["tenant:campus"], "cpu-small")
        await start(omar)
        started.append(omar)
        pod = admin.get(f"/api/v1/namespaces/{PREFIX}campus/pods/{omar.pod_name}")
        assert pod["spec"]["nodeName"] == "students-0"
        assert {e["name"]: e.get("value") for e in notebook(pod)["env"]}["NVIDIA_VISIBLE_DEVICES"] == "none"
        # Its home volume, claimed in the tenant's namespace.
        claim = admin.get(f"/api/v1/namespaces/{PREFIX}campus/persistentvolumeclaims/{omar.pvc_name}")
        assert claim["metadata"]["name"] == "home-omar"
        await stop_all(started)
        for s in started:
            admin.wait(
                f"{s.pod_name} gone", lambda s=s: gone(admin, f"/api/v1/namespaces/{s.namespace}/pods/{s.pod_name}")
            )
        started.clear()
        # The placeholder gets its slice back.
        admin.wait("the gpu-slice placeholder running again", lambda: running_pods(admin, NAMESPACE, placeholder))
    finally:
        await stop_all(started)
        for reflector in list(KubeSpawner.reflectors.values()):
            await reflector.stop()
        KubeSpawner.reflectors.clear()


async def test_a_gpu_server_over_the_tenants_quota_is_refused_with_the_reason(hub_config, admin: Kube,
                                                                              plane: ControlPlane) -> None:  # fmt: skip
    from kubespawner import KubeSpawner
    from tornado import web

    c, _ = hub_config
    started = []
    try:
        first = spawner_for(c, "rayan", ["tenant:rnd"], "gpu-two")
        await start(first)
        started.append(first)
        pod = admin.get(f"/api/v1/namespaces/{PREFIX}rnd/pods/{first.pod_name}")
        assert notebook(pod)["resources"]["limits"]["nvidia.com/gpu"] == "2" and pod["spec"]["nodeName"] == "gpu-a100-0"
        quota = admin.get(f"/api/v1/namespaces/{PREFIX}rnd/resourcequotas/atlaslab-gpus")
        assert quota["status"]["used"]["requests.nvidia.com/gpu"] == "2"
        # Through the hub: refused before any pod, saying why.
        second = spawner_for(c, "salma", ["tenant:rnd"], "gpu-two")
        await second.load_user_options()
        with pytest.raises(web.HTTPError) as told:
            await second.run_pre_spawn_hook()
        assert told.value.status_code == 403
        assert "All 2 nvidia.com/gpu of tenant rnd are in use (2 taken)" in told.value.log_message
        # The same pod made by hand with the hub's token: the API server's quota admission refuses it.
        manifest = await second.get_pod_manifest()
        body = second.api.api_client.sanitize_for_serialization(manifest)
        hub = plane.as_token(service_account_token(admin, NAMESPACE, "hub"))
        with pytest.raises(ApiError) as refused:
            hub.create(f"/api/v1/namespaces/{PREFIX}rnd/pods", body)
        assert refused.value.status == 403
        assert "exceeded quota: atlaslab-gpus" in str(refused.value), refused.value
        assert "requests.nvidia.com/gpu=2" in str(refused.value)
        # A hand-made pod larger than the tenant's largest environment: the LimitRange refuses it.
        big = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "too-big"},
               "spec": {"containers": [{"name": "x", "image": "x",
                                        "resources": {"limits": {"cpu": "64", "memory": "8Gi"}}}]}}  # fmt: skip
        with pytest.raises(ApiError) as refused:
            hub.create(f"/api/v1/namespaces/{PREFIX}campus/pods", big)
        assert refused.value.status == 403
        assert "maximum cpu usage per Container is 2, but limit is 64" in str(refused.value), refused.value
    finally:
        await stop_all(started)
        for reflector in list(KubeSpawner.reflectors.values()):
            await reflector.stop()
        KubeSpawner.reflectors.clear()


# --- the hub process itself, on this machine ----------------------------------------------------------------------

HOST_CONFIG = """
# (appended by tests/test_kube_real.py, after z2jh's config and AtlasLab's extraConfig)
# The hub pod's network on this machine: no container runtime, so the hub and proxy "pods" are processes here,
# listening on the addresses KWOK gave their pods (loopback). Everything else is the pod's own config.
c.JupyterHub.hub_bind_url = "http://{hub}:8081"
c.JupyterHub.hub_connect_url = "http://{hub}:8081"
c.ConfigurableHTTPProxy.api_url = "http://{proxy}:8001"
# Hub-managed services (credits, autograder, formgraders, idle culler) would run as processes of this machine,
# not of the hub pod: registered, not started here (test_kube_incluster.py checks their addresses).
for s in c.JupyterHub.services:
    s.pop("command", None)
c.JupyterHub.services.append({{"name": "test-admin", "api_token": "{token}"}})
c.JupyterHub.load_roles = [*c.JupyterHub.load_roles, {{"name": "test-admin", "services": ["test-admin"],
    "scopes": ["admin:users", "admin:servers", "admin:groups", "read:users"]}}]
"""


def serve_http(address: str, port: int) -> object:
    """What a started user container would do first: answer HTTP on its pod address."""
    import http.server
    import threading

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer((address, port), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def spawn_failure(api: httpx.Client, name: str) -> str:
    """The message of a failed spawn as the user's spawn page reads it (the hub's progress event stream)."""
    with api.stream("GET", f"/users/{name}/server/progress") as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data:"):
                event = json.loads(line.removeprefix("data:"))
                if event.get("failed") or event.get("ready"):
                    return event.get("message", "")
    raise AssertionError(f"no end to {name}'s spawn in its progress stream")


def test_the_hub_process_spawns_with_its_service_account_token(release, plane: ControlPlane, admin: Kube,
                                                                tmp_path) -> None:  # fmt: skip
    [pod] = running_pods(admin, NAMESPACE, "component=hub")
    [proxy_pod] = running_pods(admin, NAMESPACE, "component=proxy")
    hub_ip, proxy_ip = pod["status"]["podIP"], proxy_pod["status"]["podIP"]
    files = hub_pod_files(admin, pod, tmp_path / "root")
    config_dir = files["/usr/local/etc/jupyterhub/config/"].parent
    relocate_mounts(tmp_path / "root", config_dir)
    token = "test-admin-" + os.urandom(8).hex()
    config_file = config_dir / "jupyterhub_config.py"
    config_file.write_text(config_file.read_text() + HOST_CONFIG.format(hub=hub_ip, proxy=proxy_ip, token=token))
    [container] = [c for c in pod["spec"]["containers"] if c["name"] == "hub"]
    env = container_env(admin, pod, container)
    srv = tmp_path / "srv"
    srv.mkdir()
    kubeconfig = plane.token_kubeconfig(service_account_token(admin, NAMESPACE, "hub", pod), tmp_path / "kubeconfig")
    env.update({"ATLASLAB_STATE_DIR": str(srv / "atlaslab"), "ATLASLAB_SITE_DIR": str(files["/etc/atlaslab"]),
                "KUBECONFIG": str(kubeconfig), "PATH": os.environ["PATH"], "HOME": str(srv),
                "PYTHONPATH": str(CHART.parent.parent)})  # fmt: skip
    chp = Path(sys.executable).parents[2] / "bin" / "configurable-http-proxy"
    chp_path = str(chp) if chp.exists() else shutil.which("configurable-http-proxy")
    assert chp_path, "configurable-http-proxy: run scripts/install.sh"
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = []
    with contextlib.ExitStack() as files_open:
        proxy_log = files_open.enter_context(open(logs / "proxy.log", "wb"))
        hub_log_file = files_open.enter_context(open(logs / "hub.log", "wb"))
        # The proxy pod: z2jh's proxy runs configurable-http-proxy with the token from the hub's Secret.
        procs.append(subprocess.Popen(
            [chp_path, "--ip", proxy_ip, "--port", "8000", "--api-ip", proxy_ip, "--api-port", "8001",
             "--default-target", f"http://{hub_ip}:8081", "--error-target", f"http://{hub_ip}:8081/hub/error"],
            env={"PATH": os.environ["PATH"], "CONFIGPROXY_AUTH_TOKEN": env["CONFIGPROXY_AUTH_TOKEN"]},
            stdout=proxy_log, stderr=subprocess.STDOUT))  # fmt: skip
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(config_file)], cwd=srv, env=env,
            stdout=hub_log_file, stderr=subprocess.STDOUT))  # fmt: skip
    try:
        api = httpx.Client(base_url=f"http://{proxy_ip}:8000/hub/api", headers={"Authorization": f"token {token}"},
                           timeout=30)  # fmt: skip

        def hub_log() -> str:
            return (logs / "hub.log").read_text(errors="replace")[-4000:]

        def up() -> bool:
            assert procs[1].poll() is None, hub_log()
            try:
                return api.get("/").status_code == 200
            except httpx.HTTPError:
                return False

        admin.wait("the hub answering through the proxy", up, timeout=90, every=0.5)
        for name in ("rayan", "salma"):
            assert api.post(f"/users/{name}").status_code in (201, 409)
        r = api.post("/groups/tenant:rnd/users", json={"users": ["rayan", "salma"]})
        assert r.status_code == 200, r.text
        r = api.post("/users/rayan/server", json={"profile": "gpu-two"})
        assert r.status_code in (201, 202), r.text
        # The "container": KWOK marks the pod Running; the test answers on the pod's address, as the server would.
        found = admin.wait(
            "rayan's pod running",
            lambda: running_pods(admin, f"{PREFIX}rnd", "hub.jupyter.org/username=rayan"),
            timeout=60,
        )
        user_pod = found[0]
        assert user_pod["spec"]["nodeName"] == "gpu-a100-0"
        assert notebook(user_pod)["resources"]["limits"]["nvidia.com/gpu"] == "2"
        answering = serve_http(user_pod["status"]["podIP"], 8888)
        try:
            server = lambda: api.get("/users/rayan").json()["servers"].get("", {})  # noqa: E731
            ready = admin.wait("rayan's server ready in the hub", lambda: server().get("ready"), timeout=90)
            assert ready is True
            # Over the tenant's quota: the hub refuses at once, and the user reads why.
            r = api.post("/users/salma/server", json={"profile": "gpu-two"})
            assert r.status_code in (201, 202, 403), r.text
            message = r.text if r.status_code == 403 else spawn_failure(api, "salma")
            assert "All 2 nvidia.com/gpu of tenant rnd are in use (2 taken)" in message, message
            assert not pods(admin, f"{PREFIX}rnd", "hub.jupyter.org/username=salma")
            r = api.delete("/users/rayan/server")
            assert r.status_code in (202, 204), r.text
            admin.wait(
                "rayan's pod gone",
                lambda: not pods(admin, f"{PREFIX}rnd", "hub.jupyter.org/username=rayan"),
                timeout=60,
            )
        finally:
            answering.shutdown()
        # The hub watched pods and events with its own token: the API server refused it nothing.
        full = (logs / "hub.log").read_text(errors="replace")
        assert "system:serviceaccount:atlaslab:hub" not in full, full[-4000:]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


# --- upgrade and uninstall ----------------------------------------------------------------------------------------


def test_helm_upgrade_applies_a_changed_site(release, admin: Kube, helm: Helm) -> None:
    values = yaml.safe_load(release.path.read_text())
    values["atlaslab"]["credits"]["tenants"]["rnd"]["max_gpus"] = 3
    values["placeholders"]["replicas"]["cpu-small"] = 1
    tokens_before = admin.get(f"/api/v1/namespaces/{NAMESPACE}/secrets/atlaslab-service-tokens")["data"]
    path = write_values(release.tmp / "values-2.yaml", values)
    helm("upgrade", RELEASE, str(release.chart), "-n", NAMESPACE, "-f", str(path), "--wait", "--timeout", "240s")
    quota = admin.get(f"/api/v1/namespaces/{PREFIX}rnd/resourcequotas/atlaslab-gpus")
    assert quota["spec"]["hard"]["requests.nvidia.com/gpu"] == "3"
    quota_path = f"/api/v1/namespaces/{PREFIX}rnd/resourcequotas/atlaslab-gpus"
    admin.wait(
        "the quota controller's status",
        lambda: admin.get(quota_path)["status"]["hard"]["requests.nvidia.com/gpu"] == "3",
    )
    site = admin.get(f"/api/v1/namespaces/{NAMESPACE}/configmaps/atlaslab-site")["data"]["atlaslab.yaml"]
    assert yaml.safe_load(site)["credits"]["tenants"]["rnd"]["max_gpus"] == 3
    selector = "app.kubernetes.io/component=placeholder,atlaslab.io/environment=cpu-small"
    admin.wait("cpu-small placeholders down to 1", lambda: len(running_pods(admin, NAMESPACE, selector)) == 1)
    # The services' tokens survive the upgrade (the hub and the services keep agreeing).
    assert admin.get(f"/api/v1/namespaces/{NAMESPACE}/secrets/atlaslab-service-tokens")["data"] == tokens_before


def test_helm_uninstall_removes_everything_but_the_kept_tokens(release, admin: Kube, helm: Helm) -> None:
    manifest = helm.manifest(RELEASE)
    helm("uninstall", RELEASE, "-n", NAMESPACE)
    for obj in manifest:
        path = api_path(admin, obj)
        if obj["kind"] == "Secret" and obj["metadata"]["name"] == "atlaslab-service-tokens":
            assert admin.get(path, ok404=True) is not None  # helm.sh/resource-policy: keep
            continue
        admin.wait(f"{obj['kind']} {obj['metadata']['name']} gone", lambda p=path: gone(admin, p), timeout=120)
    assert not pods(admin, NAMESPACE)


# --- the example site, with Dask Gateway --------------------------------------------------------------------------

EXAMPLE = "example"
EXAMPLE_NS = "atlaslab-example"
DASK = "/apis/gateway.dask.org/v1alpha1"


@pytest.fixture(scope="module")
def example(plane: ControlPlane, admin: Kube, helm: Helm, tmp_path_factory) -> SimpleNamespace:
    """examples/atlaslab.yaml with Dask Gateway on, installed in its own namespace."""
    tmp = tmp_path_factory.mktemp("example-release")
    chart = full_chart(tmp)
    storage(admin, 12, plane.run / "volumes")
    repo = CHART.parent.parent
    site = yaml.safe_load((repo / "examples" / "atlaslab.yaml").read_text())
    roster = (repo / "examples" / "roster" / "ml-foundations.csv").read_text()
    values = with_here({"atlaslab": site, "siteFiles": {"roster/ml-foundations.csv": roster},
                        "gateway": {"enabled": True}})  # fmt: skip
    path = write_values(tmp / "values.yaml", values)
    leftover(helm, admin, EXAMPLE, EXAMPLE_NS)
    helm("install", EXAMPLE, str(chart), "-n", EXAMPLE_NS, "--create-namespace", "-f", str(path), "--wait",
         "--timeout", "240s")  # fmt: skip
    yield SimpleNamespace(chart=chart, values=values, site=site)
    if helm("status", EXAMPLE, "-n", EXAMPLE_NS, ok=False).returncode == 0:
        helm("uninstall", EXAMPLE, "-n", EXAMPLE_NS, "--wait", "--timeout", "120s", ok=False)
    release_storage(admin)


def test_the_example_site_installs_with_dask_gateway(example, admin: Kube, helm: Helm) -> None:
    manifest = helm.manifest_in(EXAMPLE, EXAMPLE_NS)
    for obj in manifest:
        assert admin.get(api_path(admin, obj, EXAMPLE_NS), ok404=True) is not None, (obj["kind"], obj["metadata"])
    # One namespace per tenant (default prefix), each with its quota, limits and policies.
    for tenant in example.site["tenants"]:
        ns = f"atlaslab-{tenant}"
        assert admin.get(f"/api/v1/namespaces/{ns}/resourcequotas/atlaslab-gpus")
        assert admin.get(f"/api/v1/namespaces/{ns}/limitranges/atlaslab-limits")
        names = {
            p["metadata"]["name"]
            for p in admin.get(f"/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies")["items"]
        }
        assert names == {"atlaslab-users", "atlaslab-dask"}, ns
    crd = admin.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/daskclusters.gateway.dask.org")
    assert {c["type"]: c["status"] for c in crd["status"]["conditions"]}["Established"] == "True"
    [gateway] = running_pods(admin, EXAMPLE_NS, "component=atlaslab-gateway")
    [hub] = running_pods(admin, EXAMPLE_NS, "component=hub")
    # The usage ledger is on the hub's volume: same node (pod affinity).
    assert gateway["spec"]["nodeName"] == hub["spec"]["nodeName"]


def test_the_gateways_account_creates_dask_clusters_in_users_namespaces_only(example, plane: ControlPlane,
                                                                             admin: Kube) -> None:  # fmt: skip
    gateway = plane.as_token(service_account_token(admin, EXAMPLE_NS, "atlaslab-gateway"))
    cluster = {"apiVersion": "gateway.dask.org/v1alpha1", "kind": "DaskCluster",
               "metadata": {"name": "dask-test-1", "labels": {"gateway.dask.org/instance": EXAMPLE}},
               "spec": {"info": {"username": "kamal"}, "worker": {"replicas": 2}}, "status": {}}  # fmt: skip
    ns = "atlaslab-rd-atlas"
    made = gateway.create(f"{DASK}/namespaces/{ns}/daskclusters", cluster)
    assert made["spec"]["worker"]["replicas"] == 2  # unknown fields kept (x-kubernetes-preserve-unknown-fields)
    status = gateway.patch(f"{DASK}/namespaces/{ns}/daskclusters/dask-test-1/status",
                           {"status": {"phase": "Running"}})  # fmt: skip
    assert status["status"]["phase"] == "Running"
    # Watching every namespace is allowed (its informers), creating elsewhere is not.
    assert gateway.get(f"{DASK}/daskclusters")["items"]
    with pytest.raises(ApiError) as refused:
        gateway.create(f"{DASK}/namespaces/kube-system/daskclusters", cluster)
    assert refused.value.status == 403
    with pytest.raises(ApiError) as refused:
        gateway.create(f"/api/v1/namespaces/{EXAMPLE_NS}/pods", {"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": "x"}, "spec": {"containers": [{"name": "x", "image": "x"}]}})  # fmt: skip
    assert refused.value.status == 403
    gateway.delete(f"{DASK}/namespaces/{ns}/daskclusters/dask-test-1")


def test_the_example_release_uninstalls_cleanly(example, admin: Kube, helm: Helm) -> None:
    manifest = helm.manifest_in(EXAMPLE, EXAMPLE_NS)
    # Not --wait: helm 4 gives up on a namespace still Terminating; the loop below waits for each object.
    helm("uninstall", EXAMPLE, "-n", EXAMPLE_NS)
    for obj in manifest:
        if obj["kind"] == "Secret" and obj["metadata"]["name"] == "atlaslab-service-tokens":
            continue
        path = api_path(admin, obj, EXAMPLE_NS)
        admin.wait(f"{obj['kind']} {obj['metadata']['name']} gone", lambda p=path: gone(admin, p), timeout=120)
