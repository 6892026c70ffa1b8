"""``python -m atlaslab.grading.service``: the autograder service, so autograding from the formgrader is sandboxed.

A course's formgrader runs as the course's grader account, which can neither create the sandbox's accounts,
cgroups and namespaces nor should it ever execute students' code with access to the gradebook (nbgrader's own
autograde would). This hub-managed service runs as the hub's user (root) and runs ``atlaslab grade`` (the
parallel sandboxed autograder; its trusted side drops to the grader account) for callers the hub says are staff
of the course: the course's formgrader service, its instructors and TAs, and admins.

API (a hub token in ``Authorization: token ...``; access needs ``access:services!service=autograder``):

    POST {prefix}api/v1/courses/COURSE/assignments/ASSIGNMENT/grade   {"students": [...], "force": false}
        -> {"success": bool, "outcomes": [{student, status, reason, score, max_score, skipped, seconds}],
            "log": "...", "error": "..."}

Grading runs of one course are queued (one at a time per course: they share its gradebook).

Environment (besides what JupyterHub sets for a managed service):

ATLASLAB_CONFIG                   the site config file (empty: the embedded defaults)
ATLASLAB_GRADE_STAFF_SERVICES     JSON {service name: course}: services that are staff of a course (formgraders)
ATLASLAB_GRADE_CACHE_SECONDS      how long the hub's answer about a token (and its groups) is reused (default 5)
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field

from jupyterhub.services.auth import HubAuth
from tornado import web
from tornado.httpserver import HTTPServer

from atlaslab.core.serviceauth import HealthHandler, ServiceError
from atlaslab.core.serving import ServiceAddress, env_int, hub_auth, run_service, serve_until_stopped, service_address
from atlaslab.grading.exchange.api import ApiHandler

log = logging.getLogger("atlaslab.autograder")
SERVICE_NAME = "autograder"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
MAX_BODY = 64 * 1024


@dataclass
class GradeContext:
    """What the handlers share; ``hub_auth`` and ``staff_services`` are what the exchange's auth reads."""

    hub_auth: HubAuth
    config: str = ""
    staff_services: dict[str, str] = field(default_factory=dict)
    locks: defaultdict[str, asyncio.Lock] = field(default_factory=lambda: defaultdict(asyncio.Lock))


def grade_command(ctx: GradeContext, course: str, assignment: str, students: list[str], force: bool) -> list[str]:
    cmd = [sys.executable, "-m", "atlaslab.cli", "grade", course, assignment, "--json"]
    for student in students:
        cmd += ["--student", student]
    if force:
        cmd.append("--force")
    if ctx.config:
        cmd += ["--config", ctx.config]
    return cmd


class GradeHandler(ApiHandler):
    ctx: GradeContext  # type: ignore[assignment]

    async def post(self, course: str, assignment: str) -> None:
        course, assignment = self.ident(course, "course"), self.ident(assignment, "assignment")
        self.require_staff(course, "autograde its submissions")
        body = self.json_body(MAX_BODY)
        students = body.get("students") or []
        if not isinstance(students, list) or not all(isinstance(s, str) for s in students):
            raise ServiceError(400, "'students' must be a list of student ids")
        students = [self.ident(s, "student") for s in students]
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise ServiceError(400, "'force' must be true or false")
        cmd = grade_command(self.ctx, course, assignment, students, force)
        who = f"{self.caller.kind} {self.caller.name}"
        log.info("%s grades %s/%s%s", who, course, assignment, f" for {', '.join(students)}" if students else "")
        async with self.ctx.locks[course]:
            proc = await asyncio.create_subprocess_exec(
                *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL
            )
            out, err = await proc.communicate()
        self.reply(grade_result(proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")))


def grade_result(returncode: int, stdout: str, stderr: str) -> dict:
    """The formgrader's shape ({success, log, error}) plus each student's outcome."""
    log_text = ANSI.sub("", stderr).strip()
    outcomes: list[dict] = []
    last = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    if returncode == 0:
        try:
            outcomes = json.loads(last)
        except ValueError:
            return {"success": False, "outcomes": [], "log": log_text, "error": f"unreadable result: {last[:200]}"}
    if returncode != 0:
        lines = [line for line in log_text.splitlines() if line.strip()]
        return {"success": False, "outcomes": [], "log": log_text, "error": lines[-1] if lines else "grading failed"}
    if not outcomes:
        return {"success": False, "outcomes": [], "log": log_text, "error": "no collected submission to grade"}
    summary = "\n".join(
        f"{o['student']}: {o['status']}"
        + (f", {o['score']:g} / {o['max_score']:g}" if o.get("score") is not None and o.get("max_score") else "")
        + (f" ({o['reason']})" if o.get("reason") else "")
        for o in outcomes
    )
    return {"success": True, "outcomes": outcomes, "log": f"{summary}\n\n{log_text}".strip(), "error": ""}


def make_app(ctx: GradeContext, prefix: str) -> web.Application:
    if not prefix.endswith("/"):
        prefix += "/"
    kw = {"ctx": ctx}
    routes = [
        (prefix.rstrip("/") + r"/?", HealthHandler, {"name": "atlaslab-autograder"}),
        (prefix + r"api/v1/courses/(?P<course>[^/]+)/assignments/(?P<assignment>[^/]+)/grade", GradeHandler, kw),
    ]
    return web.Application(routes, hub_auth=ctx.hub_auth, service_title="the autograder")


def context_from_env(env: dict) -> tuple[GradeContext, ServiceAddress]:
    where = service_address(env, SERVICE_NAME, 10101)
    ctx = GradeContext(
        hub_auth=hub_auth(env, where.name, env_int(env, "ATLASLAB_GRADE_CACHE_SECONDS", 5, "autograder")),
        config=env.get("ATLASLAB_CONFIG", ""),
        staff_services=json.loads(env.get("ATLASLAB_GRADE_STAFF_SERVICES") or "{}"),
    )
    return ctx, where


async def serve(env: dict) -> None:
    ctx, where = context_from_env(env)
    log.info("AtlasLab autograder listening on http://%s:%d%s", where.host, where.port, where.prefix)
    server = HTTPServer(make_app(ctx, where.prefix), max_body_size=MAX_BODY)
    await serve_until_stopped(server, where.host, where.port)


def main() -> None:
    run_service("autograder", serve)


if __name__ == "__main__":
    main()
