"""Shared by the chart and KubeSpawner tests: the helm binary, rendering our chart without its Zero to JupyterHub
dependency (it cannot be downloaded here), and a real KubeSpawner's pod manifest built offline."""

from __future__ import annotations

import inspect
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).parent.parent
CHART = REPO / "helm" / "atlaslab"
K8S_VERSION = kubernetes_validate.latest_version()
# KubeSpawner loads a client config when created; nothing here talks to that (made-up) cluster.
KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: none, user: {token: unused}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
"""


def helm_binary() -> str:
    beside = Path(sys.executable).parents[2] / "bin" / "helm"  # PREFIX/venv/bin/python -> PREFIX/bin/helm
    found = str(beside) if beside.exists() else shutil.which("helm")
    if not found:
        pytest.fail("no helm binary: run scripts/install.sh --test (it installs one into PREFIX/bin)")
    return found


def chart_without_dependency(target: Path) -> Path:
    """A copy of the chart whose Chart.yaml drops the `jupyterhub` dependency (helm would insist on fetching it)."""
    copy = target / "atlaslab"
    shutil.copytree(CHART, copy)
    meta = yaml.safe_load((copy / "Chart.yaml").read_text())
    assert [d["name"] for d in meta.pop("dependencies")] == ["jupyterhub"]
    (copy / "Chart.yaml").write_text(yaml.safe_dump(meta))
    return copy


def helm(chart: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([helm_binary(), *args], cwd=chart, capture_output=True, text=True, timeout=120)
    if ok:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def render(chart: Path, values: Path, lint: bool = True) -> list[dict]:
    """Every object the chart renders for ``values``, each validated against the Kubernetes OpenAPI schema."""
    if lint:
        helm(chart, "lint", ".", "-f", str(values))
    out = helm(chart, "template", "t", ".", "-f", str(values), "--namespace", "atlaslab").stdout
    objects = [o for o in yaml.safe_load_all(out) if o]
    for o in objects:
        kubernetes_validate.validate(o, K8S_VERSION, strict=True)
    return objects


def by_kind(objects: list[dict], kind: str) -> dict[tuple[str, str], dict]:
    return {(o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in objects if o["kind"] == kind}


def offline_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kubernetes_asyncio.config.kube_config as kube_config

    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "kubeconfig"))


def hub_user(name: str, groups: list[str], admin: bool = False) -> SimpleNamespace:
    """What KubeSpawner reads of a hub user."""
    return SimpleNamespace(
        name=name,
        id=7,
        url=f"/user/{name}/",
        admin=admin,
        groups=[SimpleNamespace(name=g) for g in groups],
        escaped_name=name,
    )


async def pod_for(config, who: SimpleNamespace, slug: str, api_token: str = "") -> tuple[dict, object]:
    """The pod a real KubeSpawner would create for ``who`` choosing ``slug``, validated; and the spawner."""
    from kubernetes_asyncio.client import ApiClient
    from kubespawner import KubeSpawner

    spawner = KubeSpawner(_mock=True, config=config, user=who)
    spawner.api_token = api_token  # the hub sets the server's token before starting it
    spawner.user_options = {"profile": slug}
    await spawner.load_user_options()
    hooked = spawner.run_pre_spawn_hook()
    if inspect.isawaitable(hooked):
        await hooked
    pod = ApiClient().sanitize_for_serialization(await spawner.get_pod_manifest())
    pod.setdefault("apiVersion", "v1")
    pod.setdefault("kind", "Pod")
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    return pod, spawner
