"""What a notebook can see of the machine: the supervisor's new mount and network namespaces.

Everything the notebook must not read (homes, the course, the state directory, service sockets) is covered
by an empty read-only tmpfs, everything else is remounted read-only, and /tmp, /var/tmp and /dev/shm are
private tmpfs of the job's disk size; the network namespace has only its own loopback. Kept apart from the
supervisor because it decides what is hidden, which is the part of the sandbox most worth reading on its own.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .jobs import SandboxLimits
from .linux import (
    CLONE_NEWNET,
    CLONE_NEWNS,
    MOUNT_FLAGS,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    loopback_up,
    mount,
    unshare,
)

WORK = "/tmp/work"
HOME = "/tmp/home"
DEFAULT_HIDDEN = ("/home", "/root", "/run", "/srv/nbgrader")


def _mountpoints() -> list[tuple[str, str]]:
    """(mount point, per-mount options) of this mount namespace, from /proc/self/mountinfo."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        path = fields[4].encode().decode("unicode_escape")
        points.append((path, fields[5]))
    return points


def _critical_paths() -> list[str]:
    """Directories the kernel needs to see (Python itself): never hidden."""
    found = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    found.add(os.path.realpath(os.path.dirname(sys.executable)))
    return sorted(found)


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _hideable(path: str) -> bool:
    if not os.path.isabs(path) or not os.path.isdir(path) or os.path.islink(path):
        return False
    real = os.path.realpath(path)
    if real in ("/", "/tmp", "/proc", "/sys", "/dev", "/usr", "/etc", "/lib", "/bin") or _under(real, "/tmp"):
        return False
    return not any(_under(c, real) for c in _critical_paths())


def enter_namespaces(lim: SandboxLimits, hidden: list[str]) -> None:
    """New mount and network namespaces: private /tmp, hidden private trees, everything else read-only."""
    unshare(CLONE_NEWNS | CLONE_NEWNET)
    loopback_up()
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    existing = _mountpoints()
    hide: list[str] = []
    for path in sorted({os.path.realpath(p) for p in (*DEFAULT_HIDDEN, *hidden) if _hideable(p)}):
        if not any(_under(path, top) for top in hide):  # inside a hidden tree already
            hide.append(path)
    for path in hide:
        mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0")
    for path, opts in sorted(existing, key=lambda p: len(p[0])):
        if any(_under(path, top) for top in ("/proc", "/sys", "/dev", "/tmp", "/var/tmp", *hide)):
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for opt in opts.split(","):
            flags |= MOUNT_FLAGS.get(opt, 0)
        try:
            mount(None, path, None, flags)
        except OSError:
            if path == "/":
                raise
    size = f"size={lim.disk},mode=1777"
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, size)
    for path in ("/var/tmp", "/dev/shm"):
        if os.path.isdir(path) and not os.path.islink(path):
            mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, size)
