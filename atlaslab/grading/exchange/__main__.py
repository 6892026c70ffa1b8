"""``python -m atlaslab.grading.exchange``: run the exchange service, configured from its environment.

JupyterHub sets these for a managed service:

JUPYTERHUB_SERVICE_URL      where to listen (http://127.0.0.1:PORT)
JUPYTERHUB_SERVICE_PREFIX   URL prefix of the service (/services/exchange/)
JUPYTERHUB_SERVICE_NAME     the service's name (access needs access:services!service=NAME)
JUPYTERHUB_API_URL          the hub's API, to check callers' tokens
JUPYTERHUB_API_TOKEN        the service's own token

AtlasLab adds:

ATLASLAB_EXCHANGE_DIR       the exchange's private directory (blobs, and the SQLite database by default)
ATLASLAB_EXCHANGE_DB        SQLAlchemy URL of the metadata database (default: sqlite:///DIR/exchange.sqlite)
ATLASLAB_EXCHANGE_BLOBS     where blobs live: a directory (default DIR/blobs) or s3://BUCKET/PREFIX (boto3's
                            AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY apply)
ATLASLAB_EXCHANGE_MAX_UPLOAD       bytes one upload may have (default 50 MiB)
ATLASLAB_EXCHANGE_MAX_UNPACKED     bytes an archive may expand to (default 256 MiB)
ATLASLAB_EXCHANGE_MAX_FILES        members an archive may have (default 1000)
ATLASLAB_EXCHANGE_CACHE_SECONDS    how long the hub's answer about a token (and its groups) is reused (default 5)
ATLASLAB_EXCHANGE_STAFF_SERVICES   JSON {service name: course}: services that are staff of a course (formgraders)

Several instances may run against the same database and blob directory (e.g. behind one Kubernetes Service).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tornado.httpserver import HTTPServer

from atlaslab.core.serving import ServiceAddress, env_int, hub_auth, run_service, serve_until_stopped, service_address

from . import SERVICE_NAME
from .api import Context, make_app
from .archive import Limits, MiB
from .store import ExchangeStore, open_blob_store

log = logging.getLogger("atlaslab.exchange")


def _int(env: dict, name: str, default: int) -> int:
    return env_int(env, name, default, "exchange")


def context_from_env(env: dict) -> tuple[Context, ServiceAddress]:
    """The service's context, URL prefix, host and port, from its environment."""
    directory = Path(env.get("ATLASLAB_EXCHANGE_DIR") or "exchange").resolve()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    db_url = env.get("ATLASLAB_EXCHANGE_DB") or f"sqlite:///{directory / 'exchange.sqlite'}"
    blobs = open_blob_store(env.get("ATLASLAB_EXCHANGE_BLOBS") or str(directory / "blobs"), directory / "spool")
    store = ExchangeStore(db_url, blobs)
    store.create_schema()
    where = service_address(env, SERVICE_NAME, 10100)
    staff_services = json.loads(env.get("ATLASLAB_EXCHANGE_STAFF_SERVICES") or "{}")
    ctx = Context(
        store=store,
        hub_auth=hub_auth(env, where.name, _int(env, "ATLASLAB_EXCHANGE_CACHE_SECONDS", 5)),
        max_upload=_int(env, "ATLASLAB_EXCHANGE_MAX_UPLOAD", 50 * MiB),
        limits=Limits(
            max_files=_int(env, "ATLASLAB_EXCHANGE_MAX_FILES", 1000),
            max_unpacked=_int(env, "ATLASLAB_EXCHANGE_MAX_UNPACKED", 256 * MiB),
        ),
        staff_services=staff_services,
    )
    return ctx, where


async def serve(env: dict) -> None:
    ctx, where = context_from_env(env)
    log.info("AtlasLab exchange listening on http://%s:%d%s", where.host, where.port, where.prefix)
    server = HTTPServer(make_app(ctx, where.prefix), max_body_size=ctx.max_upload)
    await serve_until_stopped(server, where.host, where.port)
    ctx.store.engine.dispose()


def main() -> None:
    run_service("exchange", serve)


if __name__ == "__main__":
    main()
