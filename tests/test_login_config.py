"""The site config's `login:` list as JupyterHub authenticator settings (no hub started)."""

from __future__ import annotations

from pathlib import Path

import pytest
from jupyterhub import orm
from traitlets.config import Config

from atlaslab.config import ConfigError, load
from atlaslab.core.state import StateDir
from atlaslab.hub.auth import configure_authenticator
from atlaslab.hub.auth.multi import MultiLoginAuthenticator
from atlaslab.hub.auth.native import AtlasLabNativeAuthenticator
from atlaslab.hub.auth.oauth import Intra42Authenticator, OIDCAuthenticator

TENANTS = "tenants: {school: {title: S, members: [amina]}, lab: {title: L}}\n"
OIDC = """
  - provider: oidc
    id: keycloak
    title: Keycloak
    issuer: https://sso.uni.ma/realms/atlas
    client_id: atlaslab
    client_secret: {env: KC_SECRET}
    username_prefix: "kc:"
    allowed_users: [Omar]
    groups_claim: realm_access.roles
    allowed_groups: [students]
    admin_groups: [staff]
    group_to_tenant: {students: school}
"""


def configured(tmp_path: Path, text: str) -> tuple[Config, StateDir]:
    path = tmp_path / "atlaslab.yaml"
    path.write_text(text)
    loaded = load(path)
    state = StateDir(tmp_path / "state").ensure()
    c = Config()
    configure_authenticator(c, loaded, state)
    return c, state


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KC_SECRET", "kc-secret-value")


def test_one_native_login(tmp_path: Path) -> None:
    c, state = configured(tmp_path, TENANTS + "login: [{provider: native, tenant: school, open_signup: true}]\n")
    assert c.JupyterHub.authenticator_class == "atlaslab.hub.auth.native.AtlasLabNativeAuthenticator"
    native = c.AtlasLabNativeAuthenticator
    assert native.allow_all is True and native.open_signup is True
    assert native.preapproved_users == {"amina"}
    assert Path(native.initial_admin_password_file) == state.secret_path("initial-admin-password")
    assert state.secret_path("initial-admin-password").exists()
    assert callable(native.post_auth_hook)


def test_one_oidc_login_uses_the_plain_callback_url(tmp_path: Path) -> None:
    text = "site: {url: 'https://lab.uni.ma/'}\n" + TENANTS + "login:" + OIDC
    c, _ = configured(tmp_path, text)
    assert c.JupyterHub.authenticator_class == "atlaslab.hub.auth.oauth.OIDCAuthenticator"
    oidc = c.OIDCAuthenticator
    assert oidc.oauth_callback_url == "https://lab.uni.ma/hub/oauth_callback"
    assert oidc.mount_path == ""
    assert oidc.client_secret == "kc-secret-value"  # from the environment, never from the YAML
    assert oidc.issuer == "https://sso.uni.ma/realms/atlas"
    assert oidc.scope == ["openid", "profile", "email"]
    assert oidc.allowed_users == {"kc:omar"}  # provider accounts get the provider's prefix
    assert oidc.groups_claim == "realm_access.roles"
    assert oidc.allowed_provider_groups == {"students"} and oidc.admin_provider_groups == {"staff"}
    assert oidc.group_to_tenant == {"students": "school"}
    assert oidc.login_service == "Keycloak"
    assert "authorize_url" not in oidc  # discovered from the issuer when the hub starts


