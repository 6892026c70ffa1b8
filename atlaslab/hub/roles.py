"""JupyterHub roles derived from the site config, least privilege first.

A plain user keeps JupyterHub's default ``user`` role (scope ``self``): their token can do nothing to
anybody else. Staff roles are scoped with group filters, so a tenant admin or an instructor only ever
reaches their own tenant's or course's people.
"""

from __future__ import annotations

from atlaslab.config import LoadedConfig
from atlaslab.core.membership import course_group, tenant_admins_group, tenant_group


def tenant_admin_role(tenant: str) -> dict:
    members = tenant_group(tenant)
    return {
        "name": f"tenant-admin.{tenant}",
        "description": f"See, start and stop the servers of tenant {tenant}'s users",
        "scopes": [
            "admin-ui",
            f"list:users!group={members}",
            f"read:users!group={members}",
            f"servers!group={members}",
            f"read:groups!group={members}",
            f"list:groups!group={members}",
        ],
        "groups": [tenant_admins_group(tenant)],
    }


def course_staff_role(course: str) -> dict:
    students = course_group(course, "students")
    return {
        "name": f"course-staff.{course}",
        "description": f"Instructors and TAs of {course}: read their students' names, activity and server status",
        "scopes": [
            f"list:users!group={students}",
            f"read:users!group={students}",
            f"read:groups!group={students}",
            f"list:groups!group={students}",
        ],
        "groups": [course_group(course, "instructors"), course_group(course, "tas")],
    }


def config_roles(loaded: LoadedConfig) -> list[dict]:
    site = loaded.site
    roles = [tenant_admin_role(t) for t, tenant in site.tenants.items() if tenant.admins]
    roles += [course_staff_role(c) for c in site.courses]
    return roles
