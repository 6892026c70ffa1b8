"""What one feature adds to the hub, as a plain value; the hub wiring (:mod:`atlaslab.hub.apply`) assembles them.

A feature (grading, tracking, credits, the idle culler ...) never touches JupyterHub's config itself: it returns a
:class:`HubPart` naming its services, the roles they and its users need, the scopes every user and every user's
server must hold to reach it, and what users' servers need in their environment. :func:`merge` puts parts
together once, refusing two parts that claim the same service, role or environment variable, so the order in
which features are listed changes nothing and nothing is silently overwritten.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import ports
from .accounts import server_path

if TYPE_CHECKING:
    from atlaslab.config import LoadedConfig

# JupyterHub's default scopes of a server's own token (its 'server' role).
SERVER_TOKEN_SCOPES = ("users:activity!user", "access:servers!server")


def access_scope(service: str) -> str:
    return f"access:services!service={service}"


@dataclass(frozen=True)
class HubPart:
    name: str  # the feature, for error messages
    services: tuple[dict, ...] = ()
    roles: tuple[dict, ...] = ()
    user_scopes: tuple[str, ...] = ()  # held by every user (so by their tokens)
    server_scopes: tuple[str, ...] = ()  # held by the token of every user's server, besides the defaults
    # Environment of every user's server, on one machine and on Kubernetes; a value may be a callable of the spawner.
    server_env: Mapping[str, Any] = field(default_factory=dict)
    # Traits of the local spawner (AtlasLabSpawner) this feature owns.
    spawner: Mapping[str, Any] = field(default_factory=dict)


def site_service(loaded: LoadedConfig, name: str, offset: int, module: str, **env: str) -> dict:
    """A hub-managed service of AtlasLab's own: ``python -m MODULE`` on its fixed port, reading the site config."""
    return {
        "name": name,
        "url": f"http://127.0.0.1:{ports.service_port(loaded, offset)}",
        "command": [sys.executable, "-m", module],
        "display": False,
        "environment": {
            "ATLASLAB_CONFIG": str(loaded.source.resolve()) if loaded.source else "",
            "PATH": server_path(),
            **env,
        },
    }


class PartConflict(ValueError):
    """Two features claim the same thing; a programming error, never a site-config one."""


def _unique(kind: str, items: Iterable[tuple[str, str]]) -> None:
    seen: dict[str, str] = {}
    for key, owner in items:
        if key in seen and seen[key] != owner:
            raise PartConflict(f"{kind} {key!r} is set by both {seen[key]} and {owner}")
        seen[key] = owner


@dataclass(frozen=True)
class Assembled:
    """All parts together: what the hub wiring sets, each trait once."""

    services: list[dict]
    roles: list[dict]
    user_scopes: list[str]
    server_scopes: list[str]
    server_env: dict[str, Any]
    spawner: dict[str, Any]


def merge(parts: Iterable[HubPart]) -> Assembled:
    parts = list(parts)
    _unique("service", ((s["name"], p.name) for p in parts for s in p.services))
    _unique("role", ((r["name"], p.name) for p in parts for r in p.roles))
    _unique("server environment variable", ((k, p.name) for p in parts for k in p.server_env))
    _unique("spawner setting", ((k, p.name) for p in parts for k in p.spawner))

    def ordered(values: Iterable[str], start: Iterable[str] = ()) -> list[str]:
        out = list(start)
        out += [v for v in values if v not in out]
        return out

    return Assembled(
        services=[dict(s) for p in parts for s in p.services],
        roles=[dict(r) for p in parts for r in p.roles],
        user_scopes=ordered(s for p in parts for s in p.user_scopes),
        server_scopes=ordered((s for p in parts for s in p.server_scopes), SERVER_TOKEN_SCOPES),
        server_env={k: v for p in parts for k, v in p.server_env.items()},
        spawner={k: v for p in parts for k, v in p.spawner.items()},
    )
