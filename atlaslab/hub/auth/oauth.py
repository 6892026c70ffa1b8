"""AtlasLab's OAuth logins: OAuthenticator's classes plus what every AtlasLab login adds.

- a username prefix per provider, so that two providers cannot claim the same hub account;
- provider groups read from a claim (``groups_claim``, a dot path) that allow login, make admins and
  map to tenants, without JupyterHub's ``manage_groups`` (see tenants.py);
- a mount path, so that several providers live side by side under /hub/ID/ (see multi.py);
- a clear 403 page saying why a user was refused, instead of JupyterHub's generic one.
"""

from __future__ import annotations

import asyncio

from jupyterhub.utils import url_path_join
from oauthenticator.azuread import AzureAdOAuthenticator
from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.github import GitHubOAuthenticator
from oauthenticator.google import GoogleOAuthenticator
from oauthenticator.oauth2 import OAuthenticator, OAuthLoginHandler
from tornado import web
from traitlets import Dict, Set, Unicode, default

from .claims import campus_tenant, claim_groups, tenant_for_groups
from .tenants import STATE_KEY

ASK_ADMIN = "If you think you should have access, ask the site's administrator."


class LoginRefused(web.HTTPError):
    """A user the provider knows but this site does not let in: a 403 page with the reason."""

    def __init__(self, message: str):
        super().__init__(403, message, reason="Sign-in refused")


class ProviderUnavailable(web.HTTPError):
    def __init__(self, message: str):
        super().__init__(503, message, reason="Login provider unavailable")


class AtlasLabLoginHandler(OAuthLoginHandler):
    """OAuthenticator's redirect to the provider, once the provider's endpoints are known."""

    async def get(self):
        await self.authenticator.ensure_ready()
        return super().get()


class AtlasLabOAuthenticator(OAuthenticator):
    """What every AtlasLab OAuth login adds; listed first: ``class X(AtlasLabOAuthenticator, GitHubOAuthenticator)``.

    It derives from OAuthenticator so that its traits are real traits; in the subclasses' method order
    it comes before the provider's own class, which its ``super()`` calls reach.
    """

    login_handler = AtlasLabLoginHandler

    username_prefix = Unicode("", help="Prefix added to every username from this provider.").tag(config=True)
    mount_path = Unicode(
        "", help="Path under the hub's URL where oauth_login and oauth_callback live ('' or 'ID/')."
    ).tag(config=True)
    groups_claim = Unicode("", help="Dot path of the user's groups in the provider's user info.").tag(config=True)
    allowed_provider_groups = Set(Unicode(), help="Provider groups whose members may log in.").tag(config=True)
    admin_provider_groups = Set(Unicode(), help="Provider groups whose members are hub admins.").tag(config=True)
    group_to_tenant = Dict(
        value_trait=Unicode(), key_trait=Unicode(), help="Provider group -> tenant, first match wins."
    ).tag(config=True)

    async def ensure_ready(self) -> None:
        """Called before sending a user to the provider; subclasses discover endpoints here."""

    def login_url(self, base_url):
        return url_path_join(base_url, self.mount_path, "oauth_login")

    def get_callback_url(self, handler=None):
        if self.oauth_callback_url or handler is None:
            return super().get_callback_url(handler)
        path = url_path_join(handler.hub.server.base_url, self.mount_path, "oauth_callback")
        return f"{handler.request.protocol}://{handler.request.host}{path}"

    def user_info_to_username(self, user_info):
        return self.username_prefix + super().user_info_to_username(user_info)

    def user_groups(self, user_info: dict) -> list[str]:
        return claim_groups(user_info, self.groups_claim) if self.groups_claim else []

    def user_tenants(self, user_info: dict, groups: list[str]) -> list[str]:
        tenant = tenant_for_groups(groups, self.group_to_tenant)
        return [tenant] if tenant else []

    async def update_auth_model(self, auth_model):
        auth_model = await super().update_auth_model(auth_model)
        user_info = auth_model["auth_state"][self.user_auth_state_key]
        groups = self.user_groups(user_info)
        auth_model["auth_state"][STATE_KEY] = {"groups": groups, "tenants": self.user_tenants(user_info, groups)}
        if self.admin_provider_groups and not auth_model["admin"]:
            auth_model["admin"] = bool(self.admin_provider_groups.intersection(groups))
        return auth_model

    def allowed_by_claims(self, auth_model) -> bool:
        return bool(self.allowed_provider_groups.intersection(auth_model["auth_state"][STATE_KEY]["groups"]))

    def refusal(self, account: str, auth_model) -> str:
        """Why ``account`` (the provider's name for the user) may not log in, in a sentence."""
        if self.allowed_provider_groups:
            return f"Your {self.login_service} account ({account}) is not in a group allowed to use this site."
        return f"Your {self.login_service} account ({account}) is not allowed to use this site."

    async def check_allowed(self, username, auth_model):
        if await super().check_allowed(username, auth_model) or self.allowed_by_claims(auth_model):
            return True
        self.log.warning("Refused %s from %s: not allowed", username, self.login_service)
        account = username.removeprefix(self.username_prefix)
        raise LoginRefused(f"{self.refusal(account, auth_model)} {ASK_ADMIN}")


