"""The site config applied to a real KubeSpawner: every environment yields a pod manifest that the Kubernetes
OpenAPI schema accepts, with the right GPU/MIG limits, selectors, tolerations, namespace and environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kube_support import hub_user, offline_kubeconfig, pod_for
from kubespawner import KubeSpawner
from traitlets.config import Config

from atlaslab.config import parse
from atlaslab.core import kube
from atlaslab.hub import apply as apply_mod

SITE = """
site: {state_dir: STATE}
kubernetes:
  enabled: true
  namespace_prefix: lab-
  storage: 5G
  storage_class: fast
  placement:
    gpu-slice: {node_selector: {nvidia.com/gpu.product: A100-SXM4-80GB}}
    cpu-small: {node_selector: {node-pool: students}, tolerations: [{key: dedicated, operator: Equal, value: students}]}
tenants:
  campus: {title: Campus, environments: [cpu-small, gpu-shared]}
  rnd: {title: R&D, environments: [cpu-small, gpu-two, gpu-slice]}
environments:
  cpu-small: {cpu: 1, memory: 2G, default: true}
  gpu-two: {cpu: 8, memory: 32G, gpu: {count: 2}, image: "registry.example/atlaslab/user-gpu:0.1.0"}
  gpu-slice: {cpu: 4, memory: 16G, gpu: {mig: 1g.10gb}}
  gpu-shared: {cpu: 2, memory: 8G, gpu: {shared: 4}}
