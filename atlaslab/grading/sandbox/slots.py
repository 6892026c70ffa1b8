"""Worker slots: each one's pair of system accounts, its cgroup and its lock, claimed and cleaned up.

A slot runs one notebook at a time, so its accounts' RLIMIT_NPROC and its cgroup bound exactly one notebook,
and killing everything of its accounts and cgroup after a notebook touches nobody else. The trusted side
claims slots while still root (``ensure_slots``); the zygote, which stays root, cleans them (``clean_slot``).
``can_access`` lets the trusted side check, as a slot's account, that the course stays out of reach.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import time
from pathlib import Path

from atlaslab.core import cgroups

from .jobs import SandboxError, SandboxLimits, Slot

SANDBOX_PREFIX = "atlaslab-sandbox-"
EXECUTOR_PREFIX = "atlaslab-executor-"
CGROUP_PREFIX = "grade-slot-"
LOCK_DIR = Path("/run/atlaslab-grade")
UNISOLATED_PREFIX = "atlaslab-nb-"


def slot_cgroup(slot: int) -> str:
    return f"{CGROUP_PREFIX}{slot}"


def prepare_slot_cgroup(slot: int, limits: SandboxLimits) -> list[Path]:
    """Create or update slot ``slot``'s cgroup (memory without swap, CPU quota, pids); [] without cgroups."""
    # The executor's threads and the kernel's own threads count against the pids limit too.
    wanted = cgroups.ResourceLimits(memory=limits.memory, cpu=limits.cpu, processes=limits.processes + 32)
    return cgroups.prepare(slot_cgroup(slot), wanted)


def _ensure_account(name: str, comment: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    cmd = ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin"]
    cmd += ["--user-group", "--comment", comment, name]
    for attempt in range(20):
        r = subprocess.run(cmd, capture_output=True, text=True)
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
        if r.returncode != 10:  # 10: /etc/passwd is locked by another useradd: wait and retry
            raise SandboxError(f"cannot create account {name}: {r.stderr.strip() or r.returncode}")
        time.sleep(0.05 * (attempt + 1))
    raise SandboxError(f"cannot create account {name}: /etc/passwd stayed locked")


def ensure_slots(count: int, limits: SandboxLimits) -> tuple[list[Slot], list[int]]:
    """Claim ``count`` free slots, with their accounts and cgroups (root only); returns them and the lock fds.

    Slots are claimed with a lock file each, held as long as the returned fds stay open: two grading runs
    on one machine then never share an account or a cgroup (each one's clean-up would kill the other's).
    """
    import fcntl

    if os.geteuid() != 0:
        raise SandboxError("the autograder's sandbox needs root (system accounts, namespaces, cgroups)")
    LOCK_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    slots, locks = [], []
    i = 0
    while len(slots) < count:
        fd = os.open(LOCK_DIR / f"slot-{i}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            i += 1
            continue
        kern = _ensure_account(f"{SANDBOX_PREFIX}{i}", "AtlasLab autograder kernel")
        exe = _ensure_account(f"{EXECUTOR_PREFIX}{i}", "AtlasLab autograder executor")
        dirs = prepare_slot_cgroup(i, limits)
        slots.append(Slot(i, kern.pw_uid, kern.pw_gid, exe.pw_uid, exe.pw_gid, tuple(str(d) for d in dirs)))
        locks.append(fd)
        i += 1
    return slots, locks


def can_access(uid: int, gid: int, path: str | os.PathLike[str]) -> bool:
    """Whether account ``uid`` could read (or list) ``path``: probed as that account, in a child process."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        ok = b"0"
        try:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            if os.path.isdir(path):
                os.listdir(path)
            else:
                os.close(os.open(path, os.O_RDONLY))
            ok = b"1"
        except BaseException:
            pass
        finally:
            os.write(w, ok)
            os._exit(0)
    os.close(w)
    try:
        return os.read(r, 1) == b"1"
    finally:
        os.close(r)
        os.waitpid(pid, 0)


def _kill_account(uid: int | None) -> None:
    """SIGKILL every process of ``uid``: a child takes the UID and calls kill(-1), atomic against forks."""
    if uid is None:
        return
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setresuid(uid, uid, uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def clean_slot(slot: dict) -> None:
    if slot.get("uid") is None:  # without isolation: the notebook's directory (its processes died with it)
        import glob
        import shutil
        import tempfile

        mine = f"{UNISOLATED_PREFIX}{os.getpid()}-{slot['index']}-*"  # this zygote's, this slot's
        for path in glob.glob(os.path.join(tempfile.gettempdir(), mine)):
            shutil.rmtree(path, ignore_errors=True)
    _kill_account(slot.get("uid"))
    _kill_account(slot.get("exec_uid"))
    # Up to ~2 s for the kernel to finish dying.
    cgroups.kill_members(tuple(slot.get("cgroups", ())), timeout=2.0)
