"""Reading what a login provider says about a user: claim paths, groups, 42 campuses, tenants.

Pure functions of the provider's JSON, so they are tested without a provider.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def claim(data: Mapping[str, Any], path: str) -> Any:
    """The value at ``path`` in ``data``, or None.

    ``path`` is a claim name (``groups``), or a dot-separated path into nested objects
    (``realm_access.roles``). A claim whose own name has dots (``https://lab.example.ma/groups``)
    is found too: the whole name is tried first.
    """
    if not path:
        return None
    if path in data:
        return data[path]
    value: Any = data
    for key in path.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def claim_groups(data: Mapping[str, Any], path: str) -> list[str]:
    """The user's groups at ``path``: a list of names (a single name counts as a list of one)."""
    value = claim(data, path)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable) and not isinstance(value, Mapping):
        return [str(v) for v in value if isinstance(v, str | int)]
    return []


def tenant_for_groups(groups: Iterable[str], group_to_tenant: Mapping[str, str]) -> str | None:
    """The tenant of the first entry of ``group_to_tenant`` (in the config's order) the user is a member of."""
    member_of = set(groups)
    for group, tenant in group_to_tenant.items():
        if group in member_of:
            return tenant
    return None


def primary_campus(me: Mapping[str, Any]) -> str | None:
    """The name of a 42 user's primary campus, from the intranet's /v2/me answer.

    /v2/me lists the user's campuses (``campus: [{id, name}]``) and, in ``campus_users``, which one is
    primary (``{campus_id, is_primary}``); a student who moved keeps both. Without a primary entry,
    the first campus listed is used.
    """
    names = {c.get("id"): c.get("name") for c in me.get("campus") or [] if isinstance(c, Mapping) and c.get("name")}
    for link in me.get("campus_users") or []:
        if isinstance(link, Mapping) and link.get("is_primary") and link.get("campus_id") in names:
            return names[link["campus_id"]]
    return next(iter(names.values()), None)


def campus_tenant(me: Mapping[str, Any], campus_to_tenant: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(primary campus name, its tenant); the tenant is None when the campus is not mapped.

    ``campus_to_tenant`` is keyed by lower-case campus name; the intranet's names are compared in lower case.
    """
    campus = primary_campus(me)
    if campus is None:
        return None, None
    mapping = {name.strip().lower(): tenant for name, tenant in campus_to_tenant.items()}
    return campus, mapping.get(campus.strip().lower())
