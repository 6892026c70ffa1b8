"""System accounts for hub users (``jupyter-NAME``), created on first spawn when the hub runs as root."""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import subprocess
import sys
from pathlib import Path

PREFIX = "jupyter-"
MAX_LEN = 32  # useradd's limit on Debian


def system_username(hub_name: str) -> str:
    """A valid, collision-free Linux account name for a hub username.

    Names already valid stay readable (``jupyter-amina``); anything changed by the clean-up, or too long,
    gets a short hash of the original so ``a.b`` and ``a-b`` never share an account.
    """
    cleaned = re.sub(r"[^a-z0-9_-]", "-", hub_name.lower())
    name = PREFIX + cleaned
    # A name that already looks hashed is hashed again, so nobody can sign up as another user's account name.
    if cleaned != hub_name or len(name) > MAX_LEN or re.search(r"-[0-9a-f]{6}$", cleaned):
        digest = hashlib.sha256(hub_name.encode()).hexdigest()[:6]
        name = f"{name[: MAX_LEN - 7]}-{digest}"
    return name


def ensure_account(hub_name: str, home_root: Path) -> pwd.struct_passwd:
    """Create the account and its private home if missing; return its passwd entry."""
    name = system_username(hub_name)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        home = home_root / name
        subprocess.run(
            [
                "useradd",
                "--create-home",
                "--home-dir",
                str(home),
                "--shell",
                "/bin/bash",
                "--user-group",
                "--comment",
                f"AtlasLab user {hub_name}",
                name,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        entry = pwd.getpwnam(name)
    # Homes are private: no other student (or their kernels) may list or read them.
    os.chmod(entry.pw_dir, 0o700)
    return entry


def ensure_service_account(name: str, comment: str) -> pwd.struct_passwd | None:
    """A system account with no home and no login shell (graders, the exchange), created if missing.

    None when the hub is not root: in development mode everything runs as the hub's own account.
    """
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--user-group",
                "--comment",
                comment,
                name,
            ],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(name)


def isolation_mode(wanted: str) -> str:
    """The site's ``spawner.isolation`` made concrete: 'auto' is an account per user when running as root."""
    if wanted == "auto":
        return "system-users" if os.geteuid() == 0 else "none"
    return wanted


def server_path() -> str:
    """PATH for processes run as other accounts: this venv's bin first, nothing under /root (unreadable there,
    and a pyenv shim found first fails with 'Permission denied' instead of falling through)."""
    kept = [Path(sys.executable).parent.as_posix()]
    for entry in [*os.environ.get("PATH", "").split(":"), "/usr/local/bin", "/usr/bin", "/bin"]:
        if entry and entry not in kept and not (entry == "/root" or entry.startswith("/root/")):
            kept.append(entry)
    return ":".join(kept)
