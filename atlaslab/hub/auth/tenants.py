"""Put a user who logs in into the tenant their login implies (provider default or a claim mapping).

JupyterHub's ``manage_groups`` would make the authenticator the only source of group membership and
forbid ``load_groups``; AtlasLab's course and team groups come from the site config, so tenant groups
implied by a login are *added* here instead, after authentication and before the session starts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from jupyterhub import orm

from atlaslab.core.membership import Membership, tenant_group

# Where AtlasLab's OAuth logins leave what they read from the provider, inside the auth model's
# auth_state: {"groups": [provider groups], "tenants": [tenants the claims map to]}.
STATE_KEY = "atlaslab"


def add_login_tenants(handler, username: str, tenants: Iterable[str], *, only_if_none: bool) -> None:
    """Add ``username`` to each tenant group; with ``only_if_none``, only when they have no tenant yet."""
    tenants = list(tenants)
    if not tenants:
        return
    user = handler.find_user(username) or handler.user_from_username(username)
    current = {g.name for g in user.groups}
    if only_if_none and Membership.of(current).tenants:
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


@dataclass(frozen=True)
class TenantHook:
    """A post_auth_hook adding the tenants a login implies (plain data: two applies of a site compare equal).

    Tenants mapped from the provider's claims (groups, 42 campus) are always added; the provider's
    default ``tenant`` only when the user belongs to no tenant otherwise.
    """

    tenant: str | None

    async def __call__(self, authenticator, handler, auth_model):
        claimed = ((auth_model.get("auth_state") or {}).get(STATE_KEY) or {}).get("tenants") or []
        add_login_tenants(handler, auth_model["name"], claimed, only_if_none=False)
        if self.tenant:
            add_login_tenants(handler, auth_model["name"], [self.tenant], only_if_none=True)
        return auth_model


def provider_tenant_hook(tenant: str | None) -> TenantHook:
    return TenantHook(tenant)
