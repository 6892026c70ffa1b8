"""``python -m atlaslab.compute.service``: users read their budgets, notices and GPUs (the session's credits view).

A hub-managed service (it reads the usage ledger in STATE_DIR/compute, the hub's account's). Every user and
every user's server holds ``access:services!service=credits``; a caller sees only their own budgets (the
identity comes from the token, there is no user parameter). JupyterLab's workbench panel reads it with the
server's own token.

    GET {prefix}api/v1/me     -> {"user", "tenant", "teams", "budgets": [...], "notices": [...], "gpus": [...]}

(Administrators see everyone's usage with ``atlaslab usage report``.)

Environment: ATLASLAB_CONFIG (the site config; empty: embedded defaults), besides JupyterHub's own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from urllib.parse import urlparse

from jupyterhub.services.auth import HubAuth
from tornado import web
from tornado.httpserver import HTTPServer

from atlaslab.compute import credits as credits_mod
from atlaslab.compute.allocation import GpuAllocator
from atlaslab.compute.usage import UsageLedger
from atlaslab.config import LoadedConfig, load
from atlaslab.grading.exchange.api import AUTH_HEADER
from atlaslab.serving import run_service, serve_until_stopped

log = logging.getLogger("atlaslab.credits")
SERVICE_NAME = "credits"


class CreditsHandler(web.RequestHandler):
    def initialize(self, loaded: LoadedConfig, hub_auth: HubAuth) -> None:
        self.loaded, self.hub_auth = loaded, hub_auth

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")

    def check_xsrf_cookie(self) -> None:
        """Tokens only, never cookies."""

    def fail(self, status: int, message: str) -> None:
        self.set_status(status)
        self.finish(json.dumps({"status": status, "error": message}))

    async def get(self) -> None:
        m = AUTH_HEADER.match(self.request.headers.get("Authorization", ""))
        if not m:
            return self.fail(401, "no token: send 'Authorization: token <your JupyterHub API token>'")
        model = await self.hub_auth.user_for_token(m.group(1), sync=False)
        if not model or model.get("kind") == "service":
            return self.fail(403, "the hub does not accept this token as a user's")
        if not self.hub_auth.check_scopes(self.hub_auth.access_scopes, model):
            return self.fail(403, "this token does not grant access to the credits service")
        report = await asyncio.to_thread(self.report, model["name"], model.get("groups") or [])
        self.finish(json.dumps(report))

    def report(self, user: str, groups: list[str]) -> dict:
        tenants = sorted(g.split(":", 1)[1] for g in groups if g.startswith("tenant:") and g.count(":") == 1)
        teams = sorted(g.split(":", 1)[1] for g in groups if g.startswith("team:"))
        tenant = tenants[0] if tenants else None
        compute = self.loaded.state_dir / "compute"
        budgets: list[dict] = []
        notices: list[dict] = []
        if (compute / "usage.sqlite").exists():
            ledger = UsageLedger(compute / "usage.sqlite")
            budgets = [
                b.as_dict()
                for b in credits_mod.budgets(ledger, self.loaded.site.credits, user, tenant, teams, time.time())
            ]
            notices = ledger.notices(user, since=time.time() - 31 * 86400)
        gpus: list[str] = []
        if (compute / "gpus.sqlite").exists():
            held = GpuAllocator(compute / "gpus.sqlite", []).assignments()
            gpus = sorted(u for holder, uuids in held.items() if holder.split("/", 1)[0] == user for u in uuids)
        credits = self.loaded.site.credits
        return {
            "user": user,
            "tenant": tenant,
            "teams": teams,
            "budgets": budgets,
            "warn_at": credits.warn_at,
            "stop_at": credits.stop_at,
            "notices": notices,
            "gpus": gpus,
        }


class HealthHandler(web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"service": "atlaslab-credits", "api": "v1"}))


def make_app(loaded: LoadedConfig, hub_auth: HubAuth, prefix: str) -> web.Application:
    prefix = prefix if prefix.endswith("/") else prefix + "/"
    kw = {"loaded": loaded, "hub_auth": hub_auth}
    return web.Application(
        [
            (prefix.rstrip("/") + r"/?", HealthHandler),
            (prefix + r"api/v1/me", CreditsHandler, kw),
        ]
    )


async def serve(env: dict) -> None:
    loaded = load(env.get("ATLASLAB_CONFIG") or None, check_secrets=False)
    name = env.get("JUPYTERHUB_SERVICE_NAME") or SERVICE_NAME
    hub_auth = HubAuth(
        api_token=env.get("JUPYTERHUB_API_TOKEN", ""),
        api_url=env.get("JUPYTERHUB_API_URL") or "http://127.0.0.1:8081/hub/api",
        cache_max_age=5,
        access_scopes={f"access:services!service={name}"},
    )
    url = urlparse(env.get("JUPYTERHUB_SERVICE_URL") or "http://127.0.0.1:10103")
    prefix = env.get("JUPYTERHUB_SERVICE_PREFIX") or f"/services/{name}/"
    log.info("AtlasLab credits listening on %s%s", url.geturl(), prefix)
    await serve_until_stopped(
        HTTPServer(make_app(loaded, hub_auth, prefix)), url.hostname or "127.0.0.1", url.port or 80
    )


def main() -> None:
    run_service("credits", serve)


if __name__ == "__main__":
    main()
