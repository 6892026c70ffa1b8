"""What the real-cluster tests share: the session's control plane, the whole chart (with the vendored Zero to
JupyterHub 4.3.1), helm against the API server, and the hub pod as its kubelet would lay it out (files, environment,
service-account token) so the hub's own code runs on this machine against the API server."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_support import CHART, REPO, helm_binary
from realkube import ApiError, ControlPlane, Kube, missing_tools, running

Z2JH_VERSION = "4.3.1"
VENDORED_Z2JH = REPO.parent / "shared" / "vendor" / "helm" / f"jupyterhub-{Z2JH_VERSION}.tgz"
NAMESPACE = "atlaslab"
# What only this machine lacks, and nothing else: Zero to JupyterHub's defaults stay as they are.
HERE = {
    # No cloud load balancer gives proxy-public an address, and `helm install --wait` would wait for one.
    "proxy": {"service": {"type": "ClusterIP"}},
    # z2jh's user-scheduler is a pod running kube-scheduler, and no container runs here: users' pods are
    # scheduled by the control plane's own kube-scheduler (placeholders and preemption included).
    "scheduling": {"userScheduler": {"enabled": False}},
}


def unavailable() -> str | None:
    """Why no control plane can run here, or None."""
    missing = missing_tools()
    if missing:
        return "no test control plane: missing " + "; ".join(missing) + " (scripts/install.sh --test builds them)"
    if not VENDORED_Z2JH.exists():
        return f"no Zero to JupyterHub chart at {VENDORED_Z2JH} (the shared vendor copy)"
    return None


def control_plane(tmp: Path) -> tuple[ControlPlane, bool]:
    """One already running (``tests/realkube.py up``), or a new one; True when this call started it."""
    reason = unavailable()
    if reason:
        # CI installs everything (scripts/install.sh --test): there a missing tool is a failure, not a skip.
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    plane = running()
    if plane is not None:
        return plane, False
    plane = ControlPlane(run=tmp)
    try:
        plane.start(progress=lambda line: print(f"[control plane] {line}", flush=True))
    except BaseException:
        plane.stop()
        raise
    return plane, True


def full_chart(tmp: Path) -> Path:
    """helm/atlaslab with its dependency in charts/, as `helm dependency build` leaves it."""
    chart = tmp / "atlaslab"
    shutil.copytree(CHART, chart)
    (chart / "charts").mkdir(exist_ok=True)
    shutil.copy(VENDORED_Z2JH, chart / "charts")
    return chart


class Helm:
    def __init__(self, plane: ControlPlane, home: Path):
        self.kubeconfig = str(plane.admin_kubeconfig)
        home.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        self.seconds: dict[str, float] = {}

    def __call__(self, *args: str, ok: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        t0 = time.monotonic()
        r = subprocess.run([helm_binary(), "--kubeconfig", self.kubeconfig, *args], capture_output=True, text=True,
                           timeout=timeout, env=self.env)  # fmt: skip
        self.seconds[" ".join(args[:2])] = round(time.monotonic() - t0, 1)
        if ok:
            assert r.returncode == 0, f"helm {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
        return r

    def manifest(self, release: str) -> list[dict]:
        return self.manifest_in(release, NAMESPACE)

    def manifest_in(self, release: str, namespace: str) -> list[dict]:
        out = self("get", "manifest", release, "-n", namespace).stdout
        return [o for o in yaml.safe_load_all(out) if o]


def write_values(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def with_here(values: dict) -> dict:
    jupyterhub = {**values.get("jupyterhub", {}), "enabled": True}
    for key, value in HERE.items():
        jupyterhub[key] = {**jupyterhub.get(key, {}), **value}
    return {**values, "jupyterhub": jupyterhub}


# --- objects and where the API serves them ------------------------------------------------------------------------

_PLURALS: dict[tuple[str, str], tuple[str, bool]] = {}


def api_path(kube: Kube, obj: dict, namespace: str = NAMESPACE) -> str:
    """The URL of ``obj`` on the API server (discovery says the plural and whether it is namespaced)."""
    group_version, kind = obj["apiVersion"], obj["kind"]
    if (group_version, kind) not in _PLURALS:
        base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        for resource in kube.get(base)["resources"]:
            if "/" not in resource["name"]:
                _PLURALS[(group_version, resource["kind"])] = (resource["name"], resource["namespaced"])
    plural, namespaced = _PLURALS[(group_version, kind)]
    base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    name = obj["metadata"]["name"]
    if namespaced:
        return f"{base}/namespaces/{obj['metadata'].get('namespace', namespace)}/{plural}/{name}"
    return f"{base}/{plural}/{name}"


def pods(kube: Kube, namespace: str, selector: str = "") -> list[dict]:
    return kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector)["items"]


def running_pods(kube: Kube, namespace: str, selector: str = "") -> list[dict]:
    return [p for p in pods(kube, namespace, selector) if p["status"].get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")]  # fmt: skip


def storage(kube: Kube, count: int, where: Path) -> None:
    """hostPath PersistentVolumes for the claims (hub database, exchange, users' homes): no provisioner runs here.
    Kept between tests (and releases): release_storage() makes them Available again."""
    for i in range(count):
        name = f"atlaslab-test-pv-{i}"
        if kube.get(f"/api/v1/persistentvolumes/{name}", ok404=True):
            continue
        kube.create("/api/v1/persistentvolumes", {
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name, "labels": {"atlaslab.test/pv": "true"}},
            "spec": {"capacity": {"storage": "100Gi"}, "accessModes": ["ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                     "hostPath": {"path": str(where / name), "type": "DirectoryOrCreate"}},
        })  # fmt: skip


def release_storage(kube: Kube) -> None:
    """Released volumes back to Available (a hostPath volume is not deleted: its claim is just cleared)."""
    for pv in kube.get("/api/v1/persistentvolumes", labelSelector="atlaslab.test/pv=true")["items"]:
        if pv["status"].get("phase") in ("Released", "Failed"):
            kube.patch(f"/api/v1/persistentvolumes/{pv['metadata']['name']}", {"spec": {"claimRef": None}})


def ensure_namespace(kube: Kube, name: str) -> None:
    try:
        kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    except ApiError as e:
        if e.status != 409:
            raise


def gone(kube: Kube, path: str) -> bool:
    return kube.get(path, ok404=True) is None


# --- the hub pod, as its kubelet would lay it out ---------------------------------------------------------------


def service_env(kube: Kube, namespace: str) -> dict[str, str]:
    """The variables a kubelet gives every container for the Services of its namespace."""
    env = {}
    for service in kube.get(f"/api/v1/namespaces/{namespace}/services")["items"]:
        name = service["metadata"]["name"].upper().replace("-", "_")
        ports = service["spec"].get("ports", [])
        if not ports or service["spec"].get("clusterIP") in (None, "None"):
            continue
        env[f"{name}_SERVICE_HOST"] = service["spec"]["clusterIP"]
        env[f"{name}_SERVICE_PORT"] = str(ports[0]["port"])
        for port in ports:
            if port.get("name"):
                env[f"{name}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(port["port"])
    return env


def container_env(kube: Kube, pod: dict, container: dict) -> dict[str, str]:
    """A container's environment with its references resolved (field paths, Secrets), as its kubelet resolves it."""
    namespace = pod["metadata"]["namespace"]
    env = service_env(kube, namespace)
    fields = {
        "metadata.name": pod["metadata"]["name"],
        "metadata.namespace": namespace,
        "status.podIP": pod["status"]["podIP"],
        "status.hostIP": pod["status"].get("hostIP", ""),
        "spec.nodeName": pod["spec"].get("nodeName", ""),
    }
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        source = item.get("valueFrom", {})
        if "fieldRef" in source:
            env[item["name"]] = fields[source["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            secret = kube.get(f"/api/v1/namespaces/{namespace}/secrets/{ref['name']}", ok404=True)
            data = (secret or {}).get("data", {})
            if ref["key"] in data:
                env[item["name"]] = base64.b64decode(data[ref["key"]]).decode()
            elif not ref.get("optional"):
                raise AssertionError(f"the hub pod needs {ref} and it is not there")
    return env


def hub_pod_files(kube: Kube, pod: dict, root: Path) -> dict[str, Path]:
    """The hub container's mounts under ``root``: z2jh's ConfigMap and Secret (/usr/local/etc/jupyterhub) and the
    site ConfigMap (/etc/atlaslab). Returns {mount path: local directory}."""
    namespace = pod["metadata"]["namespace"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    [hub] = [c for c in pod["spec"]["containers"] if c["name"] == "hub"]
    mounts: dict[str, Path] = {}
    for mount in hub["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            data = kube.get(f"/api/v1/namespaces/{namespace}/configmaps/{volume['configMap']['name']}")["data"]
        elif "secret" in volume:
            secret = kube.get(f"/api/v1/namespaces/{namespace}/secrets/{volume['secret']['secretName']}")
            data = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
        else:
            continue  # the hub's volume: the test gives the hub a directory of its own
        target = root / mount["mountPath"].strip("/")
        if mount.get("subPath"):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(data[mount["subPath"]])
        else:
            target.mkdir(parents=True, exist_ok=True)
            for key, text in data.items():
                (target / key).write_text(text)
        mounts[mount["mountPath"]] = target
    return mounts


def relocate_mounts(root: Path, config_dir: Path) -> None:
    """z2jh's config names its mount points literally: point them at ``root`` (what a bind mount would do)."""
    for name in ("jupyterhub_config.py", "z2jh.py"):
        path = config_dir / name
        path.write_text(path.read_text().replace("/usr/local/etc/jupyterhub", str(config_dir)))


def service_account_token(kube: Kube, namespace: str, account: str, pod: dict | None = None) -> str:
    """A token for ``account`` as the kubelet gets one for a pod's projected volume (TokenRequest, bound to it)."""
    spec: dict[str, Any] = {"audiences": ["https://kubernetes.default.svc.cluster.local"], "expirationSeconds": 3600}
    if pod is not None:
        spec["boundObjectRef"] = {"kind": "Pod", "apiVersion": "v1", "name": pod["metadata"]["name"],
                                  "uid": pod["metadata"]["uid"]}  # fmt: skip
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
    r = kube.create(f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token", body)
    return r["status"]["token"]


def can(kube: Kube, verb: str, resource: str, namespace: str = "", group: str = "", subresource: str = "") -> bool:
    """What the API server's authorizer answers for the caller (SelfSubjectAccessReview)."""
    attrs = {"verb": verb, "resource": resource, "group": group, "namespace": namespace, "subresource": subresource}
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
              "spec": {"resourceAttributes": attrs}}  # fmt: skip
    return bool(kube.create("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review)["status"]["allowed"])
