"""Who belongs where: hub groups derived from tenants, courses and teams, and what each user may start.

Pure functions of the site config (and a user's current groups), so they are tested directly and
reused by the spawner, the roles and the CLI.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # users' servers read group names too, and must not pay for importing the schema
    from atlaslab.config import LoadedConfig

ADMIN_GROUP = "atlaslab:admins"
COURSE_ROLES = ("students", "instructors", "tas")
STAFF_ROLES = ("instructors", "tas")


def tenant_group(tenant: str) -> str:
    return f"tenant:{tenant}"


def tenant_admins_group(tenant: str) -> str:
    return f"tenant:{tenant}:admins"


def course_group(course: str, role: str) -> str:
    """``role`` is one of students, instructors, tas."""
    return f"course:{course}:{role}"


def team_group(team: str) -> str:
    return f"team:{team}"


@dataclass(frozen=True)
class Membership:
    """What a user's hub group names say about them: the one place group names are read back.

    ``tenant`` is the first tenant by name: the one a user's usage is charged to, whose namespace their pods run
    in and whose language they see by default (a user is normally in one tenant; a second one only adds access).
    """

    tenants: tuple[str, ...] = ()
    teams: tuple[str, ...] = ()
    student_of: frozenset[str] = frozenset()
    staff_of: frozenset[str] = frozenset()
    tenant_admin_of: frozenset[str] = frozenset()
    site_admin: bool = False

    @classmethod
    def of(cls, groups: Iterable[str]) -> Membership:
        tenants, teams, students, staff, tenant_admins = set(), set(), set(), set(), set()
        admin = False
        for group in groups:
            kind, _, rest = group.partition(":")
            parts = rest.split(":")
            if group == ADMIN_GROUP:
                admin = True
            elif kind == "tenant" and len(parts) == 1 and parts[0]:
                tenants.add(parts[0])
            elif kind == "tenant" and len(parts) == 2 and parts[0] and parts[1] == "admins":
                tenant_admins.add(parts[0])
            elif kind == "team" and len(parts) == 1 and parts[0]:
                teams.add(parts[0])
            elif kind == "course" and len(parts) == 2 and parts[0] and parts[1] in COURSE_ROLES:
                (students if parts[1] == "students" else staff).add(parts[0])
        return cls(
            tuple(sorted(tenants)),
            tuple(sorted(teams)),
            frozenset(students),
            frozenset(staff),
            frozenset(tenant_admins),
            admin,
        )

    @property
    def tenant(self) -> str | None:
        return self.tenants[0] if self.tenants else None

    @property
    def courses(self) -> frozenset[str]:
        return self.student_of | self.staff_of

    def course_roles(self, groups: Iterable[str]) -> dict[str, list[str]]:
        """Course -> the user's roles in it (students, instructors, tas), from the same ``groups``."""
        found: dict[str, set[str]] = {}
        for group in groups:
            kind, _, rest = group.partition(":")
            course, _, role = rest.partition(":")
            if kind == "course" and course in self.courses and role in COURSE_ROLES:
                found.setdefault(course, set()).add(role)
        return {course: sorted(roles) for course, roles in sorted(found.items())}


def tenant_of(groups: Iterable[str]) -> str | None:
    """The tenant a user with these hub groups belongs to (see :class:`Membership`), or None."""
    return Membership.of(groups).tenant


def teams_of(groups: Iterable[str]) -> list[str]:
    """The user's teams, sorted."""
    return list(Membership.of(groups).teams)


def config_groups(loaded: LoadedConfig) -> dict[str, dict]:
    """Every group the site config defines, in JupyterHub's ``load_groups`` format."""
    site = loaded.site
    groups: dict[str, dict] = {}

    def add(name: str, users: Iterable[str], **properties: str) -> None:
        entry = groups.setdefault(name, {"users": [], "properties": {}})
        entry["users"].extend(u for u in users if u not in entry["users"])
        entry["properties"].update(properties)

    add(ADMIN_GROUP, site.site.admins, kind="admins")
    for tid, tenant in site.tenants.items():
        add(tenant_group(tid), tenant.members, kind="tenant", tenant=tid, title=tenant.title)
        add(tenant_admins_group(tid), tenant.admins, kind="tenant-admins", tenant=tid)
    for cid, course in site.courses.items():
        everyone = [*course.instructors, *course.tas, *loaded.students(cid)]
        add(tenant_group(course.tenant), everyone)
        add(course_group(cid, "instructors"), course.instructors, kind="course-instructors", course=cid)
        add(course_group(cid, "tas"), course.tas, kind="course-tas", course=cid)
        add(course_group(cid, "students"), loaded.students(cid), kind="course-students", course=cid)
    for team_id, team in site.teams.items():
        add(tenant_group(team.tenant), team.members)
        add(team_group(team_id), team.members, kind="team", team=team_id, tenant=team.tenant)
    return groups


def known_users(loaded: LoadedConfig) -> set[str]:
    """Everyone the site config names: pre-approved for local sign-up."""
    return {u for g in config_groups(loaded).values() for u in g["users"]}


def tenants_of(loaded: LoadedConfig, groups: Iterable[str]) -> list[str]:
    return [t for t in loaded.site.tenants if tenant_group(t) in set(groups)]


def access_rules(loaded: LoadedConfig) -> dict[str, list[str]]:
    """Group -> environments its members may start, from tenants, courses and teams, as plain data.

    The spawner holds these as a traitlet, so an operator can override them like any JupyterHub setting.
    """
    site = loaded.site
    rules: dict[str, list[str]] = {}

    def grant(group: str, envs: Iterable[str]) -> None:
        rules.setdefault(group, [])
        rules[group].extend(e for e in envs if e not in rules[group])

    for tid, tenant in site.tenants.items():
        grant(tenant_group(tid), tenant.environments)
    for cid, course in site.courses.items():
        for role in ("students", "instructors", "tas"):
            grant(course_group(cid, role), course.environments)
    for team_id, team in site.teams.items():
        grant(team_group(team_id), team.environments)
    return rules


def default_environments(loaded: LoadedConfig) -> list[str]:
    """What a user in no tenant may start: the environment marked default (or the first one)."""
    envs = loaded.site.environments
    return [k for k, e in envs.items() if e.default] or list(envs)[:1]


def allowed_environments(
    order: Iterable[str],
    rules: dict[str, list[str]],
    groups: Iterable[str],
    *,
    admin: bool = False,
    fallback: Iterable[str] = (),
) -> list[str]:
    """Environment ids a user with these hub groups may start, in the site's order.

    Admins may start anything. Others get the union of what their groups grant; a user in no tenant
    at all (a fresh sign-up on a site without a default tenant) gets ``fallback`` only.
    """
    order = list(order)
    if admin:
        return order
    names = set(groups)
    allowed = {e for g in names for e in rules.get(g, ())}
    if not Membership.of(names).tenants:
        allowed.update(fallback)
    return [k for k in order if k in allowed]
