"""Local accounts (jupyterhub-nativeauthenticator) with two AtlasLab rules.

- People the site config names (course rosters, teams, tenant members) are approved at sign-up; anyone
  else waits for an admin at /hub/authorize.
- Admin accounts cannot be claimed through the sign-up form. The first admin logs in with the password
  generated into STATE_DIR/secrets/initial-admin-password, which creates their account; they can then
  change it at /hub/change-password.
"""

from __future__ import annotations

import hmac
from pathlib import Path

import bcrypt
from nativeauthenticator import NativeAuthenticator
from nativeauthenticator import handlers as native_handlers
from nativeauthenticator.orm import UserInfo
from traitlets import Set, Unicode


class AtlasLabNativeAuthenticator(NativeAuthenticator):
    preapproved_users = Set(
        Unicode(), help="Usernames approved at sign-up without an admin (those the site config names)."
    ).tag(config=True)
    initial_admin_password_file = Unicode(
        "", help="File holding the password that creates an admin's account on their first login."
    ).tag(config=True)

    def get_authed_users(self) -> set[str]:
        # Upstream pre-approves admin names too, which would let the first person to sign up as 'admin'
        # become admin; admins come in through the initial password instead.
        authorized = {info.username for info in UserInfo.all_users(self.db) if info.is_authorized}
        return (authorized | set(self.preapproved_users) | set(self.allowed_users)) - set(self.admin_users)

    def create_user(self, username: str, password: str, **kwargs):
        if self.normalize_username(username) in self.admin_users:
            self.log.warning("Refusing sign-up for admin account %r", username)
            return None
        return super().create_user(username, password, **kwargs)

    def get_handlers(self, app):
        return _with_fixed_login(super().get_handlers(app))

    def _initial_password(self) -> str | None:
        if not self.initial_admin_password_file:
            return None
        try:
            return Path(self.initial_admin_password_file).read_text().strip() or None
        except OSError:
            return None

    async def authenticate(self, handler, data):
        name = self.normalize_username(data.get("username", ""))
        password = data.get("password", "")
        initial = self._initial_password()
        first_admin_login = name in self.admin_users and self.get_user(name) is None and initial
        if first_admin_login and hmac.compare_digest(password.encode(), initial.encode()):
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt())
            self.db.add(UserInfo(username=name, password=hashed, is_authorized=True))
            self.db.commit()
            self.log.info("Created the account of admin %s from the initial admin password", name)
        return await super().authenticate(handler, data)


class NativeLoginHandler(native_handlers.LoginHandler):
    """nativeauthenticator 1.3's login page, without its use of statsd (removed in JupyterHub 6)."""

    def _render(self, login_error=None, username=None, **kwargs):
        return super()._render(login_error=login_error, username=username)

    async def post(self):
        data = {arg: self.get_argument(arg, strip=False) for arg in self.request.arguments}
        user = await self.login_user(data)
        if user:
            self._jupyterhub_user = user
            self.redirect(self.get_next_url(user))
            return
        username = data.get("username", "")
        error = "Invalid username or password."
        info = self.authenticator.get_user(username) if username else None
        if info is not None and not info.is_authorized and info.is_valid_password(data.get("password", "")):
            error = f"User {username} has not been approved by an administrator yet."
        self.finish(await self._render(login_error=error, username=username))


def _with_fixed_login(handlers: list[tuple]) -> list[tuple]:
    return [(path, NativeLoginHandler if path == r"/login" else h) for path, h, *_ in handlers]
