"""A Jupyter server extension that lets dask-labextension find a dashboard served through this very server.

``cluster()`` sets the dashboard link to ``/user/NAME/proxy/PORT/status`` (jupyter-server-proxy, behind the
hub's login). dask-labextension checks a link from the server side, with an HTTP request carrying no
credentials, so under JupyterHub that request meets the hub's login page and the check says "not a dashboard"
(measured: ``isActive: false``). For links into this server's own proxy, this handler asks the dashboard
directly on 127.0.0.1:PORT (where jupyter-server-proxy would have sent the request anyway) and answers with the
proxied link, which the browser then loads with the user's own cookies. Other links go to dask-labextension's
own check unchanged.

It registers on dask-labextension's route; extensions load in alphabetical order and Tornado tries routes in
the order they were added, so ``atlaslab.compute.dashboard`` comes before ``dask_labextension``.
"""

from __future__ import annotations

import json
import re
from urllib import parse

_PROXIED = re.compile(r"proxy/(?P<port>\d{1,5})(?P<path>/.*)?$")


def local_dashboard(link: str, base_url: str, host: str) -> tuple[str, str] | None:
    """``(public, direct)`` URLs of a dashboard behind this server's proxy, or None for any other link.

    ``link`` as dask-labextension passes it: absolute (on ``host``), server-absolute (``/user/NAME/proxy/...``)
    or relative to the server (``proxy/8787``); ``base_url`` is this server's (``/user/NAME/``).
    """
    url = parse.urlsplit(link)
    if (url.scheme or url.netloc) and (url.scheme not in ("http", "https") or url.netloc != host):
        return None
    path = url.path
    if path.startswith(base_url):
        path = path[len(base_url) :]
    elif path.startswith("/"):
        return None  # another server's (or the hub's) path: not ours to shortcut
    match = _PROXIED.match(path)
    if not match:
        return None
    port = int(match["port"])
    rest = (match["path"] or "").rstrip("/")
    if rest.endswith("/status"):
        rest = rest[: -len("/status")]
    if not 0 < port < 65536:
        return None
    return f"{base_url}proxy/{port}{rest}", f"http://127.0.0.1:{port}{rest}"


def _handler_class():
    # Imported here: this module is imported by the compute package's users too, and these are server-only.
    from dask_labextension.dashboardhandler import DaskDashboardCheckHandler
    from tornado import httpclient, web

    class LocalDashboardCheckHandler(DaskDashboardCheckHandler):
        @web.authenticated
        async def get(self, url: str) -> None:
            target = local_dashboard(parse.unquote(url), self.base_url, self.request.host)
            if target is None:
                return await super().get(url)
            public, direct = target
            try:
                reply = await httpclient.AsyncHTTPClient().fetch(f"{direct}/individual-plots.json", request_timeout=10)
                plots = json.loads(reply.body)
                active = isinstance(plots, dict)
            except Exception:  # not listening, not a dashboard: the extension shows it greyed out
                plots, active = {}, False
            self.finish(json.dumps({"url": public, "isActive": active, "effectiveUrl": None, "plots": plots or {}}))

    return LocalDashboardCheckHandler


def _jupyter_server_extension_points() -> list[dict]:
    return [{"module": "atlaslab.compute.dashboard"}]


def _load_jupyter_server_extension(serverapp) -> None:
    try:
        handler = _handler_class()
    except ImportError:  # dask-labextension not installed: nothing to fix
        return
    from jupyter_server.utils import url_path_join

    base_url = serverapp.web_app.settings["base_url"]
    route = url_path_join(base_url, "dask/dashboard-check/(?P<url>.+)")
    serverapp.web_app.add_handlers(".*$", [(route, handler)])
