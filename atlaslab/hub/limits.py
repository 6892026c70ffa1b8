"""Resource limits for a user's server and everything it starts: cgroups when writable, rlimits always.

A server's kernels are its children, so limits set on the server's process group (cgroup) or account
(RLIMIT_NPROC, per UID) cover the kernels too. cgroup v2 is used when its controllers are available,
otherwise the v1 hierarchies; without either (an unprivileged hub) only the rlimits apply.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
CGROUP_ROOT = Path("/sys/fs/cgroup")
PARENT = "atlaslab"


@dataclass(frozen=True)
class ResourceLimits:
    memory: int  # bytes
    cpu: float  # cores
    processes: int


def _v2_ready(root: Path) -> bool:
    controllers = root / "cgroup.controllers"
    if not controllers.is_file():
        return False
    have = set(controllers.read_text().split())
    return {"memory", "cpu", "pids"} <= have and os.access(root, os.W_OK)


def _v1_ready(root: Path) -> bool:
    return all((root / c).is_dir() and os.access(root / c, os.W_OK) for c in ("memory", "cpu", "pids"))


def cgroup_mode(root: Path = CGROUP_ROOT) -> str:
    """'v2', 'v1' or 'none': which kind of cgroup this process can use for limits."""
    if os.geteuid() != 0:
        return "none"
    if _v2_ready(root):
        return "v2"
    if _v1_ready(root):
        return "v1"
    return "none"


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def prepare_cgroup(name: str, limits: ResourceLimits, root: Path = CGROUP_ROOT) -> list[Path]:
    """Create (or update) the cgroup(s) for server ``name`` and return the directories to join."""
    mode = cgroup_mode(root)
    if mode == "v2":
        parent = root / PARENT
        parent.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):
            _write(parent / "cgroup.subtree_control", "+memory +cpu +pids")
        group = parent / name
        group.mkdir(exist_ok=True)
        _write(group / "memory.max", str(limits.memory))
        _write(group / "cpu.max", f"{int(limits.cpu * 100000)} 100000")
        _write(group / "pids.max", str(limits.processes))
        return [group]
    if mode == "v1":
        dirs = []
        for controller in ("memory", "cpu", "pids"):
            group = root / controller / PARENT / name
            group.mkdir(parents=True, exist_ok=True)
            dirs.append(group)
        _write(root / "memory" / PARENT / name / "memory.limit_in_bytes", str(limits.memory))
        with contextlib.suppress(OSError):
            # Without swap accounting this file is absent; memory.limit_in_bytes alone then applies.
            _write(root / "memory" / PARENT / name / "memory.memsw.limit_in_bytes", str(limits.memory))
        _write(root / "cpu" / PARENT / name / "cpu.cfs_period_us", "100000")
        _write(root / "cpu" / PARENT / name / "cpu.cfs_quota_us", str(int(limits.cpu * 100000)))
        _write(root / "pids" / PARENT / name / "pids.max", str(limits.processes))
        return dirs
    return []


def join_cgroups(dirs: list[Path]) -> None:
    """Move the calling process into ``dirs``; meant for a preexec function in the child."""
    pid = str(os.getpid())
    for d in dirs:
        _write(d / "cgroup.procs", pid)


def remove_cgroup(name: str, root: Path = CGROUP_ROOT) -> None:
    """Remove server ``name``'s cgroups once their processes are gone (best effort)."""
    candidates = [root / PARENT / name] + [root / c / PARENT / name for c in ("memory", "cpu", "pids")]
    for group in candidates:
        if group.is_dir():
            with contextlib.suppress(OSError):
                group.rmdir()


def cgroup_pids(dirs: list[Path]) -> list[int]:
    """Processes still in the server's cgroup (kernels that outlived their server, stray children)."""
    pids: set[int] = set()
    for d in dirs:
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in (d / "cgroup.procs").read_text().split())
    return sorted(pids)


def apply_rlimits(limits: ResourceLimits, *, per_account: bool) -> None:
    """Set rlimits in the child before it execs the server; ``per_account`` when it has its own UID."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if per_account:
        # RLIMIT_NPROC counts every process of the UID: a fork bomb stops at the limit.
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
