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

import sys
import time
from types import SimpleNamespace

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
    assert env["ATLASLAB_POD_IP"] == pod["status"]["podIP"] and env["ATLASLAB_POD_IP"].startswith("127.1.0.")
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
    finally:
        await stop_all(started)
        for reflector in list(KubeSpawner.reflectors.values()):
            await reflector.stop()
        KubeSpawner.reflectors.clear()


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
