"""Running one of AtlasLab's hub-managed services: listen where JupyterHub says, stop cleanly on its signal."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable

from tornado.httpserver import HTTPServer


async def serve_until_stopped(server: HTTPServer, host: str, port: int) -> None:
    """Listen, then wait for SIGTERM (JupyterHub stopping the service) or SIGINT; stop taking connections."""
    server.listen(port, host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.stop()
    await server.close_all_connections()


def run_service(name: str, serve: Callable[[dict], Awaitable[None]]) -> None:
    """Entry point of ``python -m ...``: log lines tagged with the service's name, configured from the environment."""
    logging.basicConfig(level=logging.INFO, format=f"[%(levelname)1.1s %(asctime)s {name}] %(message)s")
    asyncio.run(serve(dict(os.environ)))