def test_several_logins_are_mounted_under_their_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "gh").write_text("gh-secret\n")
    (tmp_path / "gh").chmod(0o600)
    text = (
        "site: {url: 'https://lab.uni.ma/atlas'}\n"
        + TENANTS
        + "login:\n  - {provider: native, tenant: school}"
        + OIDC
        + """
  - provider: github
    client_id: gh
    client_secret: {file: gh}
    allowed_organizations: [atlas-lab]
    endpoints:
      authorize_url: https://ghe.uni.ma/login/oauth/authorize
      token_url: https://ghe.uni.ma/login/oauth/access_token
      userdata_url: https://ghe.uni.ma/api/v3/user
"""
    )
    c, _ = configured(tmp_path, text)
    assert c.JupyterHub.authenticator_class == "atlaslab.hub.auth.multi.MultiLoginAuthenticator"
    logins = {entry["id"]: entry for entry in c.MultiLoginAuthenticator.logins}
    assert list(logins) == ["native", "keycloak", "github"]
    assert logins["native"]["class"].endswith("AtlasLabNativeAuthenticator")
    keycloak, github = logins["keycloak"]["config"], logins["github"]["config"]
    assert keycloak["oauth_callback_url"] == "https://lab.uni.ma/atlas/hub/keycloak/oauth_callback"
    assert keycloak["mount_path"] == "keycloak/"
    assert github["oauth_callback_url"] == "https://lab.uni.ma/atlas/hub/github/oauth_callback"
    assert github["client_secret"] == "gh-secret"
    assert github["github_api"] == "https://ghe.uni.ma/api/v3"
    assert github["scope"] == ["read:user", "user:email", "read:org"]
    assert github["userdata_url"] == "https://ghe.uni.ma/api/v3/user"
    # nothing leaks to the shared Authenticator section, which all children read
    assert "allow_all" not in c.Authenticator and "post_auth_hook" not in c.Authenticator

    # The multi-authenticator builds each child with the hub's database, and routes each page to it.
    db = orm.new_session_factory("sqlite://")()
    multi = MultiLoginAuthenticator(config=c, _deprecated_db_session=db)
    native, oidc = multi.authenticators["native"], multi.authenticators["keycloak"]
    assert isinstance(native, AtlasLabNativeAuthenticator) and native.allow_all is True
    assert isinstance(oidc, OIDCAuthenticator) and oidc.allow_all is False
    assert oidc.admin_users == {"admin"}  # the site's admins apply to every login
    routes = {path: handler for path, handler, *_ in multi.get_handlers(None)}
    assert {"/login", "/signup", "/authorize", "/change-password"} <= set(routes)
    assert {"/keycloak/oauth_login", "/keycloak/oauth_callback", "/github/oauth_callback"} <= set(routes)
    assert routes["/keycloak/oauth_callback"].authenticator is oidc
    assert routes["/signup"].authenticator is native
    assert routes["/login"].authenticator is native  # the page posts its form to the local accounts
    assert [b["path"] for b in routes["/login"].login_buttons] == ["keycloak/oauth_login", "github/oauth_login"]
    assert oidc.login_url("/hub/") == "/hub/keycloak/oauth_login"


def test_only_oauth_logins_still_get_a_login_page(tmp_path: Path) -> None:
    (tmp_path / "s").write_text("x\n")
    (tmp_path / "s").chmod(0o600)
    text = TENANTS + (
        "login:\n"
        "  - {provider: intra42, client_id: a, client_secret: {file: s}, campus_to_tenant: {Benguerir: school}}\n"
        "  - {provider: google, client_id: b, client_secret: {file: s}, hosted_domain: [UM6P.ma]}\n"
    )
    c, _ = configured(tmp_path, text)
    logins = {entry["id"]: entry["config"] for entry in c.MultiLoginAuthenticator.logins}
    assert logins["intra42"]["campus_to_tenant"] == {"benguerir": "school"}
    assert logins["google"]["hosted_domain"] == ["um6p.ma"]
    assert "oauth_callback_url" not in logins["google"]  # no site.url: guessed from each request
    multi = MultiLoginAuthenticator(config=c, _deprecated_db_session=orm.new_session_factory("sqlite://")())
    assert isinstance(multi.authenticators["intra42"], Intra42Authenticator)
    assert multi.authenticators["intra42"].userdata_url == "https://api.intra.42.fr/v2/me"
    routes = {path: handler for path, handler, *_ in multi.get_handlers(None)}
    assert routes["/login"].authenticator is multi and routes["/login"].password_form is False


def test_local_accounts_cannot_take_a_prefix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"login\[0\]\.username_prefix"):
        configured(tmp_path, "login: [{provider: native, username_prefix: 'x:'}]\n")


def test_shared_password_with_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKSHOP", "a-long-workshop-password")
    c, _ = configured(
        tmp_path, "login: [{provider: shared-password, password: {env: WORKSHOP}, username_prefix: 'ws-'}]"
    )
    shared = c.AtlasLabSharedPasswordAuthenticator
    assert c.JupyterHub.authenticator_class.endswith("AtlasLabSharedPasswordAuthenticator")
    assert shared.user_password == "a-long-workshop-password" and shared.username_prefix == "ws-"


def test_oidc_endpoints_override_discovery() -> None:
    issuer = "https://sso.uni.ma/realms/atlas"
    assert OIDCAuthenticator(issuer=issuer)._needs_discovery()
    given = OIDCAuthenticator(
        issuer=issuer,
        authorize_url=f"{issuer}/auth",
        token_url=f"{issuer}/token",
        userdata_url=f"{issuer}/userinfo",
    )
    assert not given._needs_discovery()
