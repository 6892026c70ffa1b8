"""The ASGI layer in front of MLflow: the hub's service prefix, and the end of the hub's OAuth login.

The proxy forwards /services/mlflow/... unchanged; MLflow is served at its root here, so every route, validator
and filter of MLflow's auth app sees the paths it was written for. ``/services/mlflow/oauth_callback`` is
answered here: the code the hub gives the browser is exchanged for a token, kept in an HttpOnly cookie
limited to the service's path.
"""

from __future__ import annotations

import http.cookies
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from .runtime import STATE_COOKIE, TOKEN_COOKIE, Runtime

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class ServicePrefix:
    def __init__(self, app: ASGIApp, runtime: Runtime, token_for_code: Callable[..., Awaitable[str]]):
        self.app = app
        self.runtime = runtime
        self.prefix = runtime.prefix
        self.token_for_code = token_for_code

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path: str = scope["path"]
        if path == self.prefix.rstrip("/"):
            return await _respond(send, 302, b"", [(b"location", self.prefix.encode())])
        if not path.startswith(self.prefix):
            return await _respond(send, 404, b"Not found\n")
        rest = "/" + path[len(self.prefix) :]
        if rest == "/oauth_callback" and scope["type"] == "http":
            return await self.oauth_callback(scope, send)
        raw = scope.get("raw_path") or path.encode()
        raw_prefix = self.prefix.encode()
        inner = dict(scope, path=rest, raw_path=b"/" + raw[len(raw_prefix) :] if raw.startswith(raw_prefix) else rest)
        inner["root_path"] = ""
        await self.app(inner, receive, send)

    async def oauth_callback(self, scope: dict, send: Any) -> None:
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode())
        code, state = query.get("code", [""])[0], query.get("state", [""])[0]
        cookie_state = _cookies(scope).get(STATE_COOKIE)
        pending = self.runtime.pop_state(state) if state and state == cookie_state else None
        if not code or pending is None:
            return await _respond(send, 400, b"Login state does not match; open the page again to log in.\n")
        next_url, verifier = pending
        try:
            token = await self.token_for_code(code, code_verifier=verifier, sync=False)
        except Exception:
            return await _respond(send, 403, b"The hub did not accept this login; open the page again.\n")
        secure = "; Secure" if self.runtime.secure_cookies else ""
        cookie = f"{TOKEN_COOKIE}={token}; Path={self.prefix}; HttpOnly; SameSite=Lax{secure}"
        clear = f"{STATE_COOKIE}=; Path={self.prefix}; Max-Age=0"
        headers = [(b"location", next_url.encode()), (b"set-cookie", cookie.encode()), (b"set-cookie", clear.encode())]
        await _respond(send, 302, b"", headers)


def _cookies(scope: dict) -> dict[str, str]:
    jar: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            try:
                jar.load(value.decode("latin-1"))
            except http.cookies.CookieError:
                continue
    return {key: morsel.value for key, morsel in jar.items()}


async def _respond(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    base = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": base + (headers or [])})
    await send({"type": "http.response.body", "body": body})
