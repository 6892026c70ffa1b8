"""One password for a whole workshop (JupyterHub's SharedPasswordAuthenticator) with a username prefix."""

from __future__ import annotations

from jupyterhub.authenticators.shared import SharedPasswordAuthenticator
from traitlets import Unicode


class AtlasLabSharedPasswordAuthenticator(SharedPasswordAuthenticator):
    username_prefix = Unicode("", help="Prefix added to the username typed in the form.").tag(config=True)

    async def authenticate(self, handler, data):
        name = (data or {}).get("username", "")
        if self.username_prefix and name and not name.startswith(self.username_prefix):
            data = {**data, "username": self.username_prefix + name}
        return await super().authenticate(handler, data)
