"""The autograder's sandbox: run one notebook under an unprivileged account, with no network and hard limits.

Process tree, per ``SandboxPool`` (one per ``atlaslab grade`` run):

* **Trusted side** (the caller, e.g. ``atlaslab.grading.autograde``): builds a ``NotebookJob`` from plain
  values (the sanitized notebook as JSON text, the submission's other files as bytes, limits) and calls
  ``SandboxPool.run(job)`` from any thread; it gets back a ``NotebookResult`` (outputs per code cell, a
  status and a reason). It never reads anything the sandbox wrote except that result, which it re-checks.
* **Zygote** (root, started once): a fresh Python that has imported ipykernel, IPython, nbclient and
  nbgrader's Execute preprocessor, and never sees a job. For every notebook it forks a **supervisor**, and it
  does the killing and clean-up (it is root, the trusted side may have dropped to the course's account).
  Forking it instead of starting ``python -m ipykernel_launcher`` is what removes the kernel start-up cost
  (imports), while every notebook still gets a new process and a new kernel: nothing is reused between
  students, and the zygote's memory holds no student's data for a fork to inherit.
* **Supervisor** (forked per notebook, root only while it sets up): joins the slot's cgroup (memory, CPU,
  pids), enters a new mount namespace and a new network namespace (only its own loopback, no interface to
  anything else), mounts a private tmpfs on /tmp, /var/tmp and /dev/shm, mounts empty read-only tmpfs over
  the course directory, the state directory, /home, /root and /run (homes, gradebook, other submissions,
  service sockets), remounts everything else read-only, writes the submission's files into /tmp/work
  (owned by the slot's sandbox account, 0700), then forks the kernel and drops itself to the slot's
  *executor* account. As the executor it runs nbgrader's own Execute preprocessor (nbclient) against the
  kernel and streams each executed cell back to the trusted side; it truncates huge outputs on the way.
* **Kernel** (forked by the supervisor): new session, oom_score_adj 1000, rlimits (CPU time, file size,
  processes, open files, no core dumps, address space when there is no memory cgroup), no_new_privs, then
  the slot's *sandbox* account, cwd /tmp/work, a clean environment, and an ipykernel started in-process.
  The kernel's account differs from the executor's, so the notebook can neither signal nor trace the
  process that reports its results; the trusted side only takes outputs from that report, never sources or
  metadata, and validates every output.

Each worker slot N has its own pair of system accounts (``atlaslab-sandbox-N`` runs kernels,
``atlaslab-executor-N`` runs nbclient; no home, no login shell) and its own cgroup, and runs one notebook
at a time, so RLIMIT_NPROC (per account) and the cgroup bound exactly one notebook. The wall-clock limit is
enforced by the trusted side: when it passes, the zygote kills the supervisor (pidfd), every process of both
accounts (a helper that takes the account's UID and sends kill(-1, SIGKILL), atomic against fork bombs) and
whatever is left in the cgroup. The same clean-up runs after every notebook, and at start.

For Dask or Kubernetes later: ``run_notebook(job)`` is a plain function of plain values. On a Dask worker it
runs in a per-process pool of one slot (the worker must run as root); in a pod that is itself the sandbox
(``runAsUser``, no service account token, a deny-all NetworkPolicy, resource limits), build the job with
``isolate=False``: the pool then skips accounts, namespaces and cgroups and keeps only the rlimits.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pwd
import queue
import resource
import secrets
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from atlaslab.core import cgroups

SANDBOX_PREFIX = "atlaslab-sandbox-"
EXECUTOR_PREFIX = "atlaslab-executor-"
CGROUP_PREFIX = "grade-slot-"
WORK = "/tmp/work"
HOME = "/tmp/home"
DEFAULT_HIDDEN = ("/home", "/root", "/run", "/srv/nbgrader")
LOCK_DIR = Path("/run/atlaslab-grade")
UNISOLATED_PREFIX = "atlaslab-nb-"
_FRAME = struct.Struct("!I")
_MiB = 1024 * 1024

# Linux constants (not all exposed by Python 3.11's os module).
CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_CHILD_SUBREAPER = 1, 38, 36
_MOUNT_FLAGS = {
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
}

# Execute (nbclient) settings a course's nbgrader config may set that the executor honours.
EXECUTE_TRAITS = (
    "allow_errors",
    "interrupt_on_timeout",
    "raise_on_iopub_timeout",
    "iopub_timeout",
    "error_on_timeout",
    "extra_arguments",
    "record_timing",
    "store_widget_state",
    "skip_cells_with_tag",
    "allow_error_names",
)


class SandboxError(RuntimeError):
    """The sandbox cannot be set up here (not root, accounts cannot be created, zygote failed)."""


@dataclass(frozen=True)
class SandboxLimits:
    memory: int = 1024 * _MiB  # bytes, kernel + executor (cgroup), or the kernel's address space without one
    cpu: float = 1.0  # cores (cgroup quota)
    processes: int = 64  # processes and threads of the kernel's account (RLIMIT_NPROC) and the cgroup's pids
    file_size: int = 64 * _MiB  # largest file the notebook may write (RLIMIT_FSIZE)
    disk: int = 256 * _MiB  # size of its private /tmp (its files included)
    open_files: int = 1024
    output_per_cell: int = 1 * _MiB  # bytes of output kept per cell; the rest is dropped with a note
    output_total: int = 8 * _MiB  # bytes of output kept per notebook


@dataclass
class NotebookJob:
    """One notebook to execute: plain values only, so any runner (pool, Dask, pod) can take it."""

    notebook: str  # the sanitized notebook, nbformat 4 JSON text
    files: dict[str, bytes] = field(default_factory=dict)  # relative path -> content, written next to it
    timeout: float = 300.0  # wall clock for the whole notebook, seconds
    cell_timeout: int | None = None  # nbclient's per-cell timeout (interrupt, go on), None: only the wall clock
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the kernel
    hidden: list[str] = field(default_factory=list)  # directories to hide (besides DEFAULT_HIDDEN)
    execute: dict = field(default_factory=dict)  # EXECUTE_TRAITS values
    isolate: bool = True  # accounts, namespaces and cgroups (needs root); False: rlimits only
    label: str = ""  # for messages


@dataclass
class NotebookResult:
    """What came back. ``status``: ok, timeout, died (kernel died or was killed) or error."""

    status: str
    reason: str = ""
    cells: dict[int, dict] = field(default_factory=dict)  # cell index -> {"outputs": [...], "execution_count"}
    language_info: dict | None = None
    failed_cell: int | None = None  # index of the cell running when it stopped (None: before any cell)
    partial: list = field(default_factory=list)  # what that cell printed before it stopped (when known)
    seconds: float = 0.0


@dataclass(frozen=True)
class Slot:
    index: int
    uid: int | None = None  # kernel account
    gid: int | None = None
    exec_uid: int | None = None  # executor account
    exec_gid: int | None = None
    cgroups: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------- helpers

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), "prctl")


def _loopback_up() -> None:
    """Bring up ``lo`` in a new network namespace (the kernel's channels use it; nothing else is there)."""
    import fcntl

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s, siocgifflags, req))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH22x", b"lo", flags | iff_up))


