"""Hub-managed services: the idle culler, the Prometheus scrape identity, the CLI's identity, extras."""

from __future__ import annotations

import sys

from atlaslab.config import LoadedConfig
from atlaslab.core.hubpart import HubPart
from atlaslab.core.state import StateDir

CLI_SERVICE = "atlaslab-cli"
METRICS_SERVICE = "prometheus"
CULLER_SERVICE = "idle-culler"


def idle_culler_service(loaded: LoadedConfig) -> tuple[dict, dict] | None:
    lim = loaded.site.limits
    if not loaded.site.services.idle_culler or (lim.idle_cull_after == 0 and lim.max_server_age == 0):
        return None
    timeout = lim.idle_cull_after or lim.max_server_age
    every = max(10, min(300, timeout // 10))
    command = [sys.executable, "-m", "jupyterhub_idle_culler", f"--timeout={timeout}", f"--cull-every={every}"]
    if lim.max_server_age:
        command.append(f"--max-age={lim.max_server_age}")
    service = {"name": CULLER_SERVICE, "command": command, "display": False}
    role = {
        "name": "atlaslab-idle-culler",
        "description": "Stop idle servers",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        "services": [CULLER_SERVICE],
    }
    return service, role


def metrics_service(loaded: LoadedConfig, state: StateDir) -> tuple[dict, dict] | None:
    if not loaded.site.services.metrics:
        return None
    service = {"name": METRICS_SERVICE, "api_token": state.secret("metrics-token"), "display": False}
    role = {
        "name": "atlaslab-metrics",
        "description": "Scrape /hub/metrics",
        "scopes": ["read:metrics"],
        "services": [METRICS_SERVICE],
    }
    return service, role


def cli_service(state: StateDir) -> tuple[dict, dict]:
    """The identity `atlaslab status` and `atlaslab users import` use; its token is readable by root only."""
    service = {"name": CLI_SERVICE, "api_token": state.secret("cli-token"), "display": False}
    role = {
        "name": "atlaslab-cli",
        "description": "The atlaslab command on the hub machine",
        "scopes": ["admin:users", "admin:groups", "admin:servers", "read:hub", "list:services", "read:services"],
        "services": [CLI_SERVICE],
    }
    return service, role


def extra_services(loaded: LoadedConfig) -> list[tuple[dict, dict | None]]:
    out: list[tuple[dict, dict | None]] = []
    for extra in loaded.site.services.extra:
        service: dict = {"name": extra.name, "command": extra.command, "environment": dict(extra.environment)}
        if extra.port:
            service["url"] = f"http://127.0.0.1:{extra.port}"
        role = (
            {"name": f"service-{extra.name}", "scopes": list(extra.scopes), "services": [extra.name]}
            if extra.scopes
            else None
        )
        out.append((service, role))
    return out


def hub_part(loaded: LoadedConfig, state: StateDir) -> HubPart:
    """The hub's own services: the CLI's identity, the idle culler and the metrics scraper when enabled, extras."""
    pairs = [cli_service(state)]
    for optional in (idle_culler_service(loaded), metrics_service(loaded, state)):
        if optional:
            pairs.append(optional)
    pairs += extra_services(loaded)
    # The workbench panel shows the time left before the idle cull and the user's courses: it reads the user's own
    # model (last_activity, groups) with the server's token.
    culled = bool(loaded.site.services.idle_culler and loaded.site.limits.idle_cull_after)
    return HubPart(
        "services",
        services=tuple(service for service, _ in pairs),
        roles=tuple(role for _, role in pairs if role),
        server_scopes=("read:users!user",),
        server_env={"ATLASLAB_IDLE_CULL_AFTER": str(int(loaded.site.limits.idle_cull_after) if culled else 0)},
    )
