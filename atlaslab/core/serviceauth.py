"""The JSON API handler every AtlasLab service shares: callers are who the hub says their token belongs to.

The exchange, the autograder and the credits service take a JupyterHub token in ``Authorization: token ...``
(or ``Bearer``), never a cookie, so cross-site request forgery has nothing to ride on. The hub answers whose
token it is, its groups, and whether it holds ``access:services!service=NAME``; nothing the caller sends names
them. Errors are JSON ``{"status", "error"}`` with a message a person can act on; malformed bodies are a 4xx,
never a 500.

The application's settings carry ``hub_auth`` (a :class:`jupyterhub.services.auth.HubAuth` whose
``access_scopes`` name the service) and ``service_title`` (how messages name the service).
"""

from __future__ import annotations

import json
import re
from typing import Any

from tornado import web

AUTH_HEADER = re.compile(r"^(?:token|bearer)\s+(\S+)\s*$", re.IGNORECASE)
# Deeper JSON than this is refused before it is decoded: a service's bodies are small flat objects.
MAX_JSON_DEPTH = 32


class ServiceError(web.HTTPError):
    """An answer to the caller: ``status`` and a message that says what to do."""

    def __init__(self, status: int, message: str):
        super().__init__(status)
        self.message = message


def token_from(header: str) -> str | None:
    match = AUTH_HEADER.match(header or "")
    return match.group(1) if match else None


def _too_deep(text: bytes, limit: int) -> bool:
    """Whether brackets nest deeper than ``limit`` (strings are skipped), in one pass without decoding."""
    depth, in_string, escaped = 0, False, False
    for byte in text:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def parse_json_object(body: bytes, limit: int) -> dict[str, Any]:
    """A request body that must be one JSON object (an empty body is ``{}``); :class:`ServiceError` otherwise."""
    if len(body) > limit:
        raise ServiceError(413, f"the request body is larger than {limit} bytes")
    if not body.strip():
        return {}
    if _too_deep(body, MAX_JSON_DEPTH):
        raise ServiceError(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise ServiceError(400, "the request body is not UTF-8 text") from None
    except ValueError as e:
        raise ServiceError(400, f"the request body is not JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(data, dict):
        raise ServiceError(400, f"the request body must be a JSON object, not {type(data).__name__}")
    return data


class ServiceHandler(web.RequestHandler):
    """Base of every AtlasLab service's API handlers: token authentication and JSON answers."""

    # Set False on handlers only users may call (a service's own token is refused there).
    services_allowed = True
    # The authenticated caller's hub model (name, kind, admin, groups, scopes), set before any verb runs.
    model: dict[str, Any]

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    def check_xsrf_cookie(self) -> None:
        """Tokens only, never cookies."""

    @property
    def service_title(self) -> str:
        return self.settings.get("service_title", "this service")

    async def prepare(self) -> None:
        self.model = await self.authenticate()

    async def authenticate(self) -> dict[str, Any]:
        token = token_from(self.request.headers.get("Authorization", ""))
        if not token:
            raise ServiceError(401, "no token: send 'Authorization: token <your JupyterHub API token>'")
        hub_auth = self.settings["hub_auth"]
        model = await hub_auth.user_for_token(token, sync=False)
        if not model:
            raise ServiceError(403, "the hub does not accept this token (unknown, expired or revoked)")
        if model.get("kind") == "service" and not self.services_allowed:
            raise ServiceError(403, f"{self.service_title} answers users' tokens only, not a service's")
        if not hub_auth.check_scopes(hub_auth.access_scopes, model):
            needed = " or ".join(sorted(hub_auth.access_scopes))
            raise ServiceError(403, f"this token does not grant access to {self.service_title} (needs {needed})")
        return model

    def json_body(self, limit: int = 64 * 1024) -> dict[str, Any]:
        return parse_json_object(self.request.body, limit)

    def reply(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ServiceError):
            message = exc.message
        elif isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        elif status_code >= 500:
            message = "internal error; the service's log has the details"
        else:
            message = self._reason
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "error": message}))


class HealthHandler(web.RequestHandler):
    """``GET {prefix}``: which service answers here (no token needed, nothing private)."""

    def initialize(self, name: str) -> None:
        self.name = name

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"service": self.name, "api": "v1"}))