def _send_frame(sock: socket.socket, data: bytes) -> None:
    sock.sendall(_FRAME.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def _recv_frame(sock: socket.socket, limit: int) -> bytes:
    (n,) = _FRAME.unpack(_recv_exact(sock, _FRAME.size))
    if n > limit:
        raise ValueError(f"frame of {n} bytes over the limit of {limit}")
    return _recv_exact(sock, n)


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


# --------------------------------------------------------------------------------------------- the pool


class _Zygote:
    """Client side of the zygote's control socket (one request at a time)."""

    def __init__(self, slots: list[Slot], preload: tuple[str, ...]):
        self._lock = threading.Lock()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        }
        debug = os.environ.get("ATLASLAB_SANDBOX_DEBUG")
        if debug:
            env["ATLASLAB_SANDBOX_DEBUG"] = debug
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from atlaslab.grading.sandbox import _zygote_main; _zygote_main()",
                str(theirs.fileno()),
            ],
            pass_fds=(theirs.fileno(),),
            env=env,
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=None if debug else subprocess.DEVNULL,
            stderr=None if debug else subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches the trusted side only; it stops the pool itself
        )
        theirs.close()
        self.sock = ours
        # Its imports take a couple of seconds: the answer is read on first use, meanwhile the caller works.
        init = {"op": "init", "slots": [asdict(s) for s in slots], "preload": list(preload)}
        socket.send_fds(self.sock, [json.dumps(init).encode()], [])
        self._starting = True

    def _reply(self, op: str, timeout: float | None) -> dict:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise SandboxError(f"the sandbox zygote did not answer {op!r}") from None
        finally:
            self.sock.settimeout(None)
        if not data:
            raise SandboxError("the sandbox zygote exited")
        reply = json.loads(data)
        if "error" in reply:
            raise SandboxError(reply["error"])
        return reply

    def wait_ready(self) -> None:
        with self._lock:
            if self._starting:
                self._starting = False
                self._reply("init", 180)

    def _call(self, req: dict, fds: tuple[int, ...] = (), timeout: float | None = 60) -> dict:
        self.wait_ready()
        with self._lock:
            socket.send_fds(self.sock, [json.dumps(req).encode()], list(fds))
            return self._reply(req["op"], timeout)

    def fork(self, slot: int, sock: socket.socket) -> dict:
        return self._call({"op": "fork", "slot": slot}, (sock.fileno(),))

    def cleanup(self, slot: int) -> dict:
        return self._call({"op": "cleanup", "slot": slot})

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class SandboxPool:
    """``workers`` slots and one zygote; ``run(job)`` is thread-safe and blocks while all slots are busy.

    Create it while still root (accounts, cgroups, zygote); the caller may drop privileges afterwards.
    """

    def __init__(self, workers: int, limits: SandboxLimits | None = None, *, isolate: bool = True, preload=()):
        self.limits = limits or SandboxLimits()
        self.isolate = isolate
        self._locks: list[int] = []
        if isolate:
            self.slots, self._locks = ensure_slots(workers, self.limits)
        else:
            self.slots = [Slot(i) for i in range(workers)]
        self._free: queue.Queue[Slot] = queue.Queue()
        for s in self.slots:
            self._free.put(s)
        self._zygote = _Zygote(self.slots, tuple(preload))

    def wait_ready(self) -> None:
        """Block until the zygote has its modules loaded; raises SandboxError if it could not start."""
        self._zygote.wait_ready()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the zygote (its running notebooks die with it) and free the slots; idempotent."""
        self._zygote.close()
        for fd in self._locks:
            os.close(fd)
        self._locks = []

    def run(self, job: NotebookJob) -> NotebookResult:
        if job.isolate and not self.isolate:
            raise SandboxError("this pool was created without isolation")
        slot = self._free.get()
        try:
            return self._run(slot, job)
        finally:
            self._free.put(slot)

    def _run(self, slot: Slot, job: NotebookJob) -> NotebookResult:
        started = time.monotonic()
        ours, theirs = socket.socketpair()
        result = NotebookResult("error", "the executor stopped before reporting")
        oom_before = 0
        try:
            try:
                oom_before = self._zygote.fork(slot.index, theirs)["oom"]
            finally:
                theirs.close()
            deadline = started + job.timeout
            _send_job(ours, job)
            result = _collect(ours, deadline, job)
        except (OSError, EOFError) as e:
            result.reason = f"the executor stopped before reporting ({e.__class__.__name__})"
        finally:
            ours.close()
            after = self._zygote.cleanup(slot.index)
        if result.status in ("died", "error", "timeout") and after.get("oom", 0) > oom_before:
            result.status = "died"
            result.reason = f"the notebook used more than its memory limit ({_human(job.limits.memory)}) and was killed"
        result.seconds = time.monotonic() - started
        return result


def _human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} B"


def _send_job(sock: socket.socket, job: NotebookJob) -> None:
    files = []
    for name, data in job.files.items():
        norm = os.path.normpath(name)
        if os.path.isabs(norm) or norm.startswith("..") or "\0" in norm or norm in (".", ""):
            raise ValueError(f"bad file name in job: {name!r}")
        files.append((norm, len(data)))
    header = {
        "limits": asdict(job.limits),
        "timeout": job.timeout,
        "cell_timeout": job.cell_timeout,
        "env": job.env,
        "hidden": list(job.hidden),
        "execute": {k: v for k, v in job.execute.items() if k in EXECUTE_TRAITS},
        "files": files,
        "isolate": job.isolate,
    }
    _send_frame(sock, json.dumps(header).encode())
    for _, data in job.files.items():
        _send_frame(sock, data)
    _send_frame(sock, job.notebook.encode())


def _collect(sock: socket.socket, deadline: float, job: NotebookJob) -> NotebookResult:
    """Read the executor's events until it finishes, dies or the wall clock runs out."""
    result = NotebookResult("error", "the executor stopped before reporting")
    budget = job.limits.output_total * 2 + 4 * _MiB  # the executor truncates; this is only a backstop
    received = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            result.status = "timeout"
            result.reason = f"the notebook did not finish within its time limit ({job.timeout:g} s, wall clock)"
            return result
        sock.settimeout(left)
        try:
            raw = _recv_frame(sock, budget - received)
        except TimeoutError:
            continue
        except (EOFError, ConnectionError):
            return result
        except ValueError:
            result.reason = "the notebook produced more output than the autograder accepts"
            return result
        received += len(raw)
        event = json.loads(raw)
        kind = event.get("e")
        if kind == "cell" and isinstance(event.get("i"), int):
            result.cells[event["i"]] = {"outputs": event.get("outputs", []), "execution_count": event.get("count")}
        elif kind == "done":
            result.status, result.reason = "ok", ""
            result.language_info = event.get("language_info")
            return result
        elif kind in ("died", "error"):
            result.status, result.failed_cell = kind, event.get("i")
            result.reason = str(event.get("reason") or "the kernel died")[:2000]
            if isinstance(event.get("outputs"), list):
                result.partial = event["outputs"]
            return result


