"""Run tests/oidc/provider.mjs (a real OpenID Connect provider, npm's oidc-provider) for login tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


@dataclass
class TestProvider:
    """The provider process: ``issuer`` is its URL; ``url(path)`` builds URLs of its endpoints."""

    port: int
    clients: list[dict[str, Any]]
    accounts: dict[str, dict[str, Any]]
    workdir: Path
    proc: subprocess.Popen | None = None
    discovery: dict[str, Any] = field(default_factory=dict)

    __test__ = False  # not a pytest test class

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.issuer + path

    def start(self, timeout: float = 20) -> TestProvider:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not installed; the login tests need Node 20+ and `npm install`")
        config = self.workdir / "provider.json"
        config.write_text(json.dumps({"clients": self.clients, "accounts": self.accounts}))
        log = open(self.workdir / "provider.log", "ab")  # noqa: SIM115 (kept open for the child's lifetime)
        self.proc = subprocess.Popen(
            [node, str(HERE / "provider.mjs"), str(self.port), str(config)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the test provider exited ({self.proc.returncode}):\n{self.log()}")
            try:
                r = httpx.get(self.url("/.well-known/openid-configuration"), timeout=2)
                if r.status_code == 200:
                    self.discovery = r.json()
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"the test provider did not serve discovery within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        path = self.workdir / "provider.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
