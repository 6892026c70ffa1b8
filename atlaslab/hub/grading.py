"""Grading on the hub: the exchange service, and what users' servers and formgraders need to use it.

On a site with at least one course:

* the ``exchange`` service runs ``python -m atlaslab.grading.exchange`` on 127.0.0.1 (the first of the site's
  service ports), as its own system account ``atlaslab-exchange`` when the hub runs as root, keeping its
  database and blobs in STATE_DIR/exchange (0700, that account's);
* every user holds ``access:services!service=exchange`` (``JupyterHub.extra_user_scopes``), and the token of
  each user's server carries it (``Spawner.server_token_scopes``), so nbgrader in the server can call the
  exchange as its user; what they may do there is decided by the exchange from their hub groups;
* each course's formgrader service holds the same scope, and is staff of its own course in the exchange;
* users' servers and formgraders get ATLASLAB_EXCHANGE_URL and, on JUPYTER_CONFIG_PATH, a site-wide
  nbgrader_config.py that makes nbgrader's ExchangeFactory use :mod:`atlaslab.grading.client`. It lives in
  STATE_DIR/jupyter (0755, the file 0644): the state directory is traversable (0711), so every account can
  read this one file set and nothing else of the state directory. It holds no secret.

:func:`configure_grading` runs after the services, roles and spawner are set and extends them; it replaces
what it added before, so applying twice gives the same.
"""

from __future__ import annotations

import json
import os
import pwd
import sys
from pathlib import Path

from traitlets.config import Config

from atlaslab.config import LoadedConfig
from atlaslab.grading.exchange import SERVICE_NAME
from atlaslab.hub import ports, scopes
from atlaslab.hub.accounts import ensure_service_account, server_path
from atlaslab.hub.membership import course_group
from atlaslab.hub.state import StateDir

EXCHANGE_ACCOUNT = "atlaslab-exchange"
ACCESS_SCOPE = f"access:services!service={SERVICE_NAME}"
# JupyterHub's default scopes of a server's token ('server' role), plus the exchange.
SERVER_TOKEN_SCOPES = ["users:activity!user", "access:servers!server", ACCESS_SCOPE]
EXCHANGE_ROLE = "atlaslab-exchange-formgraders"
AUTOGRADER_NAME = "autograder"
AUTOGRADER_ROLE = "atlaslab-autograder-staff"
CLIENT_CLASSES = {
    "exchange": "Exchange",
    "fetch_assignment": "ExchangeFetchAssignment",
    "fetch_feedback": "ExchangeFetchFeedback",
    "release_assignment": "ExchangeReleaseAssignment",
    "release_feedback": "ExchangeReleaseFeedback",
    "list": "ExchangeList",
    "submit": "ExchangeSubmit",
    "collect": "ExchangeCollect",
}
CLIENT_CONFIG_HEADER = """\
# Written by AtlasLab at every hub start: nbgrader's exchange is AtlasLab's exchange service
# (ATLASLAB_EXCHANGE_URL), reached with the JupyterHub token of the server it runs in.
c = get_config()  # noqa: F821
"""


def exchange_enabled(loaded: LoadedConfig) -> bool:
    return bool(loaded.site.courses)


def exchange_port(loaded: LoadedConfig) -> int:
    return ports.service_port(loaded, ports.EXCHANGE)


def exchange_prefix(loaded: LoadedConfig) -> str:
    base = loaded.site.site.base_url.rstrip("/")
    return f"{base}/services/{SERVICE_NAME}/"


def exchange_url(loaded: LoadedConfig) -> str:
    """Where servers on this machine reach the exchange: straight to it, under its hub prefix."""
    return f"http://127.0.0.1:{exchange_port(loaded)}{exchange_prefix(loaded)}"


def exchange_dir(state: StateDir) -> Path:
    return state.root / "exchange"


def client_config_dir(state: StateDir) -> Path:
    return state.root / "jupyter"


