"""Login: turns the site config's `login:` list into JupyterHub's authenticator settings.

One provider: its authenticator class is the hub's (callback URL PUBLIC_URL/hub/oauth_callback).
Several: MultiLoginAuthenticator (multi.py) offers them side by side, each OAuth provider under
/hub/ID/ (callback URL PUBLIC_URL/hub/ID/oauth_callback).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from traitlets.config import Config

from atlaslab.config import ConfigError, LoadedConfig, Problem
from atlaslab.config.schema import (
    AzureADLogin,
    GitHubLogin,
    GoogleLogin,
    Intra42Login,
    NativeLogin,
    OAuthBase,
    OIDCLogin,
    SharedPasswordLogin,
)
from atlaslab.core.membership import known_users
from atlaslab.core.state import StateDir

from .tenants import add_login_tenants, provider_tenant_hook

__all__ = ["add_login_tenants", "configure_authenticator", "login_settings", "provider_tenant_hook"]

MULTI = "atlaslab.hub.auth.multi.MultiLoginAuthenticator"
NATIVE = "atlaslab.hub.auth.native.AtlasLabNativeAuthenticator"
SHARED = "atlaslab.hub.auth.shared.AtlasLabSharedPasswordAuthenticator"
OAUTH = {
    "oidc": "atlaslab.hub.auth.oauth.OIDCAuthenticator",
    "github": "atlaslab.hub.auth.oauth.GitHubAuthenticator",
    "google": "atlaslab.hub.auth.oauth.GoogleAuthenticator",
    "azuread": "atlaslab.hub.auth.oauth.AzureADAuthenticator",
    "intra42": "atlaslab.hub.auth.oauth.Intra42Authenticator",
}
TITLES = {
    "native": "Local account",
    "shared-password": "Workshop password",
    "oidc": "OpenID Connect",
    "github": "GitHub",
    "google": "Google",
    "azuread": "Microsoft",
    "intra42": "42 Intranet",
}
DEFAULT_SCOPES = {
    "oidc": ["openid", "profile", "email"],
    "google": ["openid", "email"],
    "azuread": ["openid", "profile", "email"],
    "intra42": ["public"],
    "github": ["read:user", "user:email"],
}


@dataclass(frozen=True)
class LoginSettings:
    key: str
    title: str
    cls: str
    config: dict[str, Any]


def configure_authenticator(c: Config, loaded: LoadedConfig, state: StateDir) -> None:
    site = loaded.site
    c.Authenticator.admin_users = set(site.site.admins)
    several = len(site.login) > 1
    logins = [login_settings(loaded, state, i, several) for i in range(len(site.login))]
    if not several:
        login = logins[0]
        c.JupyterHub.authenticator_class = login.cls
        section = c[login.cls.rsplit(".", 1)[1]]
        for name, value in login.config.items():
            section[name] = value
        return
    c.JupyterHub.authenticator_class = MULTI
    c.MultiLoginAuthenticator.logins = [
        {"id": login.key, "title": login.title, "class": login.cls, "config": login.config} for login in logins
    ]


def login_settings(loaded: LoadedConfig, state: StateDir, index: int, mounted: bool) -> LoginSettings:
    """The authenticator class and trait values for ``login[index]``; ``mounted``: under /hub/ID/."""
    site = loaded.site
    provider = site.login[index]
    title = provider.title or TITLES[provider.provider]
    common: dict[str, Any] = {"post_auth_hook": provider_tenant_hook(provider.tenant)}

    if isinstance(provider, NativeLogin):
        if provider.username_prefix:
            raise ConfigError(
                [
                    Problem(
                        loaded.label,
                        f"login.{index}.username_prefix",
                        "local accounts keep the name people sign up with; remove username_prefix here",
                    )
                ]
            )
        state.secret("initial-admin-password", 12)
        config = {
            "open_signup": provider.open_signup,
            "minimum_password_length": provider.minimum_password_length,
            "check_common_password": True,
            "preapproved_users": known_users(loaded) - set(site.site.admins),
            "initial_admin_password_file": str(state.secret_path("initial-admin-password")),
            # Sign-up approval is the gate: every approved account may log in.
            "allow_all": True,
        }
        return LoginSettings(provider.key, title, NATIVE, {**config, **common})

    if isinstance(provider, SharedPasswordLogin):
        config = {
            "user_password": loaded.read_secret(provider.password),
            "username_prefix": provider.username_prefix,
            "allow_all": True,
        }
        if provider.admin_password is not None:
            config["admin_password"] = loaded.read_secret(provider.admin_password)
        return LoginSettings(provider.key, title, SHARED, {**config, **common})

    assert isinstance(provider, OAuthBase)
    mount = f"{provider.key}/" if mounted else ""
    config = {
        "login_service": title,
        "client_id": provider.client_id,
        "client_secret": loaded.read_secret(provider.client_secret),
        "scope": provider.scopes or _default_scopes(provider),
        "allow_all": provider.allow_all,
        "allowed_users": {_prefixed(provider.username_prefix, u) for u in provider.allowed_users},
        "username_prefix": provider.username_prefix,
        "mount_path": mount,
    }
    if site.site.url is not None:
        config["oauth_callback_url"] = f"{site.site.public_url}/hub/{mount}oauth_callback"
    if provider.endpoints is not None:
        config["authorize_url"] = str(provider.endpoints.authorize_url)
        config["token_url"] = str(provider.endpoints.token_url)
        config["userdata_url"] = str(provider.endpoints.userdata_url)
    config.update(_provider_config(provider))
    return LoginSettings(provider.key, title, OAUTH[provider.provider], {**config, **common})


def _provider_config(provider: OAuthBase) -> dict[str, Any]:
    """What only one kind of provider has."""
    config: dict[str, Any] = {}
    if isinstance(provider, OIDCLogin | AzureADLogin):
        config.update(
            username_claim=provider.username_claim,
            groups_claim=provider.groups_claim or "groups",
            allowed_provider_groups=set(provider.allowed_groups),
            admin_provider_groups=set(provider.admin_groups),
            group_to_tenant=dict(provider.group_to_tenant),
        )
    if isinstance(provider, OIDCLogin):
        config["issuer"] = str(provider.issuer)
    elif isinstance(provider, AzureADLogin):
        config["tenant_id"] = provider.azure_tenant_id
    elif isinstance(provider, GitHubLogin):
        config["allowed_organizations"] = set(provider.allowed_organizations)
        if provider.endpoints is not None:
            # GitHub Enterprise (or a test provider): the REST API is where the user endpoint lives.
            config["github_api"] = str(provider.endpoints.userdata_url).rstrip("/").removesuffix("/user")
    elif isinstance(provider, GoogleLogin):
        config["hosted_domain"] = [d.lower() for d in provider.hosted_domain]
    elif isinstance(provider, Intra42Login):
        config["campus_to_tenant"] = {k.lower(): v for k, v in provider.campus_to_tenant.items()}
    return config


def _default_scopes(provider: OAuthBase) -> list[str]:
    scopes = list(DEFAULT_SCOPES[provider.provider])
    if isinstance(provider, GitHubLogin) and provider.allowed_organizations:
        scopes.append("read:org")  # to see private organisation membership
    return scopes


def _prefixed(prefix: str, name: str) -> str:
    name = name.lower()
    return name if name.startswith(prefix) else prefix + name
