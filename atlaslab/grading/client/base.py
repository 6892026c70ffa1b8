"""What every AtlasLab exchange class shares: where the exchange service is, the caller's hub token, the HTTP calls
and how their errors reach the user, local paths, timestamps and the tar.gz payloads both ways.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from dateutil.tz import gettz
from nbgrader.exchange import abc
from nbgrader.utils import ignore_patterns
from traitlets import Bool, Float, Unicode, default

from atlaslab.grading.exchange import API_PATH
from atlaslab.grading.exchange.archive import ArchiveError, pack, unpack


def url_part(value: str) -> str:
    """``value`` as one segment of a path on the service (a slash in it is quoted too)."""
    return quote(value, safe="")


def naive_utc(value: str) -> datetime:
    """A timestamp from the service (ISO 8601, UTC) as nbgrader compares them: naive UTC."""
    return datetime.fromisoformat(value).astimezone(UTC).replace(tzinfo=None)


class Exchange(abc.Exchange):
    """Base of AtlasLab's exchange classes: where the service is, the token, HTTP and payload helpers."""

    url = Unicode(help="URL of AtlasLab's exchange service. Default: $ATLASLAB_EXCHANGE_URL.").tag(config=True)
    token = Unicode(help="JupyterHub API token identifying the caller. Default: $JUPYTERHUB_API_TOKEN.")
    timeout = Float(300.0, help="Seconds to wait for the exchange service.").tag(config=True)
    path_includes_course = Bool(
        False,
        help="Whether fetched and submitted assignments live in ./COURSE/ASSIGNMENT rather than ./ASSIGNMENT.",
    ).tag(config=True)

    @default("url")
    def _default_url(self) -> str:
        return os.environ.get("ATLASLAB_EXCHANGE_URL", "")

    @default("token")
    def _default_token(self) -> str:
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    def start(self) -> None:
        if sys.platform == "win32":
            self.fail("Sorry, the exchange is not available on Windows.")
        if not self.url:
            self.fail("AtlasLab's exchange is not configured here: ATLASLAB_EXCHANGE_URL is not set.")
        if not self.token:
            self.fail("No JupyterHub token: JUPYTERHUB_API_TOKEN is not set (run this in your AtlasLab server).")
        return super().start()

    # ---- HTTP ------------------------------------------------------------------------------------------------

    def api(
        self,
        method: str,
        path: str,
        *,
        params: dict | None = None,
        content: bytes | None = None,
        on: dict | None = None,
    ) -> httpx.Response:
        """Call the service; an error becomes ExchangeError with the service's message (or ``on[status]``)."""
        base = self.url.rstrip("/") + "/" + API_PATH
        headers = {"Authorization": f"token {self.token}"}
        if content is not None:
            headers["Content-Type"] = "application/gzip"
            self.check_upload_size(len(content))
        try:
            with httpx.Client(timeout=self.timeout) as http:
                r = http.request(method, base + path, params=params, content=content, headers=headers)
        except httpx.HTTPError as e:
            self.fail(f"Cannot reach the exchange at {self.url}: {e}")
        if r.status_code >= 400:
            try:
                message = r.json().get("error") or r.reason_phrase
            except ValueError:
                message = r.text[:200] or r.reason_phrase
            if on and r.status_code in on:
                self.fail(on[r.status_code])
            self.fail(f"The exchange refused ({r.status_code}): {message}")
        return r

    def check_upload_size(self, size: int) -> None:
        """Fail with a clear message before sending more than the service accepts (it would cut us off)."""
        if size <= 1024 * 1024:
            return
        try:
            limit = httpx.get(self.url, timeout=self.timeout).json()["max_upload"]
        except (httpx.HTTPError, ValueError, KeyError):
            return
        if size > limit:
            self.fail(f"Too large for the exchange: {size} bytes compressed, the limit is {limit} bytes.")

    def api_json(self, method: str, path: str, **kwargs: Any) -> dict:
        return self.api(method, path, **kwargs).json()

    def whoami(self) -> dict:
        if not hasattr(self, "_whoami"):
            self._whoami = self.api_json("GET", "whoami")
        return self._whoami

    def web_url(self, path: str) -> str:
        return self.url.rstrip("/") + "/" + API_PATH + path

    # ---- paths and payloads ----------------------------------------------------------------------------------

    def local_assignment_dir(self, course: str, assignment: str) -> str:
        if self.path_includes_course:
            return os.path.join(self.assignment_dir, course, assignment)
        return os.path.join(self.assignment_dir, assignment)

    def format_timestamp(self, value: str) -> str:
        """The service's timestamp as nbgrader writes timestamps (Exchange.timezone, Exchange.timestamp_format)."""
        tz = gettz(self.timezone)
        if tz is None:
            self.fail(f"Invalid timezone: {self.timezone}")
        return datetime.fromisoformat(value).astimezone(tz).strftime(self.timestamp_format)

    def pack_for_upload(self, src: str) -> bytes:
        """A tar.gz of ``src`` as nbgrader's default exchange would copy it (ignore, include, size limits)."""
        size = sum(
            os.path.getsize(os.path.join(d, f))
            for d, _, files in os.walk(src)
            for f in files
            if not os.path.islink(os.path.join(d, f))
        )
        if size > 1000 * self.coursedir.max_dir_size:
            limit = 1000 * self.coursedir.max_dir_size
            self.fail(f"Directory size is too big. Size is {size}, maximum size is {limit}")
        ignore = ignore_patterns(
            exclude=self.coursedir.ignore,
            include=self.coursedir.include,
            max_file_size=self.coursedir.max_file_size,
            log=self.log,
        )
        with tempfile.TemporaryDirectory(prefix="atlaslab-exchange-") as tmp:
            copy = os.path.join(tmp, "payload")
            shutil.copytree(src, copy, ignore=ignore)
            return pack(Path(copy))

    def unpack_beside(self, data: bytes, dest: str, kind: str = "files") -> str:
        """Unpack ``data`` (checked again here) into a new directory next to ``dest``; return its path."""
        parent = os.path.dirname(os.path.abspath(dest))
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".atlaslab-exchange-", dir=parent)
        try:
            unpack(io.BytesIO(data), Path(tmp) / "payload", kind=kind)
        except ArchiveError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            self.fail(f"The exchange sent an archive that is not acceptable: {e}")
        return tmp

    def download(self, path: str, sha256: str | None = None) -> bytes:
        data = self.api("GET", path).content
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            self.fail(f"Download of {path} is corrupt (SHA-256 differs from the exchange's record)")
        return data