def client_config() -> str:
    lines = [CLIENT_CONFIG_HEADER]
    for trait, cls in CLIENT_CLASSES.items():
        lines.append(f'c.ExchangeFactory.{trait} = "atlaslab.grading.client.{cls}"\n')
    return "".join(lines)


def ensure_client_config(state: StateDir) -> Path:
    """Write STATE_DIR/jupyter/nbgrader_config.py, readable by every account (atomically, 0644)."""
    directory = client_config_dir(state)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)
    path = directory / "nbgrader_config.py"
    tmp = directory / f".nbgrader_config.py.{os.getpid()}.tmp"
    tmp.write_text(client_config())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return directory


def ensure_exchange_account() -> pwd.struct_passwd | None:
    """The exchange's system account, created if missing; None when the hub is not root."""
    return ensure_service_account(EXCHANGE_ACCOUNT, "AtlasLab exchange")


def ensure_exchange_dir(state: StateDir) -> Path:
    """STATE_DIR/exchange, 0700, owned by the exchange's account (its database and blobs inside are its own)."""
    directory = exchange_dir(state)
    directory.mkdir(parents=True, exist_ok=True)
    account = ensure_exchange_account()
    if account is not None:
        os.chown(directory, account.pw_uid, account.pw_gid)
    os.chmod(directory, 0o700)
    return directory


def exchange_service(loaded: LoadedConfig, state: StateDir) -> dict:
    directory = ensure_exchange_dir(state)
    service = {
        "name": SERVICE_NAME,
        "url": f"http://127.0.0.1:{exchange_port(loaded)}",
        "command": [sys.executable, "-m", "atlaslab.grading.exchange"],
        # A fixed token (STATE_DIR/secrets, root only), so more instances can run beside the managed one.
        "api_token": state.secret("exchange-token"),
        "display": False,
        "cwd": str(directory),
        "environment": {
            "ATLASLAB_EXCHANGE_DIR": str(directory),
            "ATLASLAB_EXCHANGE_DB": f"sqlite:///{directory / 'exchange.sqlite'}",
            # Each course's formgrader is staff of its course (atlaslab/hub/courses.py names it after the course).
            "ATLASLAB_EXCHANGE_STAFF_SERVICES": json.dumps({course: course for course in loaded.site.courses}),
            "ATLASLAB_EXCHANGE_MAX_UPLOAD": str(loaded.site.grading.max_upload),
            "PATH": server_path(),
            **exchange_storage_env(loaded),
        },
    }
    if os.geteuid() == 0:
        service["user"] = EXCHANGE_ACCOUNT
    return service


def exchange_storage_env(loaded: LoadedConfig) -> dict[str, str]:
    """Where the exchange keeps metadata and files when the site says (PostgreSQL, S3), secrets read now."""
    grading = loaded.site.grading
    env: dict[str, str] = {}
    if grading.exchange_database is not None:
        env["ATLASLAB_EXCHANGE_DB"] = loaded.read_secret(grading.exchange_database)
    s3 = grading.exchange_s3
    if s3 is not None:
        env["ATLASLAB_EXCHANGE_BLOBS"] = f"s3://{s3.bucket}/{s3.prefix.strip('/')}"
        if s3.endpoint_url is not None:
            env["AWS_ENDPOINT_URL"] = str(s3.endpoint_url).rstrip("/")
        if s3.region:
            env["AWS_REGION"] = env["AWS_DEFAULT_REGION"] = s3.region
        if s3.access_key_id is not None and s3.secret_access_key is not None:
            env["AWS_ACCESS_KEY_ID"] = loaded.read_secret(s3.access_key_id)
            env["AWS_SECRET_ACCESS_KEY"] = loaded.read_secret(s3.secret_access_key)
    return env


def formgraders_role(loaded: LoadedConfig) -> dict:
    """The courses' formgrader services may call the exchange (as staff of their own course only)."""
    return {
        "name": EXCHANGE_ROLE,
        "description": "Course formgraders release, collect and return feedback through the exchange",
        "scopes": [ACCESS_SCOPE],
        "services": list(loaded.site.courses),
    }


