"""The site config on Kubernetes as plain values: profiles, overrides, resources, placement and namespaces.

Pure functions (in the manner of KubeSpawner's own ``objects.py``) of the site config and a user's groups, tested
directly; the hub wiring (:mod:`atlaslab.hub.kubernetes`) and the Dask Gateway (:mod:`atlaslab.compute.gateway`)
hand them to KubeSpawner and dask-gateway-server.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from atlaslab.config import LoadedConfig
from atlaslab.config.schema import Environment, Kubernetes

from .membership import Membership, allowed_environments

# Guarantees (requests) are this fraction of the limits: a class's idle servers do not reserve whole nodes.
GUARANTEE_FRACTION = 0.25


def gpu_limits(env: Environment, kube: Kubernetes) -> dict[str, int]:
    """Extended resources a pod of ``env`` asks for: whole GPUs, one MIG slice, or one shared-GPU seat."""
    gpu = env.gpu
    if gpu is None:
        return {}
    if gpu.count:
        return {kube.gpu_resource: gpu.count}
    if gpu.mig:
        return {f"nvidia.com/mig-{gpu.mig}": 1}
    return {kube.shared_gpu_resource: 1}


def environment_override(key: str, env: Environment, kube: Kubernetes) -> dict[str, Any]:
    """The ``kubespawner_override`` of one environment."""
    override: dict[str, Any] = {
        "image": env.image or kube.default_image,
        "cpu_limit": float(env.cpu),
        "cpu_guarantee": round(float(env.cpu) * GUARANTEE_FRACTION, 3),
        "mem_limit": int(env.memory),
        "mem_guarantee": int(int(env.memory) * GUARANTEE_FRACTION),
        "environment": {"ATLASLAB_ENVIRONMENT": key},
    }
    limits = gpu_limits(env, kube)
    selector, tolerations = scheduling(key, env, kube)
    if limits:
        override["extra_resource_limits"] = {name: str(n) for name, n in limits.items()}
        override["extra_resource_guarantees"] = {name: str(n) for name, n in limits.items()}
    else:
        # The NVIDIA container runtime would otherwise expose every GPU of the node to a CPU pod.
        override["environment"].update({"NVIDIA_VISIBLE_DEVICES": "none", "CUDA_VISIBLE_DEVICES": ""})
    if selector:
        override["node_selector"] = selector
    if tolerations:
        override["tolerations"] = tolerations
    return override


def scheduling(key: str, env: Environment, kube: Kubernetes) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Node selector and tolerations of ``env``'s pods: the GPU nodes' for a GPU environment, then the site's
    ``kubernetes.placement`` of this environment (which wins on a label both set)."""
    selector: dict[str, str] = {}
    tolerations: list[dict[str, str]] = []
    if env.gpu is not None:
        selector.update(kube.gpu_node_selector)
        if kube.gpu_tolerate_taint:
            tolerations.append({"key": kube.gpu_tolerate_taint, "operator": "Exists", "effect": "NoSchedule"})
    placement = kube.placement.get(key)
    if placement is not None:
        selector.update(placement.node_selector)
        for t in placement.tolerations:
            toleration = t.model_dump(exclude_none=True)
            if toleration not in tolerations:
                tolerations.append(toleration)
    return selector, tolerations


def profiles(loaded: LoadedConfig) -> list[dict[str, Any]]:
    """Every environment as a KubeSpawner profile, in the site's order."""
    kube = loaded.site.kubernetes
    out = []
    for key, env in loaded.site.environments.items():
        out.append(
            {
                "slug": key,
                "display_name": env.title or key,
                "description": env.description or "",
                "default": bool(env.default),
                "kubespawner_override": environment_override(key, env, kube),
            }
        )
    return out


def profiles_for(all_profiles: list[dict], rules: dict[str, list[str]], fallback: list[str], groups: list[str],
                 admin: bool) -> list[dict]:  # fmt: skip
    allowed = allowed_environments([p["slug"] for p in all_profiles], rules, groups, admin=admin, fallback=fallback)
    return [p for p in all_profiles if p["slug"] in allowed]


def tenant_namespace(groups: list[str], prefix: str, default: str) -> str:
    """The namespace of the user's tenant (whose ResourceQuota and NetworkPolicies apply), else ``default``."""
    tenant = Membership.of(groups).tenant
    return f"{prefix}{tenant}" if tenant else default


# Suffixes of a Kubernetes quantity (resource.Quantity): binary, decimal, and milli.
_QUANTITY_SUFFIXES = {
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{s: Decimal(1000) ** (i + 1) for i, s in enumerate(("k", "M", "G", "T", "P", "E"))},
    "m": Decimal("0.001"),
}


def quantity(text: str | int) -> Decimal:
    """A Kubernetes quantity as a number. The API server answers in its canonical form (a quota of ``1000`` reads
    back as ``1k``), so a count in a ResourceQuota's status is not always a plain integer."""
    text = str(text).strip()
    for suffix in sorted(_QUANTITY_SUFFIXES, key=len, reverse=True):
        if text.endswith(suffix) and text[: -len(suffix)]:
            return Decimal(text[: -len(suffix)]) * _QUANTITY_SUFFIXES[suffix]
    return Decimal(text)  # plain or with an exponent (1e3)


def quota_refusal(tenant: str, hard: dict[str, str], used: dict[str, str], wanted: dict[str, str]) -> str | None:
    """Why a pod asking for ``wanted`` extended resources would exceed the tenant's ResourceQuota, or None."""
    for resource, count in wanted.items():
        limit_text = hard.get(f"requests.{resource}")
        if limit_text is None:
            continue
        limit = quantity(limit_text)
        taken = quantity(used.get(f"requests.{resource}", "0"))
        if taken + quantity(count) > limit:
            if limit == 0:
                return f"Tenant {tenant} has no {resource} in its quota. Start another environment."
            return (
                f"All {limit} {resource} of tenant {tenant} are in use ({taken} taken). Start a CPU environment,"
                " or try again when a GPU server of your tenant stops."
            )
    return None
