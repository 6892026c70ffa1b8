"""Running one of AtlasLab's hub-managed services: its hub identity and address from the environment JupyterHub
gives a managed service, listening there, stopping cleanly on its signal."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlparse

from jupyterhub.services.auth import HubAuth
from tornado.httpserver import HTTPServer


@dataclass(frozen=True)
class ServiceAddress:
    name: str  # the service's name on the hub (its access scope names it)
    prefix: str  # URL prefix, /services/NAME/ behind the hub
    host: str
    port: int


def service_address(env: Mapping[str, str], default_name: str, default_port: int) -> ServiceAddress:
    """Where JupyterHub told the service to listen (JUPYTERHUB_SERVICE_URL, _PREFIX, _NAME)."""
    name = env.get("JUPYTERHUB_SERVICE_NAME") or default_name
    url = urlparse(env.get("JUPYTERHUB_SERVICE_URL") or f"http://127.0.0.1:{default_port}")
    prefix = env.get("JUPYTERHUB_SERVICE_PREFIX") or f"/services/{name}/"
    return ServiceAddress(
        name, prefix if prefix.endswith("/") else prefix + "/", url.hostname or "127.0.0.1", url.port or 80
    )


def hub_auth(env: Mapping[str, str], name: str, cache_seconds: int = 5) -> HubAuth:
    """The service's view of the hub: its own token, and callers need ``access:services!service=NAME``."""
    return HubAuth(
        api_token=env.get("JUPYTERHUB_API_TOKEN", ""),
        api_url=env.get("JUPYTERHUB_API_URL") or "http://127.0.0.1:8081/hub/api",
        cache_max_age=cache_seconds,
        access_scopes={f"access:services!service={name}"},
    )


def env_int(env: Mapping[str, str], name: str, default: int, service: str) -> int:
    """A whole number from the environment; a clear exit naming the variable when it is not one."""
    value = env.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise SystemExit(f"atlaslab-{service}: {name}={value!r} is not a whole number") from None


async def serve_until_stopped(server: HTTPServer, host: str, port: int) -> None:
    """Listen, then wait for SIGTERM (JupyterHub stopping the service) or SIGINT; stop taking connections."""
    server.listen(port, host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.stop()
    await server.close_all_connections()


def run_service(name: str, serve: Callable[[dict], Awaitable[None]]) -> None:
    """Entry point of ``python -m ...``: log lines tagged with the service's name, configured from the environment."""
    logging.basicConfig(level=logging.INFO, format=f"[%(levelname)1.1s %(asctime)s {name}] %(message)s")
    asyncio.run(serve(dict(os.environ)))