def client_env(loaded: LoadedConfig, state: StateDir) -> dict[str, str]:
    """Environment of a server that uses the exchange through nbgrader."""
    return {
        "ATLASLAB_EXCHANGE_URL": exchange_url(loaded),
        "JUPYTER_CONFIG_PATH": str(client_config_dir(state)),
    }


def configure_exchange_service(c: Config, loaded: LoadedConfig, state: StateDir) -> None:
    c.JupyterHub.services = scopes.replace_named(
        c.JupyterHub.get("services"), [exchange_service(loaded, state)], {SERVICE_NAME}
    )
    c.JupyterHub.load_roles = scopes.replace_named(
        c.JupyterHub.get("load_roles"), [formgraders_role(loaded)], {EXCHANGE_ROLE}
    )


def configure_exchange_access(c: Config) -> None:
    """Users (and so their tokens and their servers' tokens) may reach the exchange service."""
    scopes.grant_users_access(c, SERVICE_NAME)


def configure_exchange_clients(c: Config, loaded: LoadedConfig, state: StateDir) -> None:
    """Users' servers and the courses' formgraders find the exchange and use AtlasLab's nbgrader classes."""
    ensure_client_config(state)
    env = client_env(loaded, state)
    current = c.AtlasLabSpawner.get("environment")
    c.AtlasLabSpawner.environment = {**(current if isinstance(current, dict) else {}), **env}
    for service in c.JupyterHub.get("services") or []:
        if service.get("name") in loaded.site.courses and isinstance(service.get("environment"), dict):
            service["environment"].update(env)


def autograder_url(loaded: LoadedConfig) -> str:
    base = loaded.site.site.base_url.rstrip("/")
    return f"http://127.0.0.1:{ports.service_port(loaded, ports.AUTOGRADER)}{base}/services/{AUTOGRADER_NAME}/"


def autograder_service(loaded: LoadedConfig) -> dict:
    """Runs `atlaslab grade` for the formgrader's Autograde button; as the hub's user, which the sandbox needs."""
    return {
        "name": AUTOGRADER_NAME,
        "url": f"http://127.0.0.1:{ports.service_port(loaded, ports.AUTOGRADER)}",
        "command": [sys.executable, "-m", "atlaslab.grading.service"],
        "display": False,
        "environment": {
            "ATLASLAB_CONFIG": str(loaded.source.resolve()) if loaded.source else "",
            "ATLASLAB_GRADE_STAFF_SERVICES": json.dumps({course: course for course in loaded.site.courses}),
            "PATH": server_path(),
        },
    }


def autograder_role(loaded: LoadedConfig) -> dict:
    """Formgraders and course staff may call the autograder; which course they may grade it decides itself."""
    return {
        "name": AUTOGRADER_ROLE,
        "description": "Course formgraders and staff autograde their course's submissions in the sandbox",
        "scopes": [f"access:services!service={AUTOGRADER_NAME}"],
        "services": list(loaded.site.courses),
        "groups": [course_group(course, kind) for course in loaded.site.courses for kind in ("instructors", "tas")],
    }


def configure_autograder(c: Config, loaded: LoadedConfig) -> None:
    c.JupyterHub.services = scopes.replace_named(
        c.JupyterHub.get("services"), [autograder_service(loaded)], {AUTOGRADER_NAME}
    )
    c.JupyterHub.load_roles = scopes.replace_named(
        c.JupyterHub.get("load_roles"), [autograder_role(loaded)], {AUTOGRADER_ROLE}
    )
    for service in c.JupyterHub.get("services") or []:
        if service.get("name") in loaded.site.courses and isinstance(service.get("environment"), dict):
            service["environment"]["ATLASLAB_AUTOGRADER_URL"] = autograder_url(loaded)


def configure_grading(c: Config, loaded: LoadedConfig, state: StateDir) -> None:
    """Everything grading adds to the hub; nothing on a site without courses."""
    if not exchange_enabled(loaded):
        return
    configure_exchange_service(c, loaded, state)
    configure_exchange_access(c)
    configure_exchange_clients(c, loaded, state)
    configure_autograder(c, loaded)
