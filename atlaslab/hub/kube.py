"""The same site config on Kubernetes: KubeSpawner's profiles, overrides and namespaces from plain values.

Pure functions (in the manner of KubeSpawner's own ``objects.py``) turn an environment into the
``kubespawner_override`` of its profile; :func:`configure_kubernetes` sets KubeSpawner up when the site says
``kubernetes.enabled``. The profile list is a callable: each user sees, and may start, only the environments
their hub groups allow; KubeSpawner re-checks the chosen slug against that same list when the spawn request
arrives, so a hand-made request cannot start anything else. A tenant's servers run in the tenant's namespace,
where its ResourceQuota (GPUs, MIG slices) and NetworkPolicies apply.
"""

from __future__ import annotations

from typing import Any

from traitlets.config import Config

from atlaslab.config import LoadedConfig
from atlaslab.config.schema import Environment, Kubernetes

from .language import UserLanguage, default_language, tenant_languages
from .membership import access_rules, allowed_environments, default_environments

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
    tenants = sorted(g.split(":", 1)[1] for g in groups if g.startswith("tenant:") and g.count(":") == 1)
    return f"{prefix}{tenants[0]}" if tenants else default


class ProfileList:
    """KubeSpawner's ``profile_list`` callable: the user's own environments (plain data, so config can hold it)."""

    def __init__(self, all_profiles: list[dict], rules: dict[str, list[str]], fallback: list[str]):
        self.all_profiles, self.rules, self.fallback = all_profiles, rules, fallback

    def __call__(self, spawner) -> list[dict]:
        groups = [g.name for g in spawner.user.groups]
        return profiles_for(self.all_profiles, self.rules, self.fallback, groups, bool(spawner.user.admin))


def quota_refusal(tenant: str, hard: dict[str, str], used: dict[str, str], wanted: dict[str, str]) -> str | None:
    """Why a pod asking for ``wanted`` extended resources would exceed the tenant's ResourceQuota, or None."""
    for resource, count in wanted.items():
        limit = hard.get(f"requests.{resource}")
        if limit is None:
            continue
        taken = int(used.get(f"requests.{resource}", "0"))
        if taken + int(count) > int(limit):
            if int(limit) == 0:
                return f"Tenant {tenant} has no {resource} in its quota. Start another environment."
            return (
                f"All {limit} {resource} of tenant {tenant} are in use ({taken} taken). Start a CPU environment,"
                " or try again when a GPU server of your tenant stops."
            )
    return None


class TenantNamespace:
    """KubeSpawner's ``pre_spawn_hook``: the pod (and its volume) go to the user's tenant's namespace, and a GPU
    server over the tenant's quota is refused at once with the reason, instead of a pod Kubernetes rejects."""

    def __init__(self, prefix: str, all_profiles: list[dict] | None = None):
        self.prefix, self.all_profiles = prefix, all_profiles or []

    async def __call__(self, spawner) -> None:
        spawner.namespace = tenant_namespace([g.name for g in spawner.user.groups], self.prefix, spawner.namespace)
        slug = (spawner.user_options or {}).get("profile")
        chosen = [p for p in self.all_profiles if p["slug"] == slug] or [p for p in self.all_profiles if p["default"]]
        wanted = chosen[0]["kubespawner_override"].get("extra_resource_guarantees", {}) if chosen else {}
        if not wanted or not spawner.namespace.startswith(self.prefix):
            return
        from aiohttp import ClientError
        from kubernetes_asyncio.client.rest import ApiException
        from tornado import web

        try:
            quota = await spawner.api.read_namespaced_resource_quota("atlaslab-gpus", spawner.namespace)
        except (ApiException, ClientError, OSError) as e:
            # No quota object (or no answer): the pod is tried and Kubernetes' own admission decides.
            spawner.log.warning("GPU quota of %s unreadable (%s); Kubernetes will decide", spawner.namespace, e)
            return
        status = quota.status
        refusal = quota_refusal(
            spawner.namespace.removeprefix(self.prefix), status.hard or {}, status.used or {}, wanted
        )
        if refusal:
            raise web.HTTPError(403, refusal)


def configure_kubernetes(c: Config, loaded: LoadedConfig) -> None:
    kube = loaded.site.kubernetes
    if not kube.enabled:
        return
    c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
    c.KubeSpawner.profile_list = ProfileList(profiles(loaded), access_rules(loaded), default_environments(loaded))
    c.KubeSpawner.pre_spawn_hook = TenantNamespace(kube.namespace_prefix, profiles(loaded))
    # Pods live in several namespaces (one per tenant): KubeSpawner then watches them all.
    c.KubeSpawner.enable_user_namespaces = True
    c.KubeSpawner.user_namespace_template = f"{kube.namespace_prefix}users"
    c.KubeSpawner.storage_pvc_ensure = True
    c.KubeSpawner.storage_capacity = str(kube.storage)
    if kube.storage_class:
        c.KubeSpawner.storage_class = kube.storage_class
    c.KubeSpawner.pvc_name_template = "home-{user_server}"
    c.KubeSpawner.volumes = [{"name": "home", "persistentVolumeClaim": {"claimName": "home-{user_server}"}}]
    c.KubeSpawner.volume_mounts = [{"name": "home", "mountPath": "/home/jovyan"}]
    # Users' pods never talk to the Kubernetes API.
    c.KubeSpawner.automount_service_account_token = False
    c.KubeSpawner.allow_privilege_escalation = False
    c.KubeSpawner.uid = 1000
    c.KubeSpawner.fs_gid = 100
    # The user's default JupyterLab language, which the image's server config turns into LabApp.app_settings_dir.
    current = c.KubeSpawner.get("environment")
    c.KubeSpawner.environment = {
        **(current if isinstance(current, dict) else {}),
        "ATLASLAB_LANGUAGE": UserLanguage(tenant_languages(loaded), default_language(loaded)),
    }
    c.KubeSpawner.start_timeout = loaded.site.limits.start_timeout
    c.KubeSpawner.http_timeout = loaded.site.limits.start_timeout
