"""The MLflow service: ``python -m atlaslab.tracking.server``, started and kept running by the hub.

One process, one uvicorn worker, no job runners: stock ``mlflow server`` starts ~15 processes (4 uvicorn
workers, huey consumers) and holds ~3 GiB at rest, and with 4 workers each call waits ~40 ms on a delayed ACK
(uvicorn #3149). MLflow's own app (Flask inside FastAPI) is built with its auth app, whose validators and
result filters take their grants from :class:`~atlaslab.tracking.grants.HubGrantStore`.

Environment (set by :mod:`atlaslab.tracking.hubpart`; the JUPYTERHUB_* ones by the hub itself):
ATLASLAB_MLFLOW_BACKEND (SQLAlchemy URL), ATLASLAB_MLFLOW_ARTIFACTS (where proxied artifacts go),
ATLASLAB_MLFLOW_PUBLIC_URL, ATLASLAB_MLFLOW_CACHE_TTL, MLFLOW_FLASK_SERVER_SECRET_KEY.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import urllib.parse
from pathlib import Path

AUTH_INI = Path(__file__).resolve().parent.parent.parent / "mlflow" / "auth.ini"
# Used when AtlasLab is installed without its repository (a wheel): the same settings as mlflow/auth.ini.
FALLBACK_AUTH_INI = """[mlflow]
default_permission = NO_PERMISSIONS
database_uri = sqlite:///:memory:
authorization_function = atlaslab.tracking.auth:authenticate
grant_default_workspace_access = false
"""


def auth_config_path(workdir: Path) -> Path:
    # The service's account may not be able to read the repository (a checkout under /root): fall back.
    if AUTH_INI.is_file() and os.access(AUTH_INI, os.R_OK):
        return AUTH_INI
    path = workdir / "auth.ini"
    path.write_text(FALLBACK_AUTH_INI)
    return path


def allowed_hosts(public_url: str, port: int) -> list[str]:
    hosts = [f"127.0.0.1:{port}", f"localhost:{port}", "127.0.0.1:*", "localhost:*"]
    parsed = urllib.parse.urlparse(public_url)
    if parsed.netloc:
        hosts += [parsed.netloc, parsed.hostname or ""]
    return [h for h in hosts if h]


def mlflow_environment(workdir: Path, port: int) -> dict[str, str]:
    """What MLflow's server modules read at import: set before the first ``import mlflow.server``."""
    backend = os.environ.get("ATLASLAB_MLFLOW_BACKEND") or f"sqlite:///{workdir / 'mlflow.sqlite'}"
    artifacts = os.environ.get("ATLASLAB_MLFLOW_ARTIFACTS") or str(workdir / "artifacts")
    public_url = os.environ.get("ATLASLAB_MLFLOW_PUBLIC_URL", "")
    origin = urllib.parse.urlunparse(urllib.parse.urlparse(public_url)._replace(path="")) if public_url else ""
    env = {
        "_MLFLOW_SERVER_FILE_STORE": backend,
        "_MLFLOW_SERVER_REGISTRY_STORE": backend,
        "_MLFLOW_SERVER_SERVE_ARTIFACTS": "true",
        "_MLFLOW_SERVER_ARTIFACT_ROOT": "mlflow-artifacts:/",
        "_MLFLOW_SERVER_ARTIFACT_DESTINATION": artifacts,
        "_MLFLOW_SGI_NAME": "uvicorn",  # MLflow's auth app then returns its FastAPI app
        "_MLFLOW_AUTH_ADMIN_BOOTSTRAPPED": "true",  # no MLflow admin password: admins are hub admins
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_config_path(workdir)),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no huey consumers on a shared machine
        "MLFLOW_BASIC_AUTH_FAIL_CLOSED": "true",  # a route MLflow has no validator for is refused
        "MLFLOW_SERVER_ALLOWED_HOSTS": ",".join(allowed_hosts(public_url, port)),
    }
    if origin:
        env["MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"] = origin
    return env


def build_app():
    """MLflow's app with AtlasLab's identity and grants, behind the service prefix (an ASGI app)."""
    from atlaslab.tracking import runtime

    rt = runtime.init_from_env()
    import mlflow.server.auth as mlflow_auth
    from mlflow.server import app as flask_app
    from mlflow.server.handlers import _get_model_registry_store, _get_tracking_store

    from .auth import oauth
    from .grants import HubGrantStore
    from .ownership import guard
    from .redaction import install as redact_model_links
    from .redaction import install_graphql as redact_graphql_model_ids
    from .web import ServicePrefix

    mlflow_auth.store = HubGrantStore(rt.hub)
    app = mlflow_auth.create_app(flask_app)
    flask_app.before_request(guard)  # after MLflow's auth hook: the caller is known and authorized
    # Runs' links to logged models: withheld per model, and no re-parse of pages that name none (.redaction).
    redact_model_links(flask_app)
    # The same links through GraphQL (the UI's run pages), withheld field by field as queries resolve.
    redact_graphql_model_ids()
    # Open (and on first start create) the database now, not on the first user's request.
    _get_tracking_store()
    _get_model_registry_store()
    return ServicePrefix(app, rt, oauth().token_for_code)


def freeze_start_up_objects() -> None:
    """Keep the garbage collector's full passes off what start-up left: it lives as long as the process.

    MLflow's imports and app leave ~380,000 tracked objects, and every full (generation 2) collection walked them
    all: measured with ``gc.callbacks`` on a 1,000-run ``search_runs`` page, 0.4 full passes a request at 100-500 ms
    each on a loaded 2-core machine, ~165 ms a request on average; frozen, ~10 ms. Garbage made later is collected
    as before; what start-up leaves unreachable is collected first.
    """
    gc.collect()
    gc.freeze()


def main() -> int:
    import uvicorn

    service_url = urllib.parse.urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:5000"))
    host, port = service_url.hostname or "127.0.0.1", service_url.port or 5000
    workdir = Path(os.environ.get("ATLASLAB_MLFLOW_DIR") or Path.cwd())
    os.environ.update(mlflow_environment(workdir, port))
    logging.basicConfig(level=logging.WARNING, format="[mlflow %(levelname)s %(name)s] %(message)s")
    app = build_app()
    freeze_start_up_objects()
    config = uvicorn.Config(app, host=host, port=port, workers=1, log_level="warning", access_log=False)
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
