"""The service's settings, read once from the environment the hub starts it with, and its shared helpers."""

from __future__ import annotations

import os
import secrets
import threading
import time
from dataclasses import dataclass, field

from .hubapi import HubAPI

STATE_COOKIE = "atlaslab-mlflow-oauth-state"
TOKEN_COOKIE = "atlaslab-mlflow-token"
STATE_MAX_AGE = 600


@dataclass
class Runtime:
    prefix: str  # the service's URL prefix under the hub, e.g. /services/mlflow/
    hub: HubAPI
    secure_cookies: bool
    _states: dict[str, tuple[float, str, str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def new_state(self, next_url: str, code_verifier: str) -> str:
        """An OAuth state id bound to the browser by a cookie; the code verifier never leaves this process."""
        state = secrets.token_urlsafe(24)
        now = time.monotonic()
        with self._lock:
            for key in [k for k, (t, _, _) in self._states.items() if now - t > STATE_MAX_AGE]:
                del self._states[key]
            self._states[state] = (now, next_url, code_verifier)
        return state

    def pop_state(self, state: str) -> tuple[str, str] | None:
        with self._lock:
            entry = self._states.pop(state, None)
        if entry is None or time.monotonic() - entry[0] > STATE_MAX_AGE:
            return None
        return entry[1], entry[2]

    def safe_next(self, next_url: str) -> str:
        """Only paths under the service: a login never sends a browser anywhere else."""
        if next_url.startswith(self.prefix) and "//" not in next_url and "\\" not in next_url:
            return next_url
        return self.prefix


_current: Runtime | None = None


def init_from_env() -> Runtime:
    global _current
    ttl = float(os.environ.get("ATLASLAB_MLFLOW_CACHE_TTL", "10"))
    hub = HubAPI(
        os.environ["JUPYTERHUB_API_URL"],
        os.environ["JUPYTERHUB_API_TOKEN"],
        os.environ.get("JUPYTERHUB_SERVICE_NAME", "mlflow"),
        ttl,
    )
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/mlflow/")
    secure = os.environ.get("ATLASLAB_MLFLOW_PUBLIC_URL", "").startswith("https:")
    _current = Runtime(prefix if prefix.endswith("/") else prefix + "/", hub, secure)
    return _current


def current() -> Runtime:
    if _current is None:
        raise RuntimeError("atlaslab.tracking.runtime is not initialised (run atlaslab.tracking.server)")
    return _current
