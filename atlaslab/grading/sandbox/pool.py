"""The trusted side: a pool of slots and one zygote, and ``run(job)`` for one notebook in a free slot.

This is all a caller uses (``atlaslab.grading.autograde``, a Dask worker through ``run_notebook``). It
claims the slots while still root, starts the zygote as its own Python process, sends each job's plain
values to a supervisor the zygote forked, and reads back only the result, with the wall clock and the
output budget enforced on this side; after every notebook it has the zygote clean the slot up.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict

from .jobs import (
    EXECUTE_TRAITS,
    MiB,
    NotebookJob,
    NotebookResult,
    SandboxError,
    SandboxLimits,
    Slot,
    human,
    recv_frame,
    send_frame,
)
from .slots import ensure_slots


class _Zygote:
    """Client side of the zygote's control socket (one request at a time)."""

    def __init__(self, slots: list[Slot], preload: tuple[str, ...]) -> None:
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
                "from atlaslab.grading.sandbox.zygote import main; main()",
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

    def __init__(
        self, workers: int, limits: SandboxLimits | None = None, *, isolate: bool = True, preload: Iterable[str] = ()
    ) -> None:
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

    def __exit__(self, *exc: object) -> None:
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
            result.reason = f"the notebook used more than its memory limit ({human(job.limits.memory)}) and was killed"
        result.seconds = time.monotonic() - started
        return result


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
    send_frame(sock, json.dumps(header).encode())
    for _, data in job.files.items():
        send_frame(sock, data)
    send_frame(sock, job.notebook.encode())


def _collect(sock: socket.socket, deadline: float, job: NotebookJob) -> NotebookResult:
    """Read the executor's events until it finishes, dies or the wall clock runs out."""
    result = NotebookResult("error", "the executor stopped before reporting")
    budget = job.limits.output_total * 2 + 4 * MiB  # the executor truncates; this is only a backstop
    received = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            result.status = "timeout"
            result.reason = f"the notebook did not finish within its time limit ({job.timeout:g} s, wall clock)"
            return result
        sock.settimeout(left)
        try:
            raw = recv_frame(sock, budget - received)
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
