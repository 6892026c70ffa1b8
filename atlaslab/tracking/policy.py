"""Who may do what in MLflow, from hub groups and the owner recorded on each experiment or registered model.

An experiment or registered model carries the tag ``atlaslab.owner``: ``user:NAME``, ``team:TEAM`` or
``course:COURSE``; a user's experiment may also carry ``atlaslab.course`` (course work its course's staff read).
Experiment names in the reserved namespaces decide the owner by themselves:

* ``users/NAME/...``: only NAME creates them; owned by NAME;
* ``teams/TEAM/...``: only members of TEAM; owned by the team;
* ``courses/COURSE/...``: staff create shared course experiments (students read them); a student creates
  ``courses/COURSE/NAME/...`` only, their own course work, which the course's instructors and TAs read.

Anything else belongs to whoever created it unless an ``atlaslab.owner`` tag given at creation says otherwise
(and the creator belongs to that team or teaches that course). Pure functions, so they are tested directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from atlaslab.core.membership import Membership

OWNER_TAG = "atlaslab.owner"
COURSE_TAG = "atlaslab.course"
RESERVED_TAG_PREFIX = "atlaslab."
MANAGE = "MANAGE"
READ = "READ"


class Refused(Exception):
    """A request the rules refuse; the message says why and what to do instead."""


@dataclass(frozen=True)
class Member:
    """A hub user as the rules see them: name, admin flag and the teams and courses their hub groups say."""

    name: str
    admin: bool = False
    teams: frozenset[str] = frozenset()
    student_of: frozenset[str] = frozenset()
    staff_of: frozenset[str] = frozenset()

    @classmethod
    def from_groups(cls, name: str, groups: Iterable[str], admin: bool = False) -> Member:
        m = Membership.of(groups)
        return cls(name, admin or m.site_admin, frozenset(m.teams), m.student_of, m.staff_of)

    def owner_values(self) -> set[str]:
        """Owner tag values that give this member a permission by themselves."""
        return (
            {f"user:{self.name}"}
            | {f"team:{t}" for t in self.teams}
            | {f"course:{c}" for c in self.student_of | self.staff_of}
        )


def level(member: Member, owner: str, course: str | None, students_of: Callable[[str], set[str]]) -> str | None:
    """The permission ``member`` holds on something owned by ``owner`` (with course tag ``course``), or None."""
    kind, _, value = owner.partition(":")
    if kind == "user":
        if value == member.name:
            return MANAGE
        if course and course in member.staff_of and value in students_of(course):
            return READ
    elif kind == "team" and value in member.teams:
        return MANAGE
    elif kind == "course":
        if value in member.staff_of:
            return MANAGE
        if value in member.student_of:
            return READ
    return None


def namespace_owner(member: Member, name: str) -> tuple[str, str | None] | None:
    """(owner, course) an experiment name in a reserved namespace gives, None outside them; Refused if not allowed."""
    parts = name.split("/")
    if len(parts) < 3 or parts[0] not in ("users", "teams", "courses") or not parts[1]:
        return None
    space, key = parts[0], parts[1]
    if space == "users":
        if key != member.name and not member.admin:
            raise Refused(f"'users/{key}/...' belongs to {key}; use 'users/{member.name}/...'")
        return f"user:{key}", None
    if space == "teams":
        if key not in member.teams and not member.admin:
            raise Refused(f"you are not a member of team '{key}'")
        return f"team:{key}", None
    if key in member.staff_of or member.admin:
        return f"course:{key}", None
    if key in member.student_of:
        if parts[2] != member.name:
            raise Refused(f"students keep course work under 'courses/{key}/{member.name}/...'")
        return f"user:{member.name}", key
    raise Refused(f"you are not in course '{key}'")


def tagged_owner(member: Member, tags: dict[str, str]) -> tuple[str | None, str | None]:
    """(owner, course) asked for with tags at creation; Refused when the member may not claim them."""
    owner, course = tags.get(OWNER_TAG), tags.get(COURSE_TAG)
    if owner is not None and not member.admin:
        kind, _, value = owner.partition(":")
        allowed = (
            (kind == "user" and value == member.name)
            or (kind == "team" and value in member.teams)
            or (kind == "course" and value in member.staff_of)
        )
        if not allowed:
            raise Refused(
                f"cannot give ownership to '{owner}': use user:{member.name}, a team you are in (team:NAME)"
                " or a course you teach (course:ID)"
            )
    if course is not None and not member.admin and course not in member.student_of | member.staff_of:
        raise Refused(f"you are not in course '{course}'")
    return owner, course


def creation_owner(member: Member, name: str | None, tags: dict[str, str]) -> tuple[str, str | None]:
    """(owner, course) of a new experiment (or, with ``name`` None, a registered model) ``member`` creates."""
    owner, course = tagged_owner(member, tags)
    from_name = namespace_owner(member, name) if name else None
    if from_name is not None:
        if owner is not None and owner != from_name[0]:
            raise Refused(f"the name '{name}' says the owner is {from_name[0]}, the tags say {owner}")
        return from_name[0], from_name[1] or course
    return owner or f"user:{member.name}", course
