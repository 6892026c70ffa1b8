"""Login: turns the site config's `login:` list into JupyterHub's authenticator settings."""

from __future__ import annotations

from traitlets.config import Config

from atlaslab.config import LoadedConfig
from atlaslab.config.schema import NativeLogin, SharedPasswordLogin
from atlaslab.hub.membership import known_users
from atlaslab.hub.state import StateDir

from .tenants import add_login_tenants


def provider_tenant_hook(tenant: str | None):
    """A post_auth_hook placing users with no tenant into the provider's default tenant."""

    async def hook(authenticator, handler, auth_model):
        if tenant:
            add_login_tenants(handler, auth_model["name"], [tenant], only_if_none=True)
        return auth_model

    return hook


def configure_authenticator(c: Config, loaded: LoadedConfig, state: StateDir) -> None:
    site = loaded.site
    c.Authenticator.admin_users = set(site.site.admins)
    if len(site.login) != 1:
        raise NotImplementedError("several login providers at once")
    provider = site.login[0]
    if isinstance(provider, NativeLogin):
        c.JupyterHub.authenticator_class = "atlaslab.hub.auth.native.AtlasLabNativeAuthenticator"
        c.AtlasLabNativeAuthenticator.open_signup = provider.open_signup
        c.AtlasLabNativeAuthenticator.minimum_password_length = provider.minimum_password_length
        c.AtlasLabNativeAuthenticator.check_common_password = True
        c.AtlasLabNativeAuthenticator.preapproved_users = known_users(loaded) - set(site.site.admins)
        c.AtlasLabNativeAuthenticator.initial_admin_password_file = str(state.secret_path("initial-admin-password"))
        state.secret("initial-admin-password", 12)
        # Sign-up approval is the gate: every approved account may log in.
        c.Authenticator.allow_all = True
    elif isinstance(provider, SharedPasswordLogin):
        c.JupyterHub.authenticator_class = "shared-password"
        c.SharedPasswordAuthenticator.user_password = loaded.read_secret(provider.password)
        if provider.admin_password is not None:
            c.SharedPasswordAuthenticator.admin_password = loaded.read_secret(provider.admin_password)
        c.Authenticator.allow_all = True
    else:
        raise NotImplementedError(provider.provider)
    c.Authenticator.post_auth_hook = provider_tenant_hook(provider.tenant)
