"""Courses on the hub: a course directory and a formgrader service per course, reachable by its staff only.

Each course's formgrader is a hub-managed JupyterLab (jupyterhub-singleuser run as a service) running as the
course's grader account in the course directory, with nbgrader's formgrader enabled there and nowhere else.
The service is named after the course id, as nbgrader's course list expects; only the course's instructors
and TAs hold ``access:services!service=ID``.
"""

from __future__ import annotations

import os
import sys

from atlaslab.config import LoadedConfig
from atlaslab.grading.courses import ensure_course_dir, grader_account
from atlaslab.hub.accounts import server_path
from atlaslab.hub.membership import course_group
from atlaslab.hub.ports import formgrader_port
from atlaslab.hub.state import StateDir

# The same fast launcher as users' servers (atlaslab/hub/singleuser.py): the hub waits for each formgrader.
SINGLEUSER = [sys.executable, "-m", "atlaslab.hub.singleuser"]


def formgrader_service(loaded: LoadedConfig, state: StateDir, course: str) -> tuple[dict, dict]:
    cd = ensure_course_dir(state.root, course, loaded.site.courses[course].reveal_hidden_tests)
    service = {
        "name": course,
        "display": True,
        "url": f"http://127.0.0.1:{formgrader_port(loaded, course)}",
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
        },
    }
    if os.geteuid() == 0:
        service["user"] = grader_account(course)
    else:
        service["command"] = [*SINGLEUSER, "--ServerApp.allow_root=False"]
    role = {
        "name": f"formgrader.{course}",
        "description": f"Open the formgrader of {course}",
        "scopes": [f"access:services!service={course}", "list:services", "read:services"],
        "groups": [course_group(course, "instructors"), course_group(course, "tas")],
    }
    return service, role


def course_services(loaded: LoadedConfig, state: StateDir) -> list[tuple[dict, dict]]:
    return [formgrader_service(loaded, state, course) for course in loaded.site.courses]
