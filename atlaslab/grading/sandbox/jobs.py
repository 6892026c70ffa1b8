"""What crosses between the trusted side and a sandbox: the job, its limits, the result, and the framing.

A job and its result are plain values (dataclasses of strings, numbers, dicts and bytes), so any runner can
carry them: the local pool, a Dask worker, a pod. Between the trusted side and a supervisor they travel as
length-prefixed frames over a socket; both ends use the helpers here, so they live at the bottom of the
package, below everything that runs on either side.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

MiB = 1024 * 1024
_FRAME = struct.Struct("!I")

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
    memory: int = 1024 * MiB  # bytes, kernel + executor (cgroup), or the kernel's address space without one
    cpu: float = 1.0  # cores (cgroup quota)
    processes: int = 64  # processes and threads of the kernel's account (RLIMIT_NPROC) and the cgroup's pids
    file_size: int = 64 * MiB  # largest file the notebook may write (RLIMIT_FSIZE)
    disk: int = 256 * MiB  # size of its private /tmp (its files included)
    open_files: int = 1024
    output_per_cell: int = 1 * MiB  # bytes of output kept per cell; the rest is dropped with a note
    output_total: int = 8 * MiB  # bytes of output kept per notebook


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


def human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} B"


def send_frame(sock: socket.socket, data: bytes) -> None:
    sock.sendall(_FRAME.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket, limit: int) -> bytes:
    (n,) = _FRAME.unpack(_recv_exact(sock, _FRAME.size))
    if n > limit:
        raise ValueError(f"frame of {n} bytes over the limit of {limit}")
    return _recv_exact(sock, n)
