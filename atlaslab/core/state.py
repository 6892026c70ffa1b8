"""The state directory: hub database, generated secrets and run-time files.

Secrets are created on first use with mode 0600 in a 0700 directory, never logged, and reused after,
so a restart keeps cookies, tokens and encrypted auth state valid.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StateDir:
    root: Path

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.root / 'jupyterhub.sqlite'}"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def compute_dir(self) -> Path:
        """GPU assignments and the usage ledger (atlaslab.compute), private to the hub's account."""
        return self.root / "compute"

    @property
    def dev_homes(self) -> Path:
        """Per-user working directories when servers are not isolated (non-root development mode)."""
        return self.root / "homes"

    def ensure(self) -> StateDir:
        for d in (self.root, self.secrets_dir, self.run_dir, self.log_dir, self.compute_dir):
            d.mkdir(parents=True, exist_ok=True)
        # The root is traversable (not listable) so each course's grader account can reach its own course
        # directory; everything else in it is private to the hub's account.
        os.chmod(self.root, 0o711)
        for d in (self.secrets_dir, self.run_dir, self.log_dir, self.compute_dir):
            os.chmod(d, 0o700)
        db = self.root / "jupyterhub.sqlite"
        if db.exists():
            os.chmod(db, 0o600)
        return self

    def secret(self, name: str, nbytes: int = 32) -> str:
        """Read the named secret, creating it (hex, ``nbytes`` of randomness) on first use."""
        path = self.secrets_dir / name
        try:
            value = path.read_text().strip()
            if value:
                return value
        except FileNotFoundError:
            pass
        self.secrets_dir.mkdir(parents=True, exist_ok=True)
        value = secrets.token_hex(nbytes)
        write_private(path, value + "\n")
        return value

    def secret_path(self, name: str) -> Path:
        return self.secrets_dir / name


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically with mode 0600 (the file is never world-readable, even briefly)."""
    _write_atomic(path, text, 0o600)


def write_public(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically with mode 0644: config every account reads, never a secret."""
    _write_atomic(path, text, 0o644)


def _write_atomic(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
