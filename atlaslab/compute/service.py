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
import logging
import time

from tornado import web
from tornado.httpserver import HTTPServer

from atlaslab.compute import credits as credits_mod
from atlaslab.compute.allocation import GpuAllocator
from atlaslab.compute.usage import UsageLedger
from atlaslab.config import LoadedConfig, load
from atlaslab.core.membership import Membership
from atlaslab.core.serviceauth import HealthHandler, ServiceHandler
from atlaslab.core.serving import hub_auth, run_service, serve_until_stopped, service_address

log = logging.getLogger("atlaslab.credits")
SERVICE_NAME = "credits"


class CreditsHandler(ServiceHandler):
    services_allowed = False

    def initialize(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded

    async def get(self) -> None:
        report = await asyncio.to_thread(self.report, self.model["name"], self.model.get("groups") or [])
        self.reply(report)

    def report(self, user: str, groups: list[str]) -> dict:
        member = Membership.of(groups)
        charge = credits_mod.Charge.of(user, member)
        compute = self.loaded.state_dir / "compute"
        budgets: list[dict] = []
        notices: list[dict] = []
        if (compute / "usage.sqlite").exists():
            ledger = UsageLedger(compute / "usage.sqlite")
            budgets = [b.as_dict() for b in credits_mod.budgets(ledger, self.loaded.site.credits, charge, time.time())]
            notices = ledger.notices(user, since=time.time() - 31 * 86400)
        gpus: list[str] = []
        if (compute / "gpus.sqlite").exists():
            held = GpuAllocator(compute / "gpus.sqlite", []).assignments()
            gpus = sorted(u for holder, uuids in held.items() if holder.split("/", 1)[0] == user for u in uuids)
        credits = self.loaded.site.credits
        return {
            "user": user,
            "tenant": member.tenant,
            "teams": list(member.teams),
            "budgets": budgets,
            "warn_at": credits.warn_at,
            "stop_at": credits.stop_at,
            "notices": notices,
            "gpus": gpus,
        }


def make_app(loaded: LoadedConfig, hub_auth, prefix: str) -> web.Application:
    prefix = prefix if prefix.endswith("/") else prefix + "/"
    return web.Application(
        [
            (prefix.rstrip("/") + r"/?", HealthHandler, {"name": "atlaslab-credits"}),
            (prefix + r"api/v1/me", CreditsHandler, {"loaded": loaded}),
        ],
        hub_auth=hub_auth,
        service_title="the credits service",
    )


async def serve(env: dict) -> None:
    loaded = load(env.get("ATLASLAB_CONFIG") or None, check_secrets=False)
    where = service_address(env, SERVICE_NAME, 10103)
    log.info("AtlasLab credits listening on http://%s:%d%s", where.host, where.port, where.prefix)
    app = make_app(loaded, hub_auth(env, where.name), where.prefix)
    await serve_until_stopped(HTTPServer(app), where.host, where.port)


def main() -> None:
    run_service("credits", serve)


if __name__ == "__main__":
    main()
