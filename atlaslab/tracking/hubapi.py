"""What the hub says about tokens, users and groups, asked at request time and remembered for a few seconds.

The cache is short (``tracking.permission_cache``) so that a revoked token, a user removed from a team or a
new course member takes effect without restarting MLflow; within that window a burst of calls from one
notebook costs one hub round trip instead of one per call.
"""

from __future__ import annotations

import hashlib
import threading
import urllib.parse
from dataclasses import dataclass

import httpx
from cachetools import TTLCache
from jupyterhub.services.auth import check_scopes

from .policy import Member


@dataclass(frozen=True)
class TokenOwner:
    """Who a token belongs to; ``allowed`` is False when the token lacks the scope to use this service."""

    name: str
    allowed: bool


class HubAPI:
    def __init__(self, api_url: str, service_token: str, service_name: str, ttl: float):
        self.http = httpx.Client(
            base_url=api_url.rstrip("/") + "/",
            headers={"Authorization": f"token {service_token}"},
            timeout=15,
        )
        self.access_scope = f"access:services!service={service_name}"
        self._lock = threading.Lock()
        self._tokens: TTLCache[str, TokenOwner | None] = TTLCache(maxsize=20_000, ttl=ttl)
        self._members: TTLCache[str, Member | None] = TTLCache(maxsize=20_000, ttl=ttl)
        self._groups: TTLCache[str, set[str]] = TTLCache(maxsize=5_000, ttl=ttl)

    def _cached(self, cache: TTLCache, key: str, fetch):
        with self._lock:
            if key in cache:
                return cache[key]
        value = fetch()
        with self._lock:
            cache[key] = value
        return value

    def token_owner(self, token: str) -> TokenOwner | None:
        """The user a hub token belongs to, None for an unknown, expired or revoked token (or a service's)."""
        key = hashlib.sha256(token.encode()).hexdigest()
        return self._cached(self._tokens, key, lambda: self._ask_token(token))

    def _ask_token(self, token: str) -> TokenOwner | None:
        # Asked with the token itself: the hub answers with its owner and the token's own scopes.
        r = self.http.get("user", headers={"Authorization": f"token {token}"})
        if r.status_code != 200:
            return None
        model = r.json()
        if model.get("kind", "user") != "user" or not model.get("name"):
            return None
        allowed = bool(check_scopes({self.access_scope}, set(model.get("scopes") or [])))
        return TokenOwner(model["name"], allowed)

    def member(self, name: str) -> Member | None:
        """The user's admin flag and groups, asked with the service's own token (read:users)."""
        return self._cached(self._members, name, lambda: self._ask_member(name))

    def _ask_member(self, name: str) -> Member | None:
        r = self.http.get(f"users/{urllib.parse.quote(name, safe='')}")
        if r.status_code == 404:
            return None
        r.raise_for_status()
        model = r.json()
        return Member.from_groups(model["name"], model.get("groups") or [], bool(model.get("admin")))

    def group_members(self, group: str) -> set[str]:
        return self._cached(self._groups, group, lambda: self._ask_group(group))

    def _ask_group(self, group: str) -> set[str]:
        r = self.http.get(f"groups/{urllib.parse.quote(group, safe='')}")
        if r.status_code == 404:
            return set()
        r.raise_for_status()
        return set(r.json().get("users") or [])
