"""nbgrader's auth plugin, reading AtlasLab's hub groups (course:ID:students/instructors/tas).

nbgrader's JupyterHubAuthPlugin looks for groups named nbgrader-ID and formgrade-ID; AtlasLab's groups come
from the site config, so this plugin maps them instead of asking operators to keep two sets of groups.
Roster changes go through the site config or `atlaslab users import`, not through nbgrader.
"""

from __future__ import annotations

from nbgrader.auth.base import BaseAuthPlugin
from nbgrader.auth.jupyterhub import JupyterhubEnvironmentError, _query_jupyterhub_api

from atlaslab.core.membership import Membership


class HubGroupsAuthPlugin(BaseAuthPlugin):
    def get_student_courses(self, student_id: str) -> list[str] | None:
        user = "{authenticated_user}" if student_id == "*" else student_id
        try:
            model = _query_jupyterhub_api("GET", f"/users/{user}")
        except JupyterhubEnvironmentError:
            return None
        return sorted(Membership.of(model.get("groups") or []).courses)

    def add_student_to_course(self, student_id: str, course_id: str) -> None:
        self.log.info("Course membership comes from the AtlasLab site config; not adding %s here", student_id)

    def remove_student_from_course(self, student_id: str, course_id: str) -> None:
        self.log.info("Course membership comes from the AtlasLab site config; not removing %s here", student_id)
