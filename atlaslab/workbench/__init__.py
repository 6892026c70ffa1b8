"""The workbench panel's server side: a Jupyter server extension in each user's server.

It answers the JupyterLab panel (``lab_extensions/atlaslab-workbench``, shipped built in ``atlaslab/labextension``)
with what the user runs on and what it costs them, each source answering on its own so one failing source shows
as an error in the panel and the others still show. The panel's French and Arabic strings are in ``locale/``
(JupyterLab's ``jupyterlab.locale`` entry point, domain ``atlaslab_workbench``).

    GET  {base}atlaslab/api/workbench/environment   environment, CPU and memory limits, assigned GPUs (live)
    GET  {base}atlaslab/api/workbench/credits       budgets and notices from the hub's credits service
    GET  {base}atlaslab/api/workbench/runs          the latest MLflow runs the user can see, with UI links
    GET  {base}atlaslab/api/workbench/idle          seconds left before the idle cull (hub last activity)
    GET  {base}atlaslab/api/workbench/courses       the user's courses (hub groups course:ID:ROLE) with their next
                                                    due dates and missed ones (the exchange's released assignments)
    GET  {base}atlaslab/api/workbench/dask          the server's Dask cluster, if started
    POST {base}atlaslab/api/workbench/dask          {"action": "start" | "stop"}
"""

from __future__ import annotations


def _jupyter_server_extension_points() -> list[dict]:
    return [{"module": "atlaslab.workbench"}]


def _load_jupyter_server_extension(serverapp) -> None:
    from .handlers import handlers

    base = serverapp.web_app.settings["base_url"]
    serverapp.web_app.add_handlers(".*$", handlers(base))
