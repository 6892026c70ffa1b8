"""What grading adds to the hub: the exchange, the autograder and one formgrader per course.

On a site with at least one course:

* the ``exchange`` service runs ``python -m atlaslab.grading.exchange`` on 127.0.0.1 (the first of the site's
  service ports), as its own system account ``atlaslab-exchange`` when the hub runs as root, keeping its
  database and blobs in STATE_DIR/exchange (0700, that account's);
* every user, and the token of each user's server, may reach the exchange; what they may do there is decided by
  the exchange from their hub groups; each course's formgrader is staff of its own course there;
* each course's formgrader is a hub-managed JupyterLab (the users' server launcher run as a service) running as the
  course's grader account in the course directory, with nbgrader's formgrader enabled there and nowhere else. The
  service is named after the course id, as nbgrader's course list expects; only the course's instructors and TAs
  may open it;
* the ``autograder`` service runs ``atlaslab grade`` (sandboxed) for the formgrader's Autograde button;
* users' servers and formgraders get ATLASLAB_EXCHANGE_URL and, on JUPYTER_CONFIG_PATH, a site-wide
  nbgrader_config.py that makes nbgrader's ExchangeFactory use :mod:`atlaslab.grading.client`. It lives in
  STATE_DIR/jupyter (0755, the file 0644): the state directory is traversable (0711), so every account can
  read this one file set and nothing else of the state directory. It holds no secret.
"""

from __future__ import annotations

import json
import os
import pwd
import sys
from pathlib import Path

from atlaslab.config import LoadedConfig
from atlaslab.core import ports
from atlaslab.core.accounts import ensure_service_account, server_path
from atlaslab.core.hubpart import HubPart, access_scope, site_service
from atlaslab.core.membership import STAFF_ROLES, course_group
from atlaslab.core.state import StateDir, write_public
from atlaslab.grading.courses import ensure_course_dir, grader_account
from atlaslab.grading.exchange import SERVICE_NAME

EXCHANGE_ACCOUNT = "atlaslab-exchange"
ACCESS_SCOPE = access_scope(SERVICE_NAME)
EXCHANGE_ROLE = "atlaslab-exchange-formgraders"
AUTOGRADER_NAME = "autograder"
AUTOGRADER_ROLE = "atlaslab-autograder-staff"
# The users' server launcher: the hub waits for each formgrader as for a user's server.
SINGLEUSER = [sys.executable, "-m", "atlaslab.workbench.singleuser"]
# Server extensions no user's server loads: nbgrader's formgrader and course list are instructor tools, used
# through each course's formgrader service (create_assignment is a server extension in some nbgrader versions).
STUDENT_DISABLED_EXTENSIONS = (
    "nbgrader.server_extensions.formgrader",
    "nbgrader.server_extensions.create_assignment",
    "nbgrader.server_extensions.course_list",
)
# Loaded only in the servers of course members: the assignment list and the validate button. Importing nbgrader
# costs ~0.2 s per start, for users who never see an assignment.
COURSE_SERVER_EXTENSIONS = (
    "nbgrader.server_extensions.assignment_list",
    "nbgrader.server_extensions.validate_assignment",
)
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


def enabled(loaded: LoadedConfig) -> bool:
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
    write_public(directory / "nbgrader_config.py", client_config())
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


def staff_services(loaded: LoadedConfig) -> str:
    """JSON {service: course}: each course's formgrader (named after the course) is staff of that course."""
    return json.dumps({course: course for course in loaded.site.courses})


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
            "ATLASLAB_EXCHANGE_STAFF_SERVICES": staff_services(loaded),
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


def autograder_url(loaded: LoadedConfig) -> str:
    base = loaded.site.site.base_url.rstrip("/")
    return f"http://127.0.0.1:{ports.service_port(loaded, ports.AUTOGRADER)}{base}/services/{AUTOGRADER_NAME}/"


def autograder_service(loaded: LoadedConfig) -> dict:
    """Runs `atlaslab grade` for the formgrader's Autograde button; as the hub's user, which the sandbox needs."""
    return site_service(
        loaded,
        AUTOGRADER_NAME,
        ports.AUTOGRADER,
        "atlaslab.grading.service",
        ATLASLAB_GRADE_STAFF_SERVICES=staff_services(loaded),
    )


def autograder_role(loaded: LoadedConfig) -> dict:
    """Formgraders and course staff may call the autograder; which course they may grade it decides itself."""
    return {
        "name": AUTOGRADER_ROLE,
        "description": "Course formgraders and staff autograde their course's submissions in the sandbox",
        "scopes": [access_scope(AUTOGRADER_NAME)],
        "services": list(loaded.site.courses),
        "groups": [course_group(course, role) for course in loaded.site.courses for role in STAFF_ROLES],
    }


def formgrader_service(loaded: LoadedConfig, state: StateDir, course: str) -> dict:
    cd = ensure_course_dir(state.root, course, loaded.site.courses[course].reveal_hidden_tests)
    service = {
        "name": course,
        "display": True,
        "url": f"http://127.0.0.1:{ports.formgrader_port(loaded, course)}",
        "command": SINGLEUSER,
        "cwd": str(cd.root),
        "oauth_no_confirm": True,
        "environment": {
            "JUPYTER_CONFIG_DIR": str(cd.config_dir),
            "JUPYTER_RUNTIME_DIR": str(cd.root / ".runtime"),
            "JUPYTER_DATA_DIR": str(cd.root / ".local"),
            "HOME": str(cd.root),
            "JUPYTERHUB_DEFAULT_URL": "/lab?formgrader=true",
            "PATH": server_path(),
            "ATLASLAB_AUTOGRADER_URL": autograder_url(loaded),
            **client_env(loaded, state),
        },
    }
    if os.geteuid() == 0:
        service["user"] = grader_account(course)
    else:
        service["command"] = [*SINGLEUSER, "--ServerApp.allow_root=False"]
    return service


def formgrader_role(course: str) -> dict:
    return {
        "name": f"formgrader.{course}",
        "description": f"Open the formgrader of {course}",
        "scopes": [access_scope(course), "list:services", "read:services"],
        "groups": [course_group(course, role) for role in STAFF_ROLES],
    }


def hub_part(loaded: LoadedConfig, state: StateDir) -> HubPart:
    """Everything grading adds to the hub; nothing on a site without courses."""
    if not enabled(loaded):
        return HubPart("grading")
    ensure_client_config(state)
    courses = list(loaded.site.courses)
    return HubPart(
        "grading",
        services=(
            exchange_service(loaded, state),
            autograder_service(loaded),
            *(formgrader_service(loaded, state, course) for course in courses),
        ),
        roles=(formgraders_role(loaded), autograder_role(loaded), *(formgrader_role(c) for c in courses)),
        user_scopes=(ACCESS_SCOPE,),
        server_scopes=(ACCESS_SCOPE,),
        server_env=client_env(loaded, state),
    )
