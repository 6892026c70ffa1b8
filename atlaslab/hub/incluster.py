"""The site config applied inside Zero to JupyterHub's hub pod (the chart's ``hub.extraConfig``).

On one machine AtlasLab owns everything: the hub listens on 127.0.0.1, its services too, and the secrets live in
STATE_DIR. In the chart's hub pod, Zero to JupyterHub's own config (which runs first) owns how the hub, the proxy
pod and users' pods find each other, the hub database and the secrets it shares with the proxy; AtlasLab keeps
those (:data:`CHART_OWNED`) and adds everything else. Services then need addresses other pods can reach:

* the exchange and MLflow run as the chart's own Deployments (``atlaslab-exchange``, ``atlaslab-mlflow``): the
  hub registers them as external services, with the API tokens the chart generated into a Secret;
* the services that stay hub-managed (credits, autograder, formgraders) listen on the hub pod's IP, so the proxy
  pod can route to them;
* users' pods reach all of them at stable names (the Services, or the proxy for the hub pod's own services), so a
  hub restart (new pod IP) does not break a running server.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from traitlets.config import Config

from atlaslab.config import LoadedConfig, load

# Traits Zero to JupyterHub's config sets (or that must stay at JupyterHub's defaults in its pod): AtlasLab's
# one-machine values for them (127.0.0.1, STATE_DIR secrets) would cut the hub off from the proxy pod.
CHART_OWNED: dict[str, tuple[str, ...]] = {
    "JupyterHub": (
        "bind_url",
        "ip",
        "port",
        "hub_ip",
        "hub_port",
        "hub_bind_url",
        "hub_connect_ip",
        "hub_connect_port",
        "hub_connect_url",
        "db_url",
        "cookie_secret",
        "pid_file",
    ),
    "ConfigurableHTTPProxy": ("api_url", "auth_token", "pid_file"),
    "CryptKeeper": ("keys",),
}
# Where the chart runs the two services it deploys itself, and the hub environment variables holding their tokens
# (from the chart's Secret `atlaslab-service-tokens`).
CHART_SERVICES = {"exchange": "atlaslab-exchange", "mlflow": "atlaslab-mlflow"}
CHART_SERVICE_PORT = 8000
TOKEN_ENV = {"exchange": "ATLASLAB_EXCHANGE_TOKEN", "mlflow": "ATLASLAB_MLFLOW_TOKEN"}
# Dask Gateway's token: set only when the chart runs the gateway (the Secret's key is optional in the hub pod).
GATEWAY_TOKEN_ENV = "ATLASLAB_GATEWAY_TOKEN"
# Hub-side paths one machine hands to users' servers; in a pod they do not exist (the images carry the same
# configuration, see images/).
HUB_ONLY_ENV = ("PATH", "JUPYTER_CONFIG_PATH")
DEFAULT_STATE_DIR = "/srv/jupyterhub/atlaslab"  # on the hub's volume (Zero to JupyterHub's hub-db-dir)
DEFAULT_SITE_DIR = "/etc/atlaslab"  # the ConfigMap atlaslab-site, mounted by the chart


@dataclass(frozen=True)
class Cluster:
    """Where things are, seen from inside the cluster."""

    namespace: str  # the release's namespace (hub, proxy, exchange, MLflow)
    pod_ip: str  # the hub pod's own address
    proxy_url: str  # the proxy as other pods reach it, e.g. http://proxy-public.NS.svc

    def service_url(self, name: str) -> str:
        return f"http://{CHART_SERVICES[name]}.{self.namespace}.svc:{CHART_SERVICE_PORT}"


def cluster_from_env(env: dict[str, str] | None = None) -> Cluster:
    """The hub pod's view: POD_NAMESPACE is set by Zero to JupyterHub, the pod IP by our values (downward API)."""
    env = dict(os.environ if env is None else env)
    namespace = env.get("POD_NAMESPACE", "default")
    pod_ip = env.get("ATLASLAB_POD_IP") or socket.gethostbyname(socket.gethostname())
    proxy = env.get("ATLASLAB_PROXY_URL") or f"http://proxy-public.{namespace}.svc"
    return Cluster(namespace=namespace, pod_ip=pod_ip, proxy_url=proxy.rstrip("/"))


def snapshot(c: Config) -> dict[tuple[str, str], Any]:
    return {(s, k): c[s][k] for s, keys in CHART_OWNED.items() if s in c for k in keys if k in c[s]}


def restore(c: Config, kept: dict[tuple[str, str], Any]) -> None:
    """Put back the chart's values; drop AtlasLab's where the chart set none (JupyterHub's default applies)."""
    for section, keys in CHART_OWNED.items():
        for key in keys:
            if (section, key) in kept:
                c[section][key] = kept[(section, key)]
            elif section in c:
                c[section].pop(key, None)


def local_base(url: str) -> str | None:
    """``http://127.0.0.1:PORT`` of a one-machine service URL, or None for anything else."""
    parsed = urlparse(url)
    if parsed.hostname == "127.0.0.1" and parsed.port:
        return f"{parsed.scheme}://127.0.0.1:{parsed.port}"
    return None


def rewrite(value: Any, moves: dict[str, str]) -> Any:
    """``value`` with each one-machine base URL replaced by where it lives in the cluster (strings only)."""
    if not isinstance(value, str):
        return value
    for old, new in moves.items():
        if value == old or value.startswith(old + "/"):
            return new + value[len(old) :]
    return value


