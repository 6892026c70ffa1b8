"""The Helm chart: lint and render with several values files, every object valid against the Kubernetes schema,
quotas, network policies and placeholders as the site config says. The Zero to JupyterHub subchart cannot be
downloaded here, so our own templates are rendered with the dependency switched off (and removed from a copy
of Chart.yaml, which helm would otherwise insist on fetching)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from kube_support import CHART, REPO, by_kind, chart_without_dependency, helm, render

from atlaslab.config.docs import helm_values_schema


@pytest.fixture(scope="module")
def chart(tmp_path_factory) -> Path:
    return chart_without_dependency(tmp_path_factory.mktemp("chart"))


def example_values(tmp: Path) -> Path:
    site = yaml.safe_load((REPO / "examples" / "atlaslab.yaml").read_text())
    path = tmp / "example-values.yaml"
    path.write_text(yaml.safe_dump({"jupyterhub": {"enabled": False}, "atlaslab": site}))
    return path


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
    limits = by_kind(objects, "LimitRange")
    # No container larger than the tenant's largest environment (rnd: gpu-two, 8 cores and 32G).
    [rnd_limits] = limits[("lab-rnd", "atlaslab-limits")]["spec"]["limits"]
    assert rnd_limits["max"] == {"cpu": "8", "memory": str(32 * 1024**3)}
    [campus_limits] = limits[("lab-campus", "atlaslab-limits")]["spec"]["limits"]
    assert campus_limits["max"] == {"cpu": "2", "memory": str(8 * 1024**3)}
    namespaces = by_kind(objects, "Namespace")
    for ns in ("lab-rnd", "lab-campus", "lab-users"):
        # Zero to JupyterHub's hub NetworkPolicy admits users' pods from these namespaces only.
        assert namespaces[("", ns)]["metadata"]["labels"]["hub.jupyter.org/network-access-hub"] == "true"
    deployments = by_kind(objects, "Deployment")
    slice_ = deployments[("", "placeholder-gpu-slice")]["spec"]["template"]["spec"]
    # Placeholders hold room on the nodes the environment's servers use (GPU selector plus the site's placement).
    assert slice_["nodeSelector"] == {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "A100-SXM4-80GB"}
    cpu = deployments[("", "placeholder-cpu-small")]["spec"]["template"]["spec"]
    assert cpu["nodeSelector"] == {"node-pool": "students"}
    [toleration] = cpu["tolerations"]
    assert toleration == {"key": "dedicated", "operator": "Equal", "value": "students", "effect": "NoSchedule"}
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