_default_pool: SandboxPool | None = None
_default_lock = threading.Lock()


def run_notebook(job: NotebookJob) -> NotebookResult:
    """Execute one notebook in a sandbox of this process's default pool (one slot); for Dask-style runners."""
    global _default_pool
    with _default_lock:
        if _default_pool is None:
            _default_pool = SandboxPool(1, job.limits, isolate=job.isolate)
    return _default_pool.run(job)


# ----------------------------------------------------------------------------------------------- zygote

_PRELOAD = (
    "ipykernel.kernelapp",
    "ipykernel.ipkernel",
    "ipykernel.zmqshell",
    "ipykernel.debugger",
    "IPython.core.interactiveshell",
    "IPython.core.completer",
    "jupyter_client.asynchronous",
    "nbclient",
    "nbformat",
    "nbgrader.preprocessors.execute",
    "debugpy",
    "psutil",
    "jupyter_client.localinterfaces",
    "sqlite3",
    "pdb",
    "pydoc",
    "gzip",
    "mimetypes",
    "xmlrpc.client",
    "faulthandler",
    "unicodedata",
    "sysconfig",
    "code",
    # What a kernel imports on its first cells (profiled): traceback formatting, magics, the event loop.
    "ipykernel_launcher",
    "IPython.core.completerlib",
    "IPython.core.debugger",
    "IPython.core.logger",
    "IPython.core.oinspect",
    "IPython.extensions.storemagic",
    "IPython.utils.wildcard",
    "stack_data",
    "executing",
    "asttokens",
    "pure_eval",
    "pygments.console",
    "pygments.formatters.terminal256",
    "encodings.unicode_escape",
    "tornado.platform.asyncio",
)