class OIDCAuthenticator(AtlasLabOAuthenticator, GenericOAuthenticator):
    """Any OpenID Connect provider (Keycloak, ...), endpoints discovered from the issuer."""

    issuer = Unicode("", help="Issuer URL; endpoints come from ISSUER/.well-known/openid-configuration.").tag(
        config=True
    )

    @default("login_service")
    def _login_service_default(self):
        return "OpenID Connect"

    @default("scope")
    def _scope_default(self):
        return ["openid", "profile", "email"]

    @default("username_claim")
    def _username_claim_default(self):
        return "preferred_username"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._discovery: asyncio.Future | None = None
        if self._needs_discovery():
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return  # not inside the hub (e.g. a config check): discover on first login
            self._discovery = asyncio.ensure_future(self._discover())
            self._discovery.add_done_callback(self._log_discovery)

    def _needs_discovery(self) -> bool:
        return bool(self.issuer) and not (self.authorize_url and self.token_url and self.userdata_url)

    def _log_discovery(self, future: asyncio.Future) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.log.warning("Will discover the endpoints of %s when someone logs in", self.issuer)

    async def ensure_ready(self) -> None:
        if not self._needs_discovery():
            return
        failed = self._discovery is not None and self._discovery.done() and self._discovery.exception()
        if self._discovery is None or failed:
            self._discovery = asyncio.ensure_future(self._discover())
        await self._discovery

    async def _discover(self) -> None:
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            doc = await self.httpfetch(
                url, "discovering the OpenID provider", method="GET", validate_cert=self.validate_server_cert
            )
            endpoints = {
                "authorize_url": doc["authorization_endpoint"],
                "token_url": doc["token_endpoint"],
                "userdata_url": doc["userinfo_endpoint"],
            }
        except Exception as e:
            self.log.error("Cannot discover the endpoints of %s from %s: %s", self.issuer, url, e)
            raise ProviderUnavailable(
                f"The login provider {self.issuer.rstrip('/')} cannot be reached or is not an OpenID provider"
                f" ({e}). Try again in a minute; if it persists, tell the site's administrator."
            ) from None
        if doc.get("issuer", "").rstrip("/") != self.issuer.rstrip("/"):
            self.log.warning("%s announces issuer %r, not the configured %r", url, doc.get("issuer"), self.issuer)
        for trait, value in endpoints.items():
            if not getattr(self, trait):
                setattr(self, trait, value)
        self.log.info("Discovered the endpoints of %s", self.issuer)

    async def authenticate(self, handler, data=None, **kwargs):
        await self.ensure_ready()
        return await super().authenticate(handler, data, **kwargs)


class GitHubAuthenticator(AtlasLabOAuthenticator, GitHubOAuthenticator):
    """GitHub (or GitHub Enterprise) accounts, optionally only members of some organisations."""

    async def _check_membership_allowed_organizations(self, org_team, username, access_token, token_type):
        # GitHub knows the account by its login, without AtlasLab's prefix.
        login = username.removeprefix(self.username_prefix)
        return await super()._check_membership_allowed_organizations(org_team, login, access_token, token_type)

    def refusal(self, account, auth_model):
        if self.allowed_organizations:
            return f"Your GitHub account ({account}) is not a member of an organisation allowed to use this site."
        return super().refusal(account, auth_model)


