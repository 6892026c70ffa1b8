"""Several logins on one hub: a button per OAuth provider, each mounted under /hub/ID/, and a password form.

Each login is a complete authenticator of its own (OAuthenticator's classes, nativeauthenticator, the
shared password), created as a child of this one. Its pages are registered with the child as *their*
authenticator, so a login through /hub/ID/oauth_callback runs that provider's whole pipeline: its
allow rules, admin rules and post-auth hook. The password login (one at most) keeps the usual pages
(/hub/login, and /hub/signup, /hub/authorize, ... for local accounts).

jupyterhub-multiauthenticator 0.4 does the same job but creates its children without the database
session that nativeauthenticator needs under JupyterHub 5+, forces a "service:" prefix on every name
and cannot show the password form next to the buttons; hence this small one.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from jupyterhub.auth import Authenticator
from jupyterhub.handlers.login import LoginHandler
from jupyterhub.utils import url_path_join
from oauthenticator.oauth2 import OAuthenticator
from tornado.escape import url_escape
from tornado.httputil import url_concat
from traitlets import Dict, List, import_item

TEMPLATE = Path(__file__).with_name("templates") / "atlaslab-login.html"
_compiled: dict[int, object] = {}


def _login_template(env):
    """Our login page, compiled once per jinja environment (it extends JupyterHub's login.html)."""
    if id(env) not in _compiled:
        _compiled[id(env)] = env.from_string(TEMPLATE.read_text(encoding="utf-8"))
    return _compiled[id(env)]


def _bound(handler: type, authenticator: Authenticator, key: str, **attrs) -> type:
    """A subclass of ``handler`` whose requests use ``authenticator`` instead of the hub's."""
    return type(f"{handler.__name__}_{key.replace('-', '_')}", (handler,), {"authenticator": authenticator, **attrs})


class LoginPage:
    """Mixed in before a login page handler: renders the buttons, and the password form if there is one."""

    login_buttons: ClassVar[list[dict]] = []
    password_form = False
    password_title = ""

    def _render(self, login_error=None, username=None, **kwargs):
        next_url = self.get_argument("next", default="")
        base = self.hub.base_url
        buttons = [
            {**b, "url": url_concat(url_path_join(base, b["path"]), {"next": next_url} if next_url else None)}
            for b in self.login_buttons
        ]
        namespace = {
            **self.template_namespace,
            "xsrf_token": self.xsrf_token.decode("ascii"),
            **kwargs,
            "next": url_escape(next_url),
            "username": username,
            "login_error": login_error,
            "login_url": self.settings["login_url"],
            "authenticator_login_url": url_concat(self.authenticator.login_url(base), {"next": next_url}),
            "authenticator": self.authenticator,
            "xsrf": self.xsrf_token.decode("ascii"),
            "custom_html": "",
            "login_service": "",
            "login_buttons": buttons,
            "password_form": self.password_form,
            "password_title": self.password_title,
            "enable_signup": getattr(self.authenticator, "enable_signup", False),
        }
        return _login_template(self.settings["jinja2_env"]).render_async(**namespace)


class MultiLoginAuthenticator(Authenticator):
    """Offer several logins at once; configured by AtlasLab from the site config's `login:` list."""

    logins = List(
        Dict(),
        help="""One entry per login, in the order of the buttons:
        {"id": "keycloak", "title": "Keycloak", "class": "atlaslab.hub.auth.oauth.OIDCAuthenticator",
         "config": {trait: value, ...}}. OAuth logins live under /hub/ID/; at most one other (password) login.""",
    ).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.authenticators: dict[str, Authenticator] = {}
        self.titles: dict[str, str] = {}
        for entry in self.logins:
            cls = import_item(entry["class"]) if isinstance(entry["class"], str) else entry["class"]
            child = cls(parent=self, _deprecated_db_session=self._deprecated_db_session, **entry.get("config", {}))
            # JupyterHub normalizes these names on its own authenticator only.
            child.admin_users = {child.normalize_username(n) for n in child.admin_users}
            child.allowed_users = {child.normalize_username(n) for n in child.allowed_users}
            self.authenticators[entry["id"]] = child
            self.titles[entry["id"]] = entry.get("title") or entry["id"]
        passwords = [k for k, a in self.authenticators.items() if not isinstance(a, OAuthenticator)]
        if len(passwords) > 1:
            raise ValueError(f"at most one password login can be offered, not {', '.join(passwords)}")
        self.password_login = passwords[0] if passwords else None

    def get_handlers(self, app):
        routes: list[tuple] = []
        buttons = []
        page = LoginHandler
        for key, child in self.authenticators.items():
            if isinstance(child, OAuthenticator):
                buttons.append({"id": key, "title": self.titles[key], "path": f"{key}/oauth_login"})
                routes.append((f"/{key}/oauth_login", _bound(child.login_handler, child, key)))
                routes.append((f"/{key}/oauth_callback", _bound(child.callback_handler, child, key)))
                continue
            for path, handler, *rest in child.get_handlers(app):
                if path == "/login":
                    page = handler
                else:
                    routes.append((path, _bound(handler, child, key), *rest))
        password = self.authenticators.get(self.password_login) if self.password_login else None
        login_page = type(
            "AtlasLabLoginPage",
            (LoginPage, page),
            {
                "authenticator": password or self,
                "login_buttons": buttons,
                "password_form": password is not None,
                "password_title": (self.titles[self.password_login] if password else "").lower(),
            },
        )
        return [("/login", login_page), *routes]

    async def authenticate(self, handler, data):
        return None  # every login goes through one of the children's pages

    def check_allow_config(self):
        for child in self.authenticators.values():
            child.check_allow_config()

    def delete_user(self, user):
        for child in self.authenticators.values():
            child.delete_user(user)
        super().delete_user(user)
