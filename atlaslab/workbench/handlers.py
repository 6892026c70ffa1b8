"""Tornado handlers of the workbench API; authenticated as the server's user (Jupyter server's own auth)."""

from __future__ import annotations

import asyncio
import json
import os

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from . import sources


class _Base(APIHandler):
    def reply(self, data: object) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))

    def write_error(self, status_code: int, **kwargs: object) -> None:
        """Every error as {"error": message}, which the panel shows in place of the section."""
        exc = kwargs.get("exc_info")
        message = self._reason
        if exc and isinstance(exc[1], web.HTTPError) and exc[1].log_message:  # type: ignore[index]
            message = exc[1].log_message  # type: ignore[index]
        elif exc:
            message = f"{type(exc[1]).__name__}: {exc[1]}"  # type: ignore[index]
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message}))

    def unavailable(self, e: sources.Unavailable) -> None:
        self.set_status(503)
        self.reply({"error": str(e)})


class EnvironmentHandler(_Base):
    @web.authenticated
    async def get(self) -> None:
        self.reply(await asyncio.to_thread(sources.environment, dict(os.environ)))


class CreditsHandler(_Base):
    @web.authenticated
    async def get(self) -> None:
        try:
            self.reply(await sources.credits(dict(os.environ)))
        except sources.Unavailable as e:
            self.unavailable(e)


class RunsHandler(_Base):
    @web.authenticated
    async def get(self) -> None:
        try:
            self.reply({"runs": await asyncio.to_thread(sources.runs, dict(os.environ))})
        except sources.Unavailable as e:
            self.unavailable(e)


class IdleHandler(_Base):
    """The time left before the hub's idle culler stops this server."""

    @web.authenticated
    async def get(self) -> None:
        env = dict(os.environ)
        try:
            self.reply(sources.idle(await sources.hub_user(env), env))
        except sources.Unavailable as e:
            self.unavailable(e)


class CoursesHandler(_Base):
    """The user's courses (hub groups) with their next due dates (the exchange); an exchange that cannot answer
    leaves the courses listed with its reason in ``error``."""

    @web.authenticated
    async def get(self) -> None:
        env = dict(os.environ)
        try:
            self.reply(await sources.courses(await sources.hub_user(env), env))
        except sources.Unavailable as e:
            self.unavailable(e)


class DaskHandler(_Base):
    """The server's own Dask cluster (the panel's start/stop button); notebooks get theirs with cluster()."""

    client = None

    def status(self) -> dict:
        c = DaskHandler.client
        if c is None or c.status != "running":
            return {"running": False}
        workers = c.scheduler_info()["workers"]
        return {"running": True, "dashboard": c.dashboard_link, "workers": len(workers)}

    @web.authenticated
    async def get(self) -> None:
        self.reply(self.status())

    @web.authenticated
    async def post(self) -> None:
        action = (self.get_json_body() or {}).get("action")
        if action == "start" and DaskHandler.client is None:
            from atlaslab.compute.dask_cluster import start_here

            DaskHandler.client = await asyncio.to_thread(start_here)
        elif action == "stop" and DaskHandler.client is not None:
            client, DaskHandler.client = DaskHandler.client, None
            await asyncio.to_thread(_close, client)
        elif action not in ("start", "stop"):
            raise web.HTTPError(400, "action must be 'start' or 'stop'")
        self.reply(self.status())


def _close(client) -> None:
    cluster = client.cluster
    client.close()
    if cluster is not None:
        cluster.close()


def handlers(base_url: str) -> list[tuple[str, type]]:
    api = url_path_join(base_url, "atlaslab", "api", "workbench")
    return [
        (api + "/environment", EnvironmentHandler),
        (api + "/credits", CreditsHandler),
        (api + "/runs", RunsHandler),
        (api + "/idle", IdleHandler),
        (api + "/courses", CoursesHandler),
        (api + "/dask", DaskHandler),
    ]
