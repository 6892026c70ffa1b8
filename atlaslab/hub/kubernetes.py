"""KubeSpawner from the site config (``kubernetes.enabled``): profiles, tenant namespaces, GPU quota refusals.

The profile list is a callable: each user sees, and may start, only the environments their hub groups allow;
KubeSpawner re-checks the chosen slug against that same list when the spawn request arrives, so a hand-made
request cannot start anything else. A tenant's servers run in the tenant's namespace, where its ResourceQuota
(GPUs, MIG slices) and NetworkPolicies apply. The manifests' values come from :mod:`atlaslab.core.kube`.
"""

from __future__ import annotations

from typing import Any

from traitlets.config import Config

from atlaslab.config import LoadedConfig
from atlaslab.core.kube import profiles, profiles_for, quota_refusal, tenant_namespace
from atlaslab.core.membership import access_rules, default_environments
from atlaslab.workbench.language import UserLanguage, default_language, tenant_languages

# Hub-side paths one machine hands to users' servers; in a pod they do not exist (the images carry the same
# configuration, see images/).
HUB_ONLY_ENV = ("PATH", "JUPYTER_CONFIG_PATH")
# Zero to JupyterHub's hub NetworkPolicy admits pods with this label, and (with interNamespaceAccessLabels:
# accept) from namespaces with it: the tenants' namespaces carry it (helm/atlaslab/templates/tenants.yaml).
HUB_ACCESS_LABEL = {"hub.jupyter.org/network-access-hub": "true"}


class ProfileList:
    """KubeSpawner's ``profile_list`` callable: the user's own environments (plain data, so config can hold it)."""

    def __init__(self, all_profiles: list[dict], rules: dict[str, list[str]], fallback: list[str]):
        self.all_profiles, self.rules, self.fallback = all_profiles, rules, fallback

    def __call__(self, spawner) -> list[dict]:
        groups = [g.name for g in spawner.user.groups]
        return profiles_for(self.all_profiles, self.rules, self.fallback, groups, bool(spawner.user.admin))


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


def pod_environment(loaded: LoadedConfig, server_env: dict[str, Any]) -> dict[str, Any]:
    """What users' pods get: the features' server environment without hub-side paths, and the user's language
    (which the image's server config turns into LabApp.app_settings_dir)."""
    env = {k: v for k, v in server_env.items() if k not in HUB_ONLY_ENV}
    env["ATLASLAB_LANGUAGE"] = UserLanguage(tenant_languages(loaded), default_language(loaded))
    return env


def configure_kubernetes(
    c: Config, loaded: LoadedConfig, server_env: dict[str, Any], chart: dict[str, dict] | None
) -> None:
    """``chart``: in the hub pod, the environment and labels Zero to JupyterHub set, which AtlasLab extends."""
    kube = loaded.site.kubernetes
    if not kube.enabled:
        return
    all_profiles = profiles(loaded)
    c.KubeSpawner.profile_list = ProfileList(all_profiles, access_rules(loaded), default_environments(loaded))
    c.KubeSpawner.pre_spawn_hook = TenantNamespace(kube.namespace_prefix, all_profiles)
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
    c.KubeSpawner.environment = {**(chart or {}).get("environment", {}), **pod_environment(loaded, server_env)}
    if chart is not None:
        c.KubeSpawner.extra_labels = {**chart.get("extra_labels", {}), **HUB_ACCESS_LABEL}
    c.KubeSpawner.start_timeout = loaded.site.limits.start_timeout
    c.KubeSpawner.http_timeout = loaded.site.limits.start_timeout
