"""Granting every user, and the token of every user's server, access to one of AtlasLab's services.

The exchange, MLflow and the credits service each decide what a caller may do there from the caller's hub
groups; the hub only has to let users' tokens reach them. Each function replaces nothing it did not add, so
applying the config twice gives the same lists.
"""

from __future__ import annotations

from traitlets.config import Config

# JupyterHub's default scopes of a server's own token (its 'server' role).
SERVER_TOKEN_SCOPES = ["users:activity!user", "access:servers!server"]


def access_scope(service: str) -> str:
    return f"access:services!service={service}"


def with_scope(values: object, default: list[str], scope: str) -> list[str]:
    current = list(values) if isinstance(values, list | set | tuple) else list(default)
    return current if scope in current else [*current, scope]


def grant_users_access(c: Config, service: str) -> None:
    """Users (so their tokens) and their servers' tokens may reach ``service``."""
    scope = access_scope(service)
    c.JupyterHub.extra_user_scopes = with_scope(c.JupyterHub.get("extra_user_scopes"), [], scope)
    c.Spawner.server_token_scopes = with_scope(c.Spawner.get("server_token_scopes"), SERVER_TOKEN_SCOPES, scope)


def replace_named(items: object, new: list[dict], names: set[str]) -> list[dict]:
    """``items`` (services or roles) with those named in ``names`` replaced by ``new``: in place where they were
    (so applying twice keeps the order), appended otherwise."""
    current = list(items) if isinstance(items, list) else []
    at = next((i for i, item in enumerate(current) if item.get("name") in names), len(current))
    kept = [item for item in current if item.get("name") not in names]
    at = min(at, len(kept))
    return kept[:at] + new + kept[at:]
