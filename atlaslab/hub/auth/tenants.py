"""Put a user who logs in into the tenant their login implies (provider default or a claim mapping).

JupyterHub's ``manage_groups`` would make the authenticator the only source of group membership and
forbid ``load_groups``; AtlasLab's course and team groups come from the site config, so tenant groups
implied by a login are *added* here instead, after authentication and before the session starts.
"""

from __future__ import annotations

from collections.abc import Iterable

from jupyterhub import orm

from atlaslab.hub.membership import tenant_group


def add_login_tenants(handler, username: str, tenants: Iterable[str], *, only_if_none: bool) -> None:
    """Add ``username`` to each tenant group; with ``only_if_none``, only when they have no tenant yet."""
    tenants = list(tenants)
    if not tenants:
        return
    user = handler.find_user(username) or handler.user_from_username(username)
    current = {g.name for g in user.groups}
    if only_if_none and any(g.startswith("tenant:") and g.count(":") == 1 for g in current):
        return
    db = handler.db
    for tenant in tenants:
        name = tenant_group(tenant)
        if name in current:
            continue
        group = orm.Group.find(db, name)
        if group is None:
            group = orm.Group(name=name)
            db.add(group)
        user.groups.append(group)
    db.commit()
