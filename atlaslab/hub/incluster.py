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

import dataclasses
import os
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from traitlets.config import Config

from atlaslab.compute.hubpart import gateway_part
from atlaslab.config import LoadedConfig
from atlaslab.config.mounted import load_mounted, state_dir
from atlaslab.core.hubpart import Assembled

from .apply import apply_plan, plan

# Where the chart runs the two services it deploys itself, and the hub environment variables holding their tokens
# (from the chart's Secret `atlaslab-service-tokens`).
CHART_SERVICES = {"exchange": "atlaslab-exchange", "mlflow": "atlaslab-mlflow"}
CHART_SERVICE_PORT = 8000
TOKEN_ENV = {"exchange": "ATLASLAB_EXCHANGE_TOKEN", "mlflow": "ATLASLAB_MLFLOW_TOKEN"}
# Dask Gateway's token: set only when the chart runs the gateway (the Secret's key is optional in the hub pod).
GATEWAY_TOKEN_ENV = "ATLASLAB_GATEWAY_TOKEN"


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


def wire_services(services: list[dict], cluster: Cluster, tokens: dict[str, str]) -> tuple[list[dict], dict[str, str]]:
    """Every service with an address other pods reach, and how users' pods reach each one-machine URL."""
    for_users: dict[str, str] = {}
    for_hub: dict[str, str] = {}
    services = [dict(s) for s in services]
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
    return services, for_users


def relocate(parts: Assembled, cluster: Cluster, tokens: dict[str, str]) -> Assembled:
    """What the features want on one machine, made to work across pods."""
    services, for_users = wire_services(parts.services, cluster, tokens)
    server_env = {k: rewrite(v, for_users) for k, v in parts.server_env.items()}
    return dataclasses.replace(parts, services=services, server_env=server_env)


def gateway(cluster: Cluster, env: dict[str, str]) -> list:
    """Dask Gateway (the chart's ``gateway.enabled``, which generates its token), when the chart runs it."""
    token = env.get(GATEWAY_TOKEN_ENV, "")
    if not token:
        return []
    address = f"http://atlaslab-gateway.{cluster.namespace}.svc:{CHART_SERVICE_PORT}"
    proxy = env.get("ATLASLAB_GATEWAY_PROXY_ADDRESS") or f"gateway://traefik.{cluster.namespace}.svc:8786"
    return [gateway_part(token, address, proxy)]


def apply_in_hub_pod(c: Config, env: dict[str, str] | None = None) -> LoadedConfig:
    """The chart's ``hub.extraConfig``: the mounted site applied beside Zero to JupyterHub's own config, which keeps
    the network, the hub database and the secrets it shares with the proxy."""
    env = dict(os.environ if env is None else env)
    loaded = load_mounted(env, state_dir(env) / "site")
    cluster = cluster_from_env(env)
    chart = {trait: dict(c.KubeSpawner.get(trait) or {}) for trait in ("environment", "extra_labels")}
    p = plan(loaded, extra=gateway(cluster, env), in_cluster=True, chart_pods=chart)
    tokens = {name: env.get(var, "") for name, var in TOKEN_ENV.items()}
    apply_plan(c, dataclasses.replace(p, parts=relocate(p.parts, cluster, tokens)))
    return loaded