def _zygote_main() -> None:
    """Entry point of the zygote process (started by ``_Zygote``)."""
    import gc
    import importlib

    ctl = socket.socket(fileno=int(sys.argv[1]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children (and adopted orphans) are reaped automatically
    with contextlib.suppress(OSError):
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
    # No parent-death signal here: when the trusted side goes, however it goes, its end of the control
    # socket closes, and the zygote cleans every slot up before leaving (below). A parent-death signal
    # would not do: the kernel sends it with the dying parent's credentials, so an executor's death does
    # not reach its kernel, which runs under another account.
    slots: dict[int, dict] = {}
    pidfds: dict[int, int] = {}
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(ctl, 65536, 4)
        except OSError:
            break
        if not msg:
            break
        req = json.loads(msg)
        op = req.get("op")
        try:
            if op == "init":
                slots = {s["index"]: s for s in req["slots"]}
                skip_slow_optional_imports()
                for name in _PRELOAD + tuple(req.get("preload", ())):
                    importlib.import_module(name)
                _warm_up()
                gc.collect()
                gc.freeze()  # forked children's collections then leave the preloaded objects' pages shared
                for slot in slots.values():  # leftovers of an earlier, interrupted run
                    _clean_slot(slot)
                reply = {"ok": True}
            elif op == "fork":
                slot = slots[req["slot"]]
                pid = os.fork()
                if pid == 0:
                    try:
                        ctl.close()
                        for fd in pidfds.values():
                            os.close(fd)
                        _supervisor(socket.socket(fileno=fds[0]), slot)
                    finally:
                        os._exit(70)
                os.close(fds.pop(0))
                old = pidfds.pop(slot["index"], None)
                if old is not None:
                    os.close(old)
                pidfds[slot["index"]] = os.pidfd_open(pid)
                reply = {"pid": pid, "oom": cgroups.oom_kills(slot["cgroups"])}
            elif op == "cleanup":
                slot = slots[req["slot"]]
                pidfd = pidfds.pop(slot["index"], None)
                if pidfd is not None:
                    with contextlib.suppress(OSError):
                        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    os.close(pidfd)
                _clean_slot(slot)
                reply = {"ok": True, "oom": cgroups.oom_kills(slot["cgroups"])}
            else:
                reply = {"error": f"unknown request {op!r}"}
        except Exception as e:  # the trusted side reports it; the zygote keeps serving
            reply = {"error": f"{op}: {e.__class__.__name__}: {e}"}
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        try:
            ctl.send(json.dumps(reply).encode())
        except OSError:
            break
    for index, slot in slots.items():
        pidfd = pidfds.pop(index, None)
        if pidfd is not None:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        with contextlib.suppress(Exception):
            _clean_slot(slot)


SLOW_OPTIONAL = ("rfc3987_syntax",)


def skip_slow_optional_imports() -> None:
    """Keep jsonschema from importing rfc3987_syntax, which builds parsers for ~1 s of CPU at import.

    jsonschema only uses it, when installed, to check the "iri" formats, which no notebook or nbgrader
    schema uses. A kernel gets the module back (``_kernel`` removes the block) should a student import it.
    """
    for name in SLOW_OPTIONAL:
        sys.modules.setdefault(name, None)


def _warm_up() -> None:
    """Fill the caches every fork would otherwise fill again, found by profiling the forked processes."""
    import inspect

    import nbformat
    from nbgrader.preprocessors.execute import Execute

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")])
    # The notebook schema's compiled validator (~25 ms per executor).
    nbformat.validate(nbformat.reads(nbformat.writes(nb), as_version=4))
    Execute(timeout=1)
    # The first traceback a kernel formats makes inspect map every loaded module to its real path (one
    # lstat per path component of ~1500 files: ~90 ms per kernel); done once here, it is inherited.
    inspect.getmodule(compile("pass", "<atlaslab-warm-up>", "exec"))


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


def _clean_slot(slot: dict) -> None:
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


# ------------------------------------------------------------------------------------------- supervisor


def _supervisor(sock: socket.socket, slot: dict) -> None:
    """Forked per notebook: set up the sandbox, fork the kernel, then execute as the executor account."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    send = lambda obj: _send_frame(sock, json.dumps(obj).encode())  # noqa: E731
    base = kernel_pid = None
    try:
        header = json.loads(_recv_frame(sock, 1 * _MiB))
        lim = SandboxLimits(**header["limits"])
        total = sum(size for _, size in header["files"])
        if total > lim.disk:
            send({"e": "error", "reason": f"the submission's files ({_human(total)}) exceed the disk limit"})
            return
        files = [(name, _recv_frame(sock, size)) for name, size in header["files"]]
        isolate = header["isolate"]
        if isolate:
            if slot["cgroups"]:
                cgroups.join(slot["cgroups"])
            with contextlib.suppress(OSError):  # needs CAP_SYS_RESOURCE; the kernel's 1000 is what matters
                Path("/proc/self/oom_score_adj").write_text("-1000")
            _enter_namespaces(lim, header["hidden"])
            work, home = WORK, HOME
        else:
            import tempfile

            base = tempfile.mkdtemp(prefix=f"{UNISOLATED_PREFIX}{os.getppid()}-{slot['index']}-")
            work, home = f"{base}/work", f"{base}/home"
        kuid, kgid = (slot["uid"], slot["gid"]) if isolate else (os.getuid(), os.getgid())
        for d in (work, home):
            os.mkdir(d, 0o700)
            os.chown(d, kuid, kgid)
        for name, data in files:
            _write_file(work, name, data, kuid, kgid)
        del files
        info = {
            "transport": "tcp",
            "ip": "127.0.0.1",
            "key": secrets.token_hex(32),
            "signature_scheme": "hmac-sha256",
            "kernel_name": "python3",
        }
        if isolate:  # a fresh network namespace: every port is free
            info.update(shell_port=50101, iopub_port=50102, stdin_port=50103, control_port=50104, hb_port=50105)
        else:
            info.update(
                zip(("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"), _free_ports(5), strict=True)
            )
        conn = f"{home}/kernel.json"
        fd = os.open(conn, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, json.dumps(info).encode())
        os.close(fd)
        os.chown(conn, kuid, kgid)
        ready_r, ready_w = os.pipe()
        kernel_pid = os.fork()
        if kernel_pid == 0:
            try:
                os.close(ready_r)
                sock.close()
                _kernel(ready_w, conn, work, home, slot if isolate else None, lim, header)
            finally:
                os._exit(71)
        os.close(ready_w)
        if isolate:
            _drop(slot["exec_uid"], slot["exec_gid"])
        else:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        with contextlib.suppress(OSError):
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        nb_json = _recv_frame(sock, 64 * _MiB)
        _execute(send, nb_json, kernel_pid, ready_r, info, header, lim)
    except Exception as e:
        with contextlib.suppress(Exception):
            where = ""
            if os.environ.get("ATLASLAB_SANDBOX_DEBUG"):
                import traceback

                where = "\n" + traceback.format_exc()
            send({"e": "error", "reason": f"sandbox set-up failed: {e.__class__.__name__}: {e}{where}"})
    finally:
        with contextlib.suppress(Exception):
            sock.close()
        if base is not None:  # without isolation nobody else cleans up after this notebook
            import shutil

            with contextlib.suppress(OSError):
                if kernel_pid:
                    os.killpg(kernel_pid, signal.SIGKILL)
            shutil.rmtree(base, ignore_errors=True)
        os._exit(0)


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _enter_namespaces(lim: SandboxLimits, hidden: list[str]) -> None:
    """New mount and network namespaces: private /tmp, hidden private trees, everything else read-only."""
    _unshare(CLONE_NEWNS | CLONE_NEWNET)
    _loopback_up()
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    existing = _mountpoints()
    hide: list[str] = []
    for path in sorted({os.path.realpath(p) for p in (*DEFAULT_HIDDEN, *hidden) if _hideable(p)}):
        if not any(_under(path, top) for top in hide):  # inside a hidden tree already
            hide.append(path)
    for path in hide:
        _mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0")
    for path, opts in sorted(existing, key=lambda p: len(p[0])):
        if any(_under(path, top) for top in ("/proc", "/sys", "/dev", "/tmp", "/var/tmp", *hide)):
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for opt in opts.split(","):
            flags |= _MOUNT_FLAGS.get(opt, 0)
        try:
            _mount(None, path, None, flags)
        except OSError:
            if path == "/":
                raise
    size = f"size={lim.disk},mode=1777"
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, size)
    for path in ("/var/tmp", "/dev/shm"):
        if os.path.isdir(path) and not os.path.islink(path):
            _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, size)


def _write_file(work: str, name: str, data: bytes, uid: int, gid: int) -> None:
    path = os.path.join(work, name)
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        rel = os.path.relpath(parent, work)
        cur = work
        for part in rel.split(os.sep):
            cur = os.path.join(cur, part)
            if not os.path.isdir(cur):
                os.mkdir(cur, 0o755)
                os.chown(cur, uid, gid)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chown(path, uid, gid)


def _drop(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)


def _kernel(ready_w: int, conn: str, work: str, home: str, slot: dict | None, lim: SandboxLimits, header: dict):
    """The kernel process: limits, the sandbox account, a clean environment, then ipykernel in-process."""
    try:
        os.setsid()
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        cpu = int(header["timeout"]) + 5
        rl = [
            (resource.RLIMIT_CORE, 0, 0),
            (resource.RLIMIT_CPU, cpu, cpu + 5),
            (resource.RLIMIT_FSIZE, lim.file_size, lim.file_size),
            (resource.RLIMIT_NOFILE, lim.open_files, lim.open_files),
        ]
        if slot is not None:
            Path("/proc/self/oom_score_adj").write_text("1000")
            rl.append((resource.RLIMIT_NPROC, lim.processes, lim.processes))
        if slot is None or not slot["cgroups"]:
            rl.append((resource.RLIMIT_AS, lim.memory, lim.memory))
        for which, soft, hard in rl:
            resource.setrlimit(which, (soft, hard))
        if slot is not None:
            _drop(slot["uid"], slot["gid"])
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # works only without isolation (same account as the parent)
        os.chdir(work)
        os.umask(0o022)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, ready_w)
        os.closerange(ready_w + 1, 65536)
        os.environ.clear()
        os.environ.update(
            {
                "PATH": f"{sys.prefix}/bin:/usr/local/bin:/usr/bin:/bin",
                "HOME": home,
                "TMPDIR": "/tmp",
                "LANG": "C.UTF-8",
                "IPYTHONDIR": f"{home}/.ipython",
                "MPLCONFIGDIR": f"{home}/.config/matplotlib",
                "JUPYTER_RUNTIME_DIR": f"{home}/.runtime",
                "PYDEVD_DISABLE_FILE_VALIDATION": "1",
                **header["env"],
            }
        )
        import random

        random.seed()  # forked: do not share the zygote's random state between students
        if sys.path and sys.path[0] == "":
            del sys.path[0]
        for name in SLOW_OPTIONAL:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
        import ipykernel_launcher  # what `python -m ipykernel_launcher` would have run
        from ipykernel.kernelapp import IPKernelApp

        sys.argv = [ipykernel_launcher.__file__, "-f", conn]
        app = IPKernelApp.instance()
        extra = [str(a) for a in header["execute"].get("extra_arguments", [])]
        app.initialize(["-f", conn, "--HistoryManager.hist_file=:memory:", *extra])
        _cap_streams(app, lim)
        os.write(ready_w, b"R")
        os.close(ready_w)
        app.start()
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.write(ready_w, b"E" + f"{e.__class__.__name__}: {e}".encode()[:2000])
    finally:
        os._exit(0)


def _truncation_note(lim: SandboxLimits) -> str:
    return (
        f"\n[output truncated by the autograder: over {_human(lim.output_per_cell)} per cell"
        f" or {_human(lim.output_total)} per notebook]\n"
    )


def _cap_streams(app, lim: SandboxLimits) -> None:
    """Stop a flood of print() in the kernel itself: past the per-cell budget of a stream, writes are dropped.

    Otherwise the kernel buffers and serialises it all, and the executor decodes it all, only for the
    executor to drop it (a 200 MB print loop then ends in the memory limit rather than in a truncated
    output). stdout and stderr have a budget each, so a cell's first stderr output always gets through:
    nbgrader fails a test cell that wrote to stderr, and that must not change. The executor enforces the
    same limits again, whatever the notebook does to this.
    """
    from ipykernel.iostream import OutStream

    left: dict[str, int] = {}
    note = _truncation_note(lim)
    original = OutStream.write

    def write(self, string):
        name = getattr(self, "name", "stdout")
        budget = left.setdefault(name, lim.output_per_cell)
        if budget <= 0 or not isinstance(string, str):
            return original(self, string) if not isinstance(string, str) else len(string)
        if len(string) > budget:
            left[name] = 0
            original(self, string[:budget] + note)
            return len(string)
        left[name] = budget - len(string)
        return original(self, string)

    OutStream.write = write
    app.shell.events.register("pre_execute", left.clear)


# --------------------------------------------------------------------------------------------- executor


def _execute(send, nb_json: bytes, kernel_pid: int, ready_r: int, info: dict, header: dict, lim: SandboxLimits):
    """As the executor account: wait for the kernel, run nbgrader's Execute, report every cell."""
    from queue import Empty

    import nbformat
    from jupyter_client.asynchronous import AsyncKernelClient
    from nbclient.exceptions import DeadKernelError
    from nbgrader.preprocessors.execute import Execute

    kernel = {"status": None}

    def exit_status() -> int | None:
        if kernel["status"] is None:
            with contextlib.suppress(ChildProcessError):
                pid, status = os.waitpid(kernel_pid, os.WNOHANG)
                if pid:
                    kernel["status"] = status
        return kernel["status"]

    def death_reason() -> str:
        status = exit_status()
        if status is None:
            return "the kernel stopped answering"
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGXCPU:
                return "the notebook used more than its CPU time limit and was killed"
            if sig == signal.SIGXFSZ:
                return "the notebook wrote a file larger than its limit and was killed"
            return f"the kernel died (killed by signal {signal.Signals(sig).name})"
        return f"the kernel died (exit status {os.WEXITSTATUS(status)})"

    class Client(AsyncKernelClient):
        async def is_alive(self) -> bool:
            return exit_status() is None

        async def wait_for_ready(self, timeout=None) -> None:
            # jupyter_client's version sleeps 0.2 s at least twice; here one round trip suffices.
            end = time.monotonic() + (timeout or 60)
            while time.monotonic() < end:
                if exit_status() is not None:
                    raise DeadKernelError("kernel died before it was ready")
                self.kernel_info()
                try:
                    reply = await self.shell_channel.get_msg(timeout=1)
                except Empty:
                    continue
                if reply["msg_type"] != "kernel_info_reply":
                    continue
                try:  # IOPub is connected once it delivers the status of that request
                    await self.iopub_channel.get_msg(timeout=0.1)
                except Empty:
                    continue
                self._handle_kernel_info_reply(reply)
                return
            raise RuntimeError("the kernel did not become ready")

    class Manager:
        """The little of a KernelManager that nbclient uses, for a kernel we forked ourselves."""

        ipykernel = True
        has_kernel = True
        kernel_id = "sandbox"
        kc: Client | None = None

        def client(self, **kwargs) -> Client:
            self.kc = Client()
            self.kc.load_connection_info(info)
            return self.kc

        def is_alive(self) -> bool:
            return exit_status() is None

        def interrupt_kernel(self) -> None:
            # By message: the executor may not signal the kernel (another account); ipykernel signals itself.
            if self.kc is not None:
                self.kc.control_channel.send(self.kc.session.msg("interrupt_request", {}))

        def shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:
            pass

        def cleanup_resources(self, restart: bool = False) -> None:
            pass

    class SandboxExecute(Execute):
        current = -1

        total_bytes = 0

        def preprocess_cell(self, cell, resources, index):
            self.current = index
            self.cell_bytes, self.cell_note, self.cell_stderr = 0, False, False
            cell, resources = super().preprocess_cell(cell, resources, index)
            if cell.cell_type == "code":
                send({"e": "cell", "i": index, "outputs": cell.outputs, "count": cell.get("execution_count")})
            return cell, resources

        async def _async_poll_kernel_alive(self) -> None:
            while True:  # nbclient checks every second; a dead kernel is noticed sooner here
                await asyncio.sleep(0.1)
                try:
                    await self._async_check_alive()
                except DeadKernelError:
                    assert self.task_poll_for_reply is not None
                    self.task_poll_for_reply.cancel()
                    return

        def process_message(self, msg, cell, cell_index):
            if _cap_message(self, msg, lim):
                return None
            return super().process_message(msg, cell, cell_index)

    import asyncio

    nb = nbformat.reads(nb_json.decode(), as_version=4)
    del nb_json
    r, _, _ = select.select([ready_r], [], [], 120)
    first = os.read(ready_r, 4096) if r else b""
    if first[:1] != b"R":
        detail = first[1:].decode(errors="replace") if first[:1] == b"E" else death_reason()
        send({"e": "error", "reason": f"the kernel could not start: {detail}"})
        return
    ex = SandboxExecute(timeout=header["cell_timeout"], **header["execute"])
    km = Manager()

    def partial() -> list:
        """What the cell that was running had printed before it stopped."""
        if 0 <= ex.current < len(nb.cells):
            return list(nb.cells[ex.current].get("outputs", []))
        return []

    try:
        nb, _ = ex.preprocess(nb, {"metadata": {"path": WORK}}, km=km)
    except Exception as e:
        if isinstance(e, DeadKernelError) or exit_status() is not None:
            send({"e": "died", "i": ex.current, "reason": death_reason(), "outputs": partial()})
        else:
            reason = f"{e.__class__.__name__}: {e}"[:2000]
            send({"e": "error", "i": ex.current, "reason": reason, "outputs": partial()})
        return
    send({"e": "done", "language_info": nb.metadata.get("language_info")})


def _size(value) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_size(v) for v in value)
    if isinstance(value, dict):
        return sum(_size(v) for v in value.values())
    return 16


def _cap_message(ex, msg: dict, lim: SandboxLimits) -> bool:
    """Keep output within the per-cell and per-notebook budgets; True: drop this message.

    Over budget: stdout and rich display output are dropped (one note says so); stderr keeps a short first
    piece (nbgrader scores a test cell with stderr as failed, so its presence must survive); errors and the
    execute_result always stay, shortened. Truncation never turns a failing cell into a passing one.
    """
    kind = msg["msg_type"]
    content = msg["content"]
    if kind not in ("stream", "display_data", "update_display_data", "execute_result", "error"):
        return False
    size = _size(content.get("text") or content.get("data") or content.get("traceback") or "")
    ex.cell_bytes += size
    ex.total_bytes += size
    if ex.cell_bytes <= lim.output_per_cell and ex.total_bytes <= lim.output_total:
        return False
    note = _truncation_note(lim)
    if kind == "error":
        tb = [str(line)[:2000] for line in content.get("traceback", [])]
        content["traceback"] = [*tb[:20], "...", *tb[-20:]] if len(tb) > 41 else tb
        content["evalue"] = str(content.get("evalue", ""))[:2000]
        return False
    if kind == "execute_result":
        data = {k: (v[:10000] if isinstance(v, str) else v) for k, v in content.get("data", {}).items()}
        content["data"] = data if _size(data) <= 100000 else {"text/plain": "[result truncated by the autograder]"}
        return False
    if kind == "stream" and content.get("name") == "stderr" and not ex.cell_stderr:
        ex.cell_stderr = True
        content["text"] = str(content.get("text", ""))[:1000] + note
        return False
    if ex.cell_note:
        return True
    ex.cell_note = True
    msg["msg_type"] = "stream"
    msg["header"] = {**msg["header"], "msg_type": "stream"}
    content.clear()
    content.update({"name": "stdout", "text": note})
    return False
