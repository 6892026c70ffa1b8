"""What experiment tracking adds to the hub: the ``mlflow`` service, and what users' servers need to use it.

On a site with ``tracking.enabled``:

* the ``mlflow`` service runs ``python -m atlaslab.tracking.server`` on 127.0.0.1 (service port +2), as its own
  system account ``atlaslab-mlflow`` when the hub runs as root, with its SQLite database and artifacts in
  STATE_DIR/mlflow (0700, that account's) unless the site names PostgreSQL and S3; browsers reach its UI at
  /services/mlflow/ through the hub's OAuth login (no confirmation page: it is the site's own service);
* it may read users and groups (``read:users``, ``read:groups``): permissions are decided from hub groups;
* every user holds ``access:services!service=mlflow`` and so does the token of each user's server, which the
  server gets as MLFLOW_TRACKING_TOKEN beside MLFLOW_TRACKING_URI, so ``mlflow.start_run()`` needs no setup.

This module never imports MLflow: the hub's start-up must not pay for it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from atlaslab.config import LoadedConfig
from atlaslab.core import ports
from atlaslab.core.accounts import ensure_service_account, server_path
from atlaslab.core.hubpart import HubPart, access_scope
from atlaslab.core.state import StateDir

SERVICE_NAME = "mlflow"
ACCOUNT = "atlaslab-mlflow"
ROLE = "atlaslab-mlflow"
ACCESS_SCOPE = access_scope(SERVICE_NAME)
DEFAULT_EXPERIMENT = "users/{user}/default"


def enabled(loaded: LoadedConfig) -> bool:
    return loaded.site.tracking.enabled


def port(loaded: LoadedConfig) -> int:
    return ports.service_port(loaded, ports.TRACKING)


def prefix(loaded: LoadedConfig) -> str:
    return f"{loaded.site.site.base_url.rstrip('/')}/services/{SERVICE_NAME}/"


def tracking_uri(loaded: LoadedConfig) -> str:
    """Where servers on this machine reach MLflow: straight to it (not through the proxy), under its prefix."""
    return f"http://127.0.0.1:{port(loaded)}{prefix(loaded).rstrip('/')}"


def data_dir(state: StateDir) -> Path:
    return state.root / SERVICE_NAME


def ensure_data_dir(state: StateDir) -> Path:
    directory = data_dir(state)
    (directory / "artifacts").mkdir(parents=True, exist_ok=True)
    account = ensure_service_account(ACCOUNT, "AtlasLab experiment tracking")
    for path in (directory, directory / "artifacts"):
        if account is not None:
            os.chown(path, account.pw_uid, account.pw_gid)
        os.chmod(path, 0o700)
    return directory


def storage_env(loaded: LoadedConfig, directory: Path) -> dict[str, str]:
    """Database and artifact store, secrets read now (the service's environment is not world-readable)."""
    tracking = loaded.site.tracking
    env = {
        "ATLASLAB_MLFLOW_BACKEND": f"sqlite:///{directory / 'mlflow.sqlite'}",
        "ATLASLAB_MLFLOW_ARTIFACTS": str(directory / "artifacts"),
    }
    if tracking.database is not None:
        env["ATLASLAB_MLFLOW_BACKEND"] = loaded.read_secret(tracking.database)
    if tracking.artifacts is not None:
        env["ATLASLAB_MLFLOW_ARTIFACTS"] = tracking.artifacts
        if tracking.s3_endpoint_url is not None:
            env["MLFLOW_S3_ENDPOINT_URL"] = str(tracking.s3_endpoint_url).rstrip("/")
        if tracking.s3_access_key_id is not None and tracking.s3_secret_access_key is not None:
            env["AWS_ACCESS_KEY_ID"] = loaded.read_secret(tracking.s3_access_key_id)
            env["AWS_SECRET_ACCESS_KEY"] = loaded.read_secret(tracking.s3_secret_access_key)
    return env


def service(loaded: LoadedConfig, state: StateDir) -> dict:
    directory = ensure_data_dir(state)
    spec = {
        "name": SERVICE_NAME,
        "display": True,
        "url": f"http://127.0.0.1:{port(loaded)}",
        "command": [sys.executable, "-m", "atlaslab.tracking.server"],
        # A fixed token (STATE_DIR/secrets, 0600): also the OAuth client secret of the UI's login.
        "api_token": state.secret("mlflow-token"),
        "oauth_no_confirm": True,
        "cwd": str(directory),
        "environment": {
            "ATLASLAB_MLFLOW_DIR": str(directory),
            "ATLASLAB_MLFLOW_PUBLIC_URL": loaded.site.site.public_url,
            "ATLASLAB_MLFLOW_CACHE_TTL": str(loaded.site.tracking.permission_cache),
            # MLflow's Flask app signs its (unused) sessions with it; MLflow refuses to start without one.
            "MLFLOW_FLASK_SERVER_SECRET_KEY": state.secret("mlflow-flask-secret"),
            "PATH": server_path(),
            "HOME": str(directory),
            **storage_env(loaded, directory),
        },
    }
    if os.geteuid() == 0:
        spec["user"] = ACCOUNT
    return spec


def role() -> dict:
    return {
        "name": ROLE,
        "description": "Experiment tracking decides permissions from users' hub groups",
        "scopes": ["read:users", "read:groups", "list:groups"],
        "services": [SERVICE_NAME],
    }


def user_environment(loaded: LoadedConfig) -> dict:
    """What every user's server gets; the token is the server's own hub token, which carries ACCESS_SCOPE."""
    env: dict = {
        "MLFLOW_TRACKING_URI": tracking_uri(loaded),
        "MLFLOW_TRACKING_TOKEN": _server_token,
        "MLFLOW_EXPERIMENT_NAME": _default_experiment,
    }
    if loaded.site.tracking.async_logging:
        env["MLFLOW_ENABLE_ASYNC_LOGGING"] = "true"
    return env


def _server_token(spawner) -> str:
    return spawner.api_token


def _default_experiment(spawner) -> str:
    return DEFAULT_EXPERIMENT.format(user=spawner.user.name)


def hub_part(loaded: LoadedConfig, state: StateDir) -> HubPart:
    """Everything tracking adds to the hub; nothing when it is off."""
    if not enabled(loaded):
        return HubPart("tracking")
    return HubPart(
        "tracking",
        services=(service(loaded, state),),
        roles=(role(),),
        user_scopes=(ACCESS_SCOPE,),
        server_scopes=(ACCESS_SCOPE,),
        server_env=user_environment(loaded),
    )
