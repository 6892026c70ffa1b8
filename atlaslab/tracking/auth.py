"""MLflow's ``authorization_function``: who is calling, from a hub token, never from anything else they send.

API clients (MLflow's Python client in a user's server) send a hub token as ``Authorization: Bearer``; browsers
carry the token the hub's OAuth login gave them in a cookie (see :mod:`.web`). The hub says whose token it is and
whether it may use this service; headers such as X-Remote-User are never read. A browser without a login is
sent to the hub's login; anything else gets 401 and no data.
"""

from __future__ import annotations

import re
import urllib.parse

from flask import Response, request
from jupyterhub.services.auth import HubOAuth
from werkzeug.datastructures import Authorization

from .runtime import STATE_COOKIE, TOKEN_COOKIE, current

_BEARER = re.compile(r"^(?:token|bearer)\s+(\S+)\s*$", re.IGNORECASE)
_oauth: HubOAuth | None = None


def oauth() -> HubOAuth:
    global _oauth
    if _oauth is None:
        _oauth = HubOAuth()  # client id, secret, callback and hub URLs from the service's environment
    return _oauth


def _token() -> tuple[str | None, bool]:
    """(token, from_cookie)."""
    header = request.headers.get("Authorization", "")
    if header:
        match = _BEARER.match(header)
        return (match.group(1) if match else None), False
    return request.cookies.get(TOKEN_COOKIE) or None, True


def _is_page_visit() -> bool:
    # A person's browser opening a page (not the UI's own API calls): worth sending to the hub's login.
    return (
        request.method == "GET"
        and "text/html" in request.headers.get("Accept", "")
        and not request.path.startswith(("/api/", "/ajax-api/", "/get-artifact", "/model-versions/"))
    )


def login_redirect() -> Response:
    runtime = current()
    here = runtime.prefix + request.full_path.lstrip("/").rstrip("?")
    verifier, challenge, method = oauth().generate_pkce_code_challenge()
    state = runtime.new_state(runtime.safe_next(here), verifier)
    query = urllib.parse.urlencode({"state": state, "code_challenge": challenge, "code_challenge_method": method})
    response = Response(status=302, headers={"Location": f"{oauth().login_url}&{query}"})
    response.set_cookie(
        STATE_COOKIE,
        state,
        max_age=600,
        path=runtime.prefix,
        httponly=True,
        samesite="Lax",
        secure=runtime.secure_cookies,
    )
    return response


def unauthenticated(message: str) -> Response:
    if _is_page_visit():
        return login_redirect()
    return Response(f"{message}\n", status=401, mimetype="text/plain", headers={"WWW-Authenticate": "Bearer"})


def authenticate() -> Authorization | Response:
    token, from_cookie = _token()
    if not token:
        return unauthenticated("Log in to the hub, or send a hub token: Authorization: Bearer TOKEN")
    owner = current().hub.token_owner(token)
    if owner is None:
        response = unauthenticated("This token is not valid (expired, revoked or unknown to the hub)")
        if from_cookie:
            response.delete_cookie(TOKEN_COOKIE, path=current().prefix)
        return response
    if not owner.allowed:
        return Response(
            "This token may not use experiment tracking (it lacks access:services!service=mlflow)\n",
            status=403,
            mimetype="text/plain",
        )
    return Authorization("basic", {"username": owner.name})