class GoogleAuthenticator(AtlasLabOAuthenticator, GoogleOAuthenticator):
    """Google accounts, optionally only those of some Workspace domains (``hosted_domain``)."""

    async def token_to_user(self, token_info):
        user_info = await super().token_to_user(token_info)
        # Google's v1 userinfo says verified_email; its OpenID Connect userinfo says email_verified.
        if "verified_email" not in user_info:
            user_info["verified_email"] = bool(user_info.get("email_verified", False))
        return user_info

    def check_blocked_users(self, username, auth_model):
        user_info = auth_model["auth_state"][self.user_auth_state_key]
        if self.hosted_domain and user_info.get("hd", "") not in self.hosted_domain:
            self.log.warning("Refused %s: hd=%r is not one of %s", username, user_info.get("hd"), self.hosted_domain)
            domains = ", ".join(self.hosted_domain)
            raise LoginRefused(
                f"Only Google accounts of {domains} may sign in here, and {user_info.get('email', username)}"
                f" is not one. Sign out of Google and sign in with your {domains} account."
            )
        return super().check_blocked_users(username, auth_model)

    def allowed_by_claims(self, auth_model):
        # In AtlasLab, listing Workspace domains lets their accounts in (check_blocked_users refused the rest).
        return bool(self.hosted_domain) or super().allowed_by_claims(auth_model)


MULTI_TENANT_DIRECTORIES = ("common", "organizations", "consumers")


class AzureADAuthenticator(AtlasLabOAuthenticator, AzureAdOAuthenticator):
    """Microsoft Entra ID accounts of one directory, through the v2.0 endpoints (claims from the id_token)."""

    @default("login_service")
    def _login_service_default(self):
        return "Microsoft"

    @default("authorize_url")
    def _authorize_url_default(self):
        return f"{self.graph_url}/{self.tenant_id or 'organizations'}/oauth2/v2.0/authorize"

    @default("token_url")
    def _token_url_default(self):
        return f"{self.graph_url}/{self.tenant_id or 'organizations'}/oauth2/v2.0/token"

    @default("scope")
    def _scope_default(self):
        return ["openid", "profile", "email"]

    @default("username_claim")
    def _username_claim_default(self):
        return "preferred_username"

    def check_blocked_users(self, username, auth_model):
        user_info = auth_model["auth_state"][self.user_auth_state_key]
        if self.tenant_id and self.tenant_id not in MULTI_TENANT_DIRECTORIES and user_info.get("tid") != self.tenant_id:
            self.log.warning("Refused %s: directory %r is not %r", username, user_info.get("tid"), self.tenant_id)
            raise LoginRefused(
                f"Your Microsoft account ({username.removeprefix(self.username_prefix)}) belongs to another"
                " organisation's directory;"
                f" only accounts of this site's directory may sign in. {ASK_ADMIN}"
            )
        return super().check_blocked_users(username, auth_model)


INTRA42_API = "https://api.intra.42.fr"


class Intra42Authenticator(AtlasLabOAuthenticator, GenericOAuthenticator):
    """The 42 network's intranet: username from `login`; the primary campus decides the tenant.

    Users whose campus is not in ``campus_to_tenant`` are refused unless ``allow_all`` is set or they
    are listed in ``allowed_users``.
    """

    user_auth_state_key = "intra42_user"

    campus_to_tenant = Dict(
        value_trait=Unicode(), key_trait=Unicode(), help="Lower-case 42 campus name -> tenant."
    ).tag(config=True)

    @default("login_service")
    def _login_service_default(self):
        return "42 Intranet"

    @default("authorize_url")
    def _authorize_url_default(self):
        return f"{INTRA42_API}/oauth/authorize"

    @default("token_url")
    def _token_url_default(self):
        return f"{INTRA42_API}/oauth/token"

    @default("userdata_url")
    def _userdata_url_default(self):
        return f"{INTRA42_API}/v2/me"

    @default("scope")
    def _scope_default(self):
        return ["public"]

    @default("username_claim")
    def _username_claim_default(self):
        return "login"

    def user_tenants(self, user_info, groups):
        _, tenant = campus_tenant(user_info, self.campus_to_tenant)
        return [tenant] if tenant else []

    def allowed_by_claims(self, auth_model):
        return bool(auth_model["auth_state"][STATE_KEY]["tenants"])

    def refusal(self, account, auth_model):
        campus, _ = campus_tenant(auth_model["auth_state"][self.user_auth_state_key], self.campus_to_tenant)
        if campus is None:
            return f"Your 42 account ({account}) has no campus, and this site is open to some campuses only."
        return f"This site is not open to students of 42 {campus} (your 42 account: {account})."


OAUTH_CLASSES = {
    "oidc": OIDCAuthenticator,
    "github": GitHubAuthenticator,
    "google": GoogleAuthenticator,
    "azuread": AzureADAuthenticator,
    "intra42": Intra42Authenticator,
}