def wire_services(c: Config, cluster: Cluster, tokens: dict[str, str]) -> dict[str, str]:
    """Give every service an address other pods reach; return how users' pods reach each one-machine URL."""
    for_users: dict[str, str] = {}
    for_hub: dict[str, str] = {}
    services = [dict(s) for s in (c.JupyterHub.get("services") or [])]
    for service in services:
        base = local_base(service.get("url", ""))
        if base is None:
            continue
        name = service["name"]
        if name in CHART_SERVICES:
            # The chart's Deployment serves it: drop the process the hub would start, keep name, roles and token.
            for key in ("command", "cwd", "environment", "user"):
                service.pop(key, None)
            service["url"] = cluster.service_url(name)
            if tokens.get(name):
                service["api_token"] = tokens[name]
            for_users[base] = for_hub[base] = service["url"]
        else:
            port = urlparse(base).port
            service["url"] = f"http://{cluster.pod_ip}:{port}"
            for_hub[base] = service["url"]
            # Through the proxy: its address does not change when the hub pod is replaced.
            for_users[base] = cluster.proxy_url
    for service in services:
        if isinstance(service.get("environment"), dict):
            service["environment"] = {k: rewrite(v, for_hub) for k, v in service["environment"].items()}
    c.JupyterHub.services = services
    return for_users


def user_environment(c: Config, moves: dict[str, str]) -> dict[str, Any]:
    """What AtlasLab gives users' servers on one machine, for KubeSpawner's pods: reachable URLs, no hub paths."""
    current = c.AtlasLabSpawner.get("environment")
    env = dict(current) if isinstance(current, dict) else {}
    return {k: rewrite(v, moves) for k, v in env.items() if k not in HUB_ONLY_ENV}


def configure_cluster(c: Config, loaded: LoadedConfig, cluster: Cluster, tokens: dict[str, str]) -> None:
    """Everything AtlasLab set for one machine, made to work across pods (after :func:`apply`)."""
    site = loaded.site.site
    c.JupyterHub.base_url = site.base_url
    moves = wire_services(c, cluster, tokens)
    base = c.KubeSpawner.get("environment")
    c.KubeSpawner.environment = {**(base if isinstance(base, dict) else {}), **user_environment(c, moves)}
    # Zero to JupyterHub's hub NetworkPolicy admits pods with this label, and (with interNamespaceAccessLabels:
    # accept) from namespaces with it: the tenants' namespaces carry it (helm/atlaslab/templates/tenants.yaml).
    labels = c.KubeSpawner.get("extra_labels")
    c.KubeSpawner.extra_labels = {
        **(labels if isinstance(labels, dict) else {}),
        "hub.jupyter.org/network-access-hub": "true",
    }


def configure_gateway_service(c: Config, cluster: Cluster, token: str, env: dict[str, str]) -> None:
    """Dask Gateway (the chart's ``gateway.enabled``, which generates its token): register it and tell users'
    pods where it and its scheduler proxy (Traefik, ``ATLASLAB_GATEWAY_PROXY_ADDRESS``) are."""
    if not token:
        return
    from atlaslab.compute.gateway import configure_hub

    address = f"http://atlaslab-gateway.{cluster.namespace}.svc:{CHART_SERVICE_PORT}"
    proxy = env.get("ATLASLAB_GATEWAY_PROXY_ADDRESS") or f"gateway://traefik.{cluster.namespace}.svc:8786"
    configure_hub(c, token, address, proxy)


def with_state_dir(loaded: LoadedConfig, state_dir: Path) -> LoadedConfig:
    """The site with its state on the hub's volume, whatever ``site.state_dir`` says for one machine."""
    site = loaded.site.model_copy(update={"site": loaded.site.site.model_copy(update={"state_dir": state_dir})})
    return LoadedConfig(site=site, source=loaded.source, rosters=loaded.rosters)


def materialise(mounted: Path, target: Path) -> Path:
    """Copy the mounted site (``atlaslab.yaml``, and ``files.json``: {relative path: text} for rosters and the
    like, since a ConfigMap key cannot hold a directory) to ``target``, where relative paths resolve."""
    target.mkdir(parents=True, exist_ok=True)
    files = mounted / "files.json"
    for relative, text in (json.loads(files.read_text()) if files.exists() else {}).items():
        path = (target / relative).resolve()
        if not path.is_relative_to(target.resolve()):
            raise ValueError(f"siteFiles: {relative!r} leaves the site directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    site = target / "atlaslab.yaml"
    site.write_text((mounted / "atlaslab.yaml").read_text())
    return site


def apply_in_hub_pod(c: Config, env: dict[str, str] | None = None) -> LoadedConfig:
    """The chart's ``hub.extraConfig``: apply the mounted site config on top of Zero to JupyterHub's config."""
    from .apply import apply

    env = dict(os.environ if env is None else env)
    mounted = Path(env.get("ATLASLAB_SITE_DIR") or DEFAULT_SITE_DIR)
    state_dir = Path(env.get("ATLASLAB_STATE_DIR") or DEFAULT_STATE_DIR)
    loaded = with_state_dir(load(materialise(mounted, state_dir / "site")), state_dir)
    kept = snapshot(c)
    apply(c, loaded)
    restore(c, kept)
    tokens = {name: env.get(var, "") for name, var in TOKEN_ENV.items()}
    cluster = cluster_from_env(env)
    configure_cluster(c, loaded, cluster, tokens)
    configure_gateway_service(c, cluster, env.get(GATEWAY_TOKEN_ENV, ""), env)
    return loaded
