"""The Helm chart: lint and render with several values files, every object valid against the Kubernetes schema,
quotas, network policies and placeholders as the site config says. The Zero to JupyterHub subchart cannot be
downloaded here, so our own templates are rendered with the dependency switched off (and removed from a copy
of Chart.yaml, which helm would otherwise insist on fetching)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from atlaslab.config.docs import helm_values_schema

REPO = Path(__file__).parent.parent
CHART = REPO / "helm" / "atlaslab"
K8S_VERSION = kubernetes_validate.latest_version()


def helm_binary() -> str:
    beside = Path(sys.executable).parents[2] / "bin" / "helm"  # PREFIX/venv/bin/python -> PREFIX/bin/helm
    found = str(beside) if beside.exists() else shutil.which("helm")
    if not found:
        pytest.fail("no helm binary: run scripts/install.sh --test (it installs one into PREFIX/bin)")
    return found


@pytest.fixture(scope="module")
def chart(tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("chart") / "atlaslab"
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


def render(chart: Path, values: Path) -> list[dict]:
    helm(chart, "lint", ".", "-f", str(values))
    out = helm(chart, "template", "t", ".", "-f", str(values), "--namespace", "atlaslab").stdout
    objects = [o for o in yaml.safe_load_all(out) if o]
    for o in objects:
        kubernetes_validate.validate(o, K8S_VERSION, strict=True)
    return objects


def example_values(tmp: Path) -> Path:
    site = yaml.safe_load((REPO / "examples" / "atlaslab.yaml").read_text())
    path = tmp / "example-values.yaml"
    path.write_text(yaml.safe_dump({"jupyterhub": {"enabled": False}, "atlaslab": site}))
    return path


def by_kind(objects: list[dict], kind: str) -> dict[tuple[str, str], dict]:
    return {(o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in objects if o["kind"] == kind}


def test_values_schema_is_generated_from_the_site_config_schema() -> None:
    committed = json.loads((CHART / "values.schema.json").read_text())
    assert committed == helm_values_schema(), (
        "regenerate: atlaslab config helm-schema -o helm/atlaslab/values.schema.json"
    )


def test_every_values_file_lints_and_renders_valid_objects(chart: Path, tmp_path: Path) -> None:
    files = [*sorted((CHART / "ci").glob("*.yaml")), example_values(tmp_path)]
    for values in files:
        objects = render(chart, values)
        site = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "atlaslab-site"]
        assert len(site) == 1, values
        # The hub reads the site config that was given (on top of the chart's defaults).
        given = yaml.safe_load(values.read_text())["atlaslab"]
        assert contains(yaml.safe_load(site[0]["data"]["atlaslab.yaml"]), given)


def contains(big: object, small: object) -> bool:
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and contains(big[k], v) for k, v in small.items())
    return big == small


def test_quotas_policies_and_placeholders_follow_the_site(chart: Path) -> None:
    objects = render(chart, CHART / "ci" / "gpu-mig-values.yaml")
    quotas = by_kind(objects, "ResourceQuota")
    rnd, campus = (
        quotas[("lab-rnd", "atlaslab-gpus")]["spec"]["hard"],
        quotas[("lab-campus", "atlaslab-gpus")]["spec"]["hard"],
    )
    # rnd: whole GPUs and MIG slices up to its max_gpus, no shared seats; campus: shared seats only.
    assert rnd["requests.nvidia.com/gpu"] == "2" and rnd["requests.nvidia.com/mig-1g.10gb"] == "2"
    assert rnd["requests.nvidia.com/gpu.shared"] == "0"
    assert campus["requests.nvidia.com/gpu"] == "0" and campus["requests.nvidia.com/mig-1g.10gb"] == "0"
    assert campus["requests.nvidia.com/gpu.shared"] != "0"
    policies = by_kind(objects, "NetworkPolicy")
    for ns in ("lab-rnd", "lab-campus", "lab-users"):
        spec = policies[(ns, "atlaslab-users")]["spec"]
        assert spec["podSelector"] == {} and set(spec["policyTypes"]) == {"Ingress", "Egress"}
        # Ingress only from the hub and proxy; never from other users' pods.
        [rule] = spec["ingress"]
        assert all(p.get("podSelector") for p in rule["from"])
        blocks = [p["ipBlock"] for r in spec["egress"] for p in r["to"] if "ipBlock" in p]
        assert blocks and all("169.254.169.254/32" in b["except"] for b in blocks)
    deployments = by_kind(objects, "Deployment")
    gpu = deployments[("", "placeholder-gpu-shared")]["spec"]["template"]["spec"]
    assert gpu["priorityClassName"] == "t-placeholder"
    assert gpu["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu.shared": "1"}
    assert deployments[("", "placeholder-cpu-small")]["spec"]["replicas"] == 3
    crons = by_kind(objects, "CronJob")
    up = crons[("", "placeholder-gpu-shared-0-up")]["spec"]
    assert up["schedule"] == "0 8 * * 1-5"
    assert "--replicas=8" in up["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    down = crons[("", "placeholder-gpu-shared-0-down")]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert "--replicas=1" in down["containers"][0]["args"]
    assert ("", "atlaslab-exchange") in deployments and ("", "atlaslab-mlflow") in deployments
    # The hub may start and watch pods in every users' namespace, and read each tenant's quota.
    bindings = by_kind(objects, "RoleBinding")
    assert {ns for ns, name in bindings if name == "atlaslab-hub"} == {"lab-rnd", "lab-campus", "lab-users"}


def test_a_malformed_site_in_values_is_refused_naming_the_field(chart: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({"jupyterhub": {"enabled": False}, "atlaslab": {"environments": {"x": {"cpu": "lots"}}}})
    )
    r = helm(chart, "template", "t", ".", "-f", str(bad), ok=False)
    assert r.returncode != 0 and "cpu" in r.stderr, r.stderr
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(yaml.safe_dump({"jupyterhub": {"enabled": False}, "placeholders": {"replicas": {"nope": 1}}}))
    r = helm(chart, "template", "t", ".", "-f", str(unknown), ok=False)
    assert r.returncode != 0 and 'unknown environment "nope"' in r.stderr, r.stderr