"""


def user(name: str, groups: list[str], admin: bool = False):
    return hub_user(name, groups, admin)


@pytest.fixture
def config(tmp_path, monkeypatch) -> Config:
    offline_kubeconfig(tmp_path, monkeypatch)
    return apply_mod.apply(Config(), parse(SITE.replace("STATE", str(tmp_path / "state"))))


async def manifest_for(config: Config, who, slug: str) -> dict:
    pod, spawner = await pod_for(config, who, slug)
    return {"pod": pod, "namespace": spawner.namespace}


def container(pod: dict) -> dict:
    [c] = [c for c in pod["spec"]["containers"] if c["name"] == "notebook"]
    return c


def env_of(pod: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container(pod).get("env", [])}


async def test_every_environment_yields_a_valid_pod(config: Config) -> None:
    rnd, campus = user("rana", ["tenant:rnd"]), user("karim", ["tenant:campus"])
    cpu = await manifest_for(config, rnd, "cpu-small")
    assert cpu["namespace"] == "lab-rnd"
    c = container(cpu["pod"])
    assert c["resources"]["limits"]["cpu"] == "1.0" or float(c["resources"]["limits"]["cpu"]) == 1.0
    assert not any("nvidia" in k for k in c["resources"]["limits"])
    assert env_of(cpu["pod"])["NVIDIA_VISIBLE_DEVICES"] == "none"
    assert cpu["pod"]["spec"]["automountServiceAccountToken"] is False

    two = await manifest_for(config, rnd, "gpu-two")
    c = container(two["pod"])
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2" and c["image"].endswith("user-gpu:0.1.0")
    assert two["pod"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in two["pod"]["spec"]["tolerations"]
    assert "NVIDIA_VISIBLE_DEVICES" not in env_of(two["pod"])

    mig = await manifest_for(config, rnd, "gpu-slice")
    assert container(mig["pod"])["resources"]["limits"]["nvidia.com/mig-1g.10gb"] == "1"
    # The site's placement adds to the GPU nodes' selector: MIG slices only on the A100 pool.
    assert mig["pod"]["spec"]["nodeSelector"] == {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": "A100-SXM4-80GB",
    }
    assert cpu["pod"]["spec"]["nodeSelector"] == {"node-pool": "students"}
    toleration = {"key": "dedicated", "operator": "Equal", "value": "students", "effect": "NoSchedule"}
    assert toleration in cpu["pod"]["spec"]["tolerations"]

    shared = await manifest_for(config, campus, "gpu-shared")
    assert shared["namespace"] == "lab-campus"
    assert container(shared["pod"])["resources"]["limits"]["nvidia.com/gpu.shared"] == "1"


async def test_a_user_cannot_start_another_tenants_environment(config: Config) -> None:
    campus = user("karim", ["tenant:campus"])
    profiles = config.KubeSpawner.profile_list(KubeSpawner(_mock=True, config=config, user=campus))
    assert [p["slug"] for p in profiles] == ["cpu-small", "gpu-shared"]
    with pytest.raises(ValueError):
        await manifest_for(config, campus, "gpu-two")
    # Admins may start anything.
    admin = user("root-admin", [], admin=True)
    assert (await manifest_for(config, admin, "gpu-two"))["namespace"] == "lab-users"


def test_overrides_are_plain_data_and_applying_twice_changes_nothing(tmp_path) -> None:
    loaded = parse(SITE.replace("STATE", str(tmp_path / "state")))
    first = kube.profiles(loaded)
    assert first == kube.profiles(loaded)
    c = apply_mod.apply(Config(), loaded)
    assert c == apply_mod.apply(c, loaded)  # applying twice changes nothing
    assert c.JupyterHub.spawner_class == "kubespawner.KubeSpawner"
    assert c.KubeSpawner.storage_capacity == str(5 * 1024**3) and c.KubeSpawner.storage_class == "fast"
    # Off by default: one machine keeps AtlasLab's own spawner.
    plain = apply_mod.apply(Config(), parse(f"site: {{state_dir: {tmp_path / 's2'}}}"))
    assert plain.JupyterHub.spawner_class == "atlaslab.hub.spawner.AtlasLabSpawner" and "KubeSpawner" not in plain


def test_a_gpu_server_over_the_tenants_quota_is_refused_with_the_reason() -> None:
    hard = {"requests.nvidia.com/gpu": "2", "requests.nvidia.com/mig-1g.10gb": "0", "pods": "1000"}
    used = {"requests.nvidia.com/gpu": "1"}
    assert kube.quota_refusal("rnd", hard, used, {"nvidia.com/gpu": "1"}) is None
    message = kube.quota_refusal("rnd", hard, used, {"nvidia.com/gpu": "2"})
    assert message and "All 2 nvidia.com/gpu of tenant rnd are in use (1 taken)" in message
    message = kube.quota_refusal("rnd", hard, used, {"nvidia.com/mig-1g.10gb": "1"})
    assert message and "no nvidia.com/mig-1g.10gb in its quota" in message
    # Resources the quota does not cover are Kubernetes' business.
    assert kube.quota_refusal("rnd", hard, used, {"example.com/fpga": "1"}) is None
    # The API server answers in canonical quantities: the chart's "1000" shared seats read back as "1k".
    served = {"requests.nvidia.com/gpu.shared": "1k", "requests.nvidia.com/gpu": "0"}
    assert (
        kube.quota_refusal("campus", served, {"requests.nvidia.com/gpu.shared": "999"}, {"nvidia.com/gpu.shared": "1"})
        is None
    )
    message = kube.quota_refusal(
        "campus", served, {"requests.nvidia.com/gpu.shared": "1k"}, {"nvidia.com/gpu.shared": "1"}
    )
    assert message and "All 1000 nvidia.com/gpu.shared of tenant campus are in use (1000 taken)" in message
    assert [kube.quantity(q) for q in ("2", "1k", "1Ki", "500m", "1e3")] == [2, 1000, 1024, 0.5, 1000]


async def test_each_users_pod_and_image_default_to_their_tenants_language(tmp_path, monkeypatch) -> None:
    """site.languages / tenants.X.language reach the pod (ATLASLAB_LANGUAGE), and the image's server config turns
    that into the settings directory whose overrides make it JupyterLab's default language."""
    from traitlets.config.loader import PyFileConfigLoader

    from atlaslab.hub import imageconfig

    offline_kubeconfig(tmp_path, monkeypatch)
    site = (
        SITE.replace("STATE", str(tmp_path / "state"))
        .replace("site: {state_dir:", "site: {languages: [ar, fr, en], state_dir:")
        .replace("campus: {title: Campus,", "campus: {title: Campus, language: fr,")
    )
    c = apply_mod.apply(Config(), parse(site))
    languages = {}
    for who in (user("karim", ["tenant:campus"]), user("rana", ["tenant:rnd"]), user("nobody", [])):
        pod, _ = await pod_for(c, who, "cpu-small")
        languages[who.name] = env_of(pod)["ATLASLAB_LANGUAGE"]
    # campus says French; R&D and users in no tenant get the site's first language.
    assert languages == {"karim": "fr", "rana": "ar", "nobody": "ar"}
    # What the user image carries (python -m atlaslab.hub.imageconfig PREFIX/etc/jupyter), read as Jupyter reads it.
    etc = tmp_path / "etc" / "jupyter"
    imageconfig.write(etc)
    for lang, locale in (("fr", "fr_FR"), ("ar", "ar_SA"), ("en", "en"), ("", None), ("../../etc", None)):
        monkeypatch.setenv("ATLASLAB_LANGUAGE", lang)
        loaded = PyFileConfigLoader("jupyter_server_config.py", path=str(etc)).load_config()
        if locale is None:
            assert "app_settings_dir" not in loaded.LabApp, lang
            continue
        settings = Path(loaded.LabApp.app_settings_dir)
        assert settings == etc / "lab-settings" / lang
        overrides = json.loads((settings / "overrides.json").read_text())
        assert overrides == {"@jupyterlab/translation-extension:plugin": {"locale": locale}}
