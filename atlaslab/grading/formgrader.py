"""A Jupyter server extension for a course's formgrader: its Autograde button grades in AtlasLab's sandbox.

nbgrader's formgrader autogrades in its own process, i.e. it runs students' code as the course's grader
account, next to the gradebook. Loaded after nbgrader's formgrader, this extension puts its own handler in
front of the formgrader's autograde route; the handler asks the hub's ``autograder`` service
(:mod:`atlaslab.grading.service`) to grade the submission with ``atlaslab grade`` and answers in the shape the
formgrader's page expects ({success, log, error}).
"""

from __future__ import annotations

import json
import os

import httpx
from jupyter_server.serverapp import ServerApp
from nbgrader.server_extensions.formgrader.apihandlers import AutogradeHandler
from nbgrader.server_extensions.formgrader.base import check_notebook_dir, check_xsrf
from tornado import web
from tornado.routing import HostMatches, Rule
from tornado.web import _ApplicationRouter

ROUTE = r"/formgrader/api/submission/([^/]+)/([^/]+)/autograde"
# A whole class's submission can take minutes; the formgrader's page waits for the answer.
TIMEOUT = httpx.Timeout(30.0, read=3600.0)


class SandboxedAutogradeHandler(AutogradeHandler):
    @web.authenticated
    @check_xsrf
    @check_notebook_dir
    async def post(self, assignment_id: str, student_id: str) -> None:
        url = os.environ.get("ATLASLAB_AUTOGRADER_URL", "")
        token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
        course = self.coursedir.course_id
        if not url or not token:
            self.write(json.dumps({"success": False, "log": "", "error": "the AtlasLab autograder is not configured"}))
            return
        endpoint = f"{url.rstrip('/')}/api/v1/courses/{course}/assignments/{assignment_id}/grade"
        try:
            async with httpx.AsyncClient(timeout=TIMEOUT) as client:
                r = await client.post(
                    endpoint,
                    json={"students": [student_id], "force": True},
                    headers={"Authorization": f"token {token}"},
                )
            result = r.json()
            if r.status_code != 200:
                result = {"success": False, "log": "", "error": result.get("error") or f"HTTP {r.status_code}"}
        except (httpx.HTTPError, ValueError) as e:
            result = {"success": False, "log": "", "error": f"the AtlasLab autograder did not answer: {e}"}
        # The page JSON.parse()s the body, as it does nbgrader's own answer.
        self.write(json.dumps({k: result.get(k, "") for k in ("success", "log", "error")}))


def _jupyter_server_extension_points() -> list[dict]:
    return [{"module": "atlaslab.grading.formgrader"}]


def _load_jupyter_server_extension(serverapp: ServerApp) -> None:
    web_app = serverapp.web_app
    pattern = web_app.settings["base_url"].rstrip("/") + ROUTE
    # Tornado tries host rules in order and takes the first route that matches: ahead of nbgrader's.
    rule = Rule(HostMatches(".*$"), _ApplicationRouter(web_app, [(pattern, SandboxedAutogradeHandler)]))
    web_app.default_router.rules.insert(0, rule)
    serverapp.log.info("AtlasLab: the formgrader's autograde runs in the sandbox (%s)", pattern)
