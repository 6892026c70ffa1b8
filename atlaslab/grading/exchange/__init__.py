"""The exchange: a hub-managed service that moves assignments, submissions and feedback between course staff and
students, replacing nbgrader's shared world-writable exchange directory.

* :mod:`.archive` checks and packs the tar.gz payloads (used by the service and by the client).
* :mod:`.store` keeps metadata in SQL and file contents in a content-addressed blob store.
* :mod:`.api` is the HTTP API (tornado); ``python -m atlaslab.grading.exchange`` runs it as a JupyterHub service.
* :mod:`atlaslab.grading.client` holds the nbgrader exchange classes that talk to it.

Importing this package imports nothing heavy: the client imports :mod:`.archive` inside users' servers.
"""

SERVICE_NAME = "exchange"
API_PATH = "api/v1/"
