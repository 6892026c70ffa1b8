"""Every OAuth login preset through a real hub and a real OpenID Connect provider (tests/oidc/provider.mjs).

A person's browser is an httpx client following redirects: hub -> provider (which logs in the account
named by a cookie and consents) -> hub callback. One provider serves the whole module, and two hubs:
one offers local accounts and every preset at once (each under /hub/ID/), one a single provider.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from harness import Browser, Workbench, free_port, write_site
from oidc import TestProvider

TENANTS = {
    "school": {"title": "School"},
    "lab": {"title": "Lab"},
    "bg": {"title": "1337 Benguerir"},
    "kh": {"title": "1337 Khouribga"},
}

ACCOUNTS: dict[str, dict[str, Any]] = {
    # Keycloak: groups as realm roles (a nested claim)
    "kc-alice": {"preferred_username": "alice", "email": "alice@uni.ma", "realm_access": {"roles": ["students"]}},
    "kc-boss": {"preferred_username": "Boss", "email": "boss@uni.ma", "realm_access": {"roles": ["staff", "x"]}},
    "kc-eve": {"preferred_username": "eve", "email": "eve@uni.ma", "realm_access": {"roles": ["guests"]}},
    # GitHub: the user API gives `login`; organisation membership is asked of /orgs/ORG/members/LOGIN
    "gh-octo": {"login": "octocat", "email": "octo@example.com", "orgs": ["atlas-lab"]},
    "gh-mallory": {"login": "mallory", "email": None, "orgs": ["elsewhere"]},
    # Google: `hd` is the Workspace domain
    "g-amina": {"email": "amina@um6p.ma", "email_verified": True, "hd": "um6p.ma", "name": "Amina"},
    "g-joe": {"email": "joe@gmail.com", "email_verified": True, "name": "Joe"},
    # Entra ID: claims come in the id_token; `tid` is the directory
    "az-sara": {
        "preferred_username": "sara@contoso.ma",
        "name": "Sara",
        "tid": "dir-1",
        "oid": "0001",
        "groups": ["g-researchers", "g-admins"],
    },
    "az-omar": {"preferred_username": "omar@contoso.ma", "name": "Omar", "tid": "dir-1", "oid": "0002", "groups": []},
    "az-intruder": {"preferred_username": "x@evil.ma", "tid": "dir-2", "oid": "0003", "groups": ["g-researchers"]},
    # 42 intranet: /v2/me lists campuses and which one is primary
    "42-yassine": {
        "login": "yabouh",
        "email": "yabouh@student.1337.ma",
        "campus": [{"id": 21, "name": "Khouribga"}, {"id": 55, "name": "Benguerir"}],
        "campus_users": [{"campus_id": 21, "is_primary": False}, {"campus_id": 55, "is_primary": True}],
    },
    "42-lea": {
        "login": "lmartin",
        "email": "lmartin@student.42.fr",
        "campus": [{"id": 1, "name": "Paris"}],
        "campus_users": [{"campus_id": 1, "is_primary": True}],
    },
}


def _endpoints(port: int, userdata: str) -> dict[str, str]:
    base = f"http://127.0.0.1:{port}"
    return {"authorize_url": f"{base}/auth", "token_url": f"{base}/token", "userdata_url": f"{base}{userdata}"}


def _presets(port: int) -> dict[str, dict[str, Any]]:
    """The login entry of each preset, pointed at the test provider."""
    issuer = f"http://127.0.0.1:{port}"
    return {
        "oidc": {
            "provider": "oidc",
            "title": "Keycloak",
            "issuer": issuer,
            "client_id": "oidc-client",
            "client_secret": {"file": "oidc-secret"},
            "username_prefix": "kc:",
            "groups_claim": "realm_access.roles",
            "allowed_groups": ["students", "staff"],
            "admin_groups": ["staff"],
            "group_to_tenant": {"staff": "lab", "students": "school"},
        },
        "github": {
            "provider": "github",
            "client_id": "github-client",
            "client_secret": {"file": "github-secret"},
            "username_prefix": "gh-",
            "tenant": "lab",
            "allowed_organizations": ["atlas-lab"],
            "endpoints": _endpoints(port, "/api/user"),
        },
        "google": {
            "provider": "google",
            "client_id": "google-client",
            "client_secret": {"env": "ATLASLAB_TEST_GOOGLE_SECRET"},
            "hosted_domain": ["um6p.ma"],
            "tenant": "school",
            "endpoints": _endpoints(port, "/me"),
        },
        "azuread": {
            "provider": "azuread",
            "client_id": "azure-client",
            "client_secret": {"file": "azuread-secret"},
            "azure_tenant_id": "dir-1",
            "allowed_groups": ["g-researchers"],
            "admin_groups": ["g-admins"],
            "group_to_tenant": {"g-researchers": "lab"},
            "endpoints": _endpoints(port, "/me"),
        },
        "intra42": {
            "provider": "intra42",
            "title": "1337 (42 intranet)",
            "client_id": "intra42-client",
            "client_secret": {"file": "intra42-secret"},
            "campus_to_tenant": {"benguerir": "bg", "khouribga": "kh"},
            "tenant": "school",  # a default: not given to those the campus already places
            "endpoints": _endpoints(port, "/api/v2/me"),
        },
    }


SECRETS = {
    "oidc": "s3cret-oidc",
    "github": "s3cret-gh",
    "google": "s3cret-google",
    "azuread": "s3cret-az",
    "intra42": "s3cret-42",
}

# preset -> (account, expected username, expected tenant groups, expected admin)
ALLOWED = {
    "oidc": [("kc-alice", "kc:alice", {"tenant:school"}, False), ("kc-boss", "kc:boss", {"tenant:lab"}, True)],
    "github": [("gh-octo", "gh-octocat", {"tenant:lab"}, False)],
    "google": [("g-amina", "amina", {"tenant:school"}, False)],
    "azuread": [("az-sara", "sara@contoso.ma", {"tenant:lab"}, True)],
    "intra42": [("42-yassine", "yabouh", {"tenant:bg"}, False)],
}
# preset -> [(account, words the 403 page must say)]
REFUSED = {
    "oidc": [("kc-eve", "not in a group allowed")],
    "github": [("gh-mallory", "not a member of an organisation allowed")],
    "google": [("g-joe", "Only Google accounts of um6p.ma")],
    "azuread": [("az-omar", "not in a group allowed"), ("az-intruder", "another organisation")],
    "intra42": [("42-lea", "not open to students of 42 Paris")],
}
# preset -> id of its button on the hub that offers them all
IDS = {"oidc": "keycloak", "github": "github", "google": "google", "azuread": "azuread", "intra42": "intra42"}
NO_SERVICES = {"idle_culler": False, "metrics": False}  # fewer processes per hub; not needed to log in


@pytest.fixture(scope="module")
def lab(tmp_path_factory, monkeypatch_module):
    """The provider, and the site configs of the module's two hubs.

    "all": local accounts and every preset at once, each under /hub/ID/ (plus one whose provider is
    down); "single": one OpenID Connect provider alone, at /hub/oauth_login and /hub/oauth_callback.
    """
    root = tmp_path_factory.mktemp("login")
    port = free_port()
    presets = _presets(port)
    monkeypatch_module.setenv("ATLASLAB_TEST_GOOGLE_SECRET", SECRETS["google"])
    logins = {
        "all": [
            {"provider": "native", "tenant": "school"},
            *({**presets[p], "id": IDS[p]} for p in ALLOWED),
            {**presets["oidc"], "id": "broken", "title": "Old SSO", "issuer": f"http://127.0.0.1:{free_port()}"},
        ],
        "single": [presets["oidc"]],
    }
    sites: dict[str, Path] = {}
    for name, login in logins.items():
        directory = root / name
        directory.mkdir()
        for preset, secret in SECRETS.items():
            path = directory / f"{preset}-secret"
            path.write_text(secret + "\n")
            path.chmod(0o600)
        tenants = {**TENANTS, "school": {"title": "School", "members": ["ali"]}}
        sites[name] = write_site(directory, {"login": login, "tenants": tenants, "services": NO_SERVICES})
    callbacks = [
        f"{Workbench(path).url}/hub/{mount}oauth_callback"
        for path in sites.values()
        for mount in ("", *(f"{i}/" for i in IDS.values()))
    ]
    clients = [
        {"client_id": presets[p]["client_id"], "client_secret": SECRETS[p], "redirect_uris": callbacks} for p in SECRETS
    ]
    provider = TestProvider(port, clients, ACCOUNTS, root).start()
    yield sites, provider
    provider.stop()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def hub(lab):
    """The hub offering every login at once."""
    sites, _ = lab
    wb = Workbench(sites["all"]).start()
    yield wb
    wb.stop()


@pytest.fixture(scope="module")
def single(lab):
    """A hub whose only login is one OpenID Connect provider."""
    sites, _ = lab
    wb = Workbench(sites["single"]).start()
    yield wb
    wb.stop()


def oauth_login(wb: Workbench, account: str, path: str) -> tuple[Browser, httpx.Response]:
    """Click a login button as ``account`` (the provider logs in whom the cookie names)."""
    browser = Browser(wb)
    browser.http.cookies.set("oidc_test_account", account)
    return browser, browser.http.get(f"{path}?next=/hub/home")


def hub_user(wb: Workbench, name: str) -> dict:
    with wb.admin_api() as api:
        r = api.get(f"/users/{quote(name)}")
        r.raise_for_status()
        return r.json()


def assert_logged_in(wb: Workbench, account: str, path: str, name: str, tenants: set[str], admin: bool) -> None:
    browser, page = oauth_login(wb, account, path)
    try:
        assert page.status_code == 200, f"{account}: {page.status_code} {page.url}\n{page.text[:2000]}\n{wb.log()}"
        assert page.url.path == "/hub/home"
        assert browser.logged_in_as() == name
        user = hub_user(wb, name)
        assert {g for g in user["groups"] if g.startswith("tenant:")} == tenants
        assert user["admin"] is admin
    finally:
        browser.close()


def assert_refused(wb: Workbench, account: str, path: str, words: str) -> None:
    browser, page = oauth_login(wb, account, path)
    try:
        assert page.status_code == 403, f"{account}: {page.status_code}\n{page.text[:2000]}"
        assert "Sign-in refused" in page.text and words in page.text
        assert "Traceback" not in page.text
        assert browser.logged_in_as() is None
    finally:
        browser.close()


@pytest.mark.parametrize("preset", list(ALLOWED))
def test_preset_logs_in_with_prefix_tenant_and_admin(hub, preset):
    for account, name, tenants, admin in ALLOWED[preset]:
        assert_logged_in(hub, account, f"/hub/{IDS[preset]}/oauth_login", name, tenants, admin)


@pytest.mark.parametrize("preset", list(REFUSED))
def test_preset_refuses_with_a_clear_403_page(hub, preset):
    for account, words in REFUSED[preset]:
        assert_refused(hub, account, f"/hub/{IDS[preset]}/oauth_login", words)


def test_login_page_offers_every_provider_and_the_password_form(hub):
    page = Browser(hub).http.get("/hub/login?next=/hub/home")
    assert page.status_code == 200
    buttons = re.findall(r'href="/hub/([\w-]+)/oauth_login\?next=%2Fhub%2Fhome">Sign in with ([^<]+)</a>', page.text)
    assert buttons == [
        ("keycloak", "Keycloak"),
        ("github", "GitHub"),
        ("google", "Google"),
        ("azuread", "Microsoft"),
        ("intra42", "1337 (42 intranet)"),
        ("broken", "Old SSO"),
    ]
    assert 'name="password"' in page.text and "/hub/signup" in page.text  # local accounts' form


def test_local_accounts_work_next_to_the_buttons(hub):
    admin = Browser(hub)
    admin.login("admin", hub.secret("initial-admin-password"))
    assert admin.logged_in_as() == "admin"
    ali = Browser(hub)  # named in the site config: approved at sign-up
    assert ali.signup("ali", "correct-horse-battery-9").status_code == 200
    ali.login("ali", "correct-horse-battery-9")
    assert ali.logged_in_as() == "ali"
    assert "tenant:school" in hub_user(hub, "ali")["groups"]
    wrong = Browser(hub)
    assert "Invalid username or password" in wrong.login("ali", "not-the-password").text
    assert wrong.logged_in_as() is None


def test_unreachable_provider_gives_a_clear_503(hub):
    _, page = oauth_login(hub, "kc-alice", "/hub/broken/oauth_login")
    assert page.status_code == 503
    assert "cannot be reached" in page.text and "Traceback" not in page.text


def test_one_provider_alone_uses_the_plain_oauth_urls(single):
    page = Browser(single).http.get("/hub/login")
    assert page.status_code == 200
    assert re.search(r"href='/hub/oauth_login[^']*'>Sign in with Keycloak", page.text)
    assert_logged_in(single, "kc-boss", "/hub/oauth_login", "kc:boss", {"tenant:lab"}, True)
    assert_logged_in(single, "kc-alice", "/hub/oauth_login", "kc:alice", {"tenant:school"}, False)
    assert_refused(single, "kc-eve", "/hub/oauth_login", "not in a group allowed")
