"""Resource limits for a group of processes (a user's server and its kernels, an autograder slot): cgroups when
writable, rlimits always. The one place AtlasLab writes cgroups.

A server's kernels are its children, so limits set on the server's cgroup or account (RLIMIT_NPROC, per UID)
cover the kernels too. cgroup v2 is used when its controllers are available, otherwise the v1 hierarchies;
without either (an unprivileged hub) only the rlimits apply.

Memory limits include no swap, on both versions (``memory.swap.max`` 0 on v2, ``memory.memsw`` equal to the
limit on v1): a limit is what a server or a graded notebook can really hold, and a kernel over it is killed at
once instead of thrashing the disk and slowing every other user of the machine.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PARENT = "atlaslab"
CONTROLLERS = ("memory", "cpu", "pids")
PERIOD_US = 100_000
MIN_QUOTA_US = 1000  # the kernel refuses a smaller CPU quota


@dataclass(frozen=True)
class ResourceLimits:
    memory: int  # bytes
    cpu: float  # cores
    processes: int


def _v2_ready(root: Path) -> bool:
    controllers = root / "cgroup.controllers"
    if not controllers.is_file():
        return False
    return set(CONTROLLERS) <= set(controllers.read_text().split()) and os.access(root, os.W_OK)


def _v1_ready(root: Path) -> bool:
    return all((root / c).is_dir() and os.access(root / c, os.W_OK) for c in CONTROLLERS)


def cgroup_mode(root: Path = CGROUP_ROOT) -> str:
    """'v2', 'v1' or 'none': which kind of cgroup this process can use for limits."""
    if os.geteuid() != 0:
        return "none"
    if _v2_ready(root):
        return "v2"
    if _v1_ready(root):
        return "v1"
    return "none"


def group_dirs(name: str, root: Path = CGROUP_ROOT, mode: str | None = None) -> list[Path]:
    """The directories of group ``name`` (one on v2, one per controller on v1, none without cgroups)."""
    mode = mode or cgroup_mode(root)
    if mode == "v2":
        return [root / PARENT / name]
    if mode == "v1":
        return [root / c / PARENT / name for c in CONTROLLERS]
    return []


def prepare(name: str, limits: ResourceLimits, root: Path = CGROUP_ROOT) -> list[Path]:
    """Create (or update) group ``name`` with ``limits``; return the directories a process joins ([] without)."""
    mode = cgroup_mode(root)
    dirs = group_dirs(name, root, mode)
    quota = str(max(MIN_QUOTA_US, int(limits.cpu * PERIOD_US)))
    if mode == "v2":
        parent = root / PARENT
        parent.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):
            (parent / "cgroup.subtree_control").write_text("+memory +cpu +pids")
        group = dirs[0]
        group.mkdir(exist_ok=True)
        (group / "memory.max").write_text(str(limits.memory))
        with contextlib.suppress(OSError):  # absent without swap accounting: there is no swap to limit then
            (group / "memory.swap.max").write_text("0")
        (group / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        (group / "pids.max").write_text(str(limits.processes))
    elif mode == "v1":
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
        memory, cpu, pids = dirs
        _set_v1_memory(memory, limits.memory)
        (cpu / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (cpu / "cpu.cfs_quota_us").write_text(quota)
        (pids / "pids.max").write_text(str(limits.processes))
    return dirs


def _set_v1_memory(group: Path, limit: int) -> None:
    # memsw (memory + swap) must stay >= the memory limit at every step: lift it, set the limit, bring it down.
    # Without swap accounting the memsw file is absent and the memory limit alone applies.
    with contextlib.suppress(OSError):
        (group / "memory.memsw.limit_in_bytes").write_text("-1")
    try:
        (group / "memory.limit_in_bytes").write_text(str(limit))
    except OSError:
        # Lowering below what the group holds now: reclaim first, then try again.
        with contextlib.suppress(OSError):
            (group / "memory.force_empty").write_text("0")
        (group / "memory.limit_in_bytes").write_text(str(limit))
    with contextlib.suppress(OSError):
        (group / "memory.memsw.limit_in_bytes").write_text(str(limit))


def join(dirs: list[Path] | tuple[str, ...]) -> None:
    """Move the calling process into ``dirs``; meant for a preexec function in the child."""
    pid = str(os.getpid())
    for d in dirs:
        Path(d, "cgroup.procs").write_text(pid)


def members(dirs: list[Path] | tuple[str, ...]) -> list[int]:
    """Processes still in the group (kernels that outlived their server, stray children)."""
    pids: set[int] = set()
    for d in dirs:
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in Path(d, "cgroup.procs").read_text().split())
    return sorted(pids)


def _living(pids: list[int]) -> list[int]:
    """Those of ``pids`` not already dead (a zombie stays listed until its parent reaps it)."""
    live = []
    for pid in pids:
        with contextlib.suppress(OSError, IndexError):
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state not in ("Z", "X"):
                live.append(pid)
    return live


def kill_members(dirs: list[Path] | tuple[str, ...], timeout: float = 5.0) -> bool:
    """SIGKILL everything living in the group until none is left (forks race each round); False on timeout."""
    deadline = time.monotonic() + timeout
    while live := _living(members(dirs)):
        if time.monotonic() > deadline:
            return False
        for pid in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        time.sleep(0.005)
    return True


def remove(name: str, root: Path = CGROUP_ROOT) -> None:
    """Remove group ``name``'s directories once their processes are gone (best effort)."""
    for group in [root / PARENT / name] + [root / c / PARENT / name for c in CONTROLLERS]:
        if group.is_dir():
            with contextlib.suppress(OSError):
                group.rmdir()


def oom_kills(dirs: list[Path] | tuple[str, ...]) -> int:
    """How many processes the kernel's OOM killer has killed in this group so far."""
    for d in dirs:
        for name in ("memory.events", "memory.oom_control"):
            with contextlib.suppress(OSError):
                for line in Path(d, name).read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
    return 0


def apply_rlimits(limits: ResourceLimits, *, per_account: bool) -> None:
    """Set rlimits in the child before it execs the server; ``per_account`` when it has its own UID."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if per_account:
        # RLIMIT_NPROC counts every process of the UID: a fork bomb stops at the limit.
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
