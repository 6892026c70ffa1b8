"""Course directories: one nbgrader course directory and gradebook per course, owned by its grader account.

STATE_DIR/courses/ID holds nbgrader's source/, release/, submitted/, autograded/, feedback/ and
gradebook.db. It belongs to the system account grader-ID (when the hub runs as root) and is 0700, so
no student, and no instructor of another course, can read submissions or the gradebook.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from atlaslab.core.accounts import ensure_service_account
from atlaslab.core.state import write_private
from atlaslab.grading.feedback import feedback_preprocessors

GRADER_PREFIX = "grader-"
NBGRADER_CONFIG = """\
# Written by AtlasLab for course {course!r}; regenerated at every hub start.
c = get_config()  # noqa: F821
c.CourseDirectory.course_id = {course!r}
c.CourseDirectory.root = {root!r}
c.Authenticator.plugin_class = "atlaslab.grading.nbauth.HubGroupsAuthPlugin"
# Feedback {feedback_note}
c.GenerateFeedback.preprocessors = {feedback!r}
"""
SERVER_CONFIG = """\
# Written by AtlasLab: the formgrader of course {course!r}, served as a hub service.
c = get_config()  # noqa: F821
# JupyterHub >= 4.1 forbids framing single-user pages ("frame-ancestors 'none'"), but nbgrader's formgrader
# lab extension shows /formgrader in an iframe of the same server (nbgrader #1870): allow same-origin frames.
c.ServerApp.tornado_settings = {{"headers": {{"Content-Security-Policy": "frame-ancestors 'self'"}}}}
c.ServerApp.jpserver_extensions = {{
    "nbgrader.server_extensions.formgrader": True,
    "nbgrader.server_extensions.create_assignment": True,
    "nbgrader.server_extensions.course_list": True,
    "nbgrader.server_extensions.assignment_list": False,
    # The formgrader's Autograde button grades in AtlasLab's sandbox, not in this process.
    "atlaslab.grading.formgrader": True,
}}
c.ServerApp.root_dir = {root!r}
"""


@dataclass(frozen=True)
class CourseDir:
    course: str
    root: Path

    @property
    def config_dir(self) -> Path:
        """JUPYTER_CONFIG_DIR of the course's formgrader service."""
        return self.root / ".jupyter"

    @property
    def gradebook(self) -> Path:
        return self.root / "gradebook.db"


def grader_account(course: str) -> str:
    return f"{GRADER_PREFIX}{course}"[:32]


def ensure_grader_account(course: str) -> pwd.struct_passwd | None:
    """The grader account of ``course``, created if missing; None when not root (development mode)."""
    return ensure_service_account(grader_account(course), f"AtlasLab grader of {course}")


def nbgrader_config(course: str, root: Path, reveal_hidden_tests: bool = False) -> str:
    return NBGRADER_CONFIG.format(
        course=course,
        root=str(root),
        feedback=feedback_preprocessors(reveal_hidden_tests),
        feedback_note="shows hidden tests (the course reveals them)."
        if reveal_hidden_tests
        else "never shows hidden tests, their code or what they printed.",
    )


def ensure_course_dir(state_root: Path, course: str, reveal_hidden_tests: bool = False) -> CourseDir:
    """Create or refresh the course directory and its nbgrader/server configs (idempotent)."""
    courses = state_root / "courses"
    courses.mkdir(parents=True, exist_ok=True)
    # The grader account must traverse into its own course dir, nothing else.
    os.chmod(courses, 0o711)
    cd = CourseDir(course, courses / course)
    for sub in (cd.root, cd.root / "source", cd.config_dir):
        sub.mkdir(exist_ok=True)
    config = nbgrader_config(course, cd.root, reveal_hidden_tests)
    write_private(cd.root / "nbgrader_config.py", config)
    write_private(cd.config_dir / "nbgrader_config.py", config)
    write_private(cd.config_dir / "jupyter_server_config.py", SERVER_CONFIG.format(course=course, root=str(cd.root)))
    account = ensure_grader_account(course)
    if account is not None:
        # Only what this function writes; the rest is written by the grader account itself, or handed over
        # by `atlaslab grade` (never a walk of every submission at each hub start).
        for path in (
            cd.root,
            cd.root / "source",
            cd.config_dir,
            cd.root / "nbgrader_config.py",
            cd.config_dir / "nbgrader_config.py",
            cd.config_dir / "jupyter_server_config.py",
        ):
            os.chown(path, account.pw_uid, account.pw_gid)
    os.chmod(cd.root, 0o700)
    return cd
