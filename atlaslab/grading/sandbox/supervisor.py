"""The supervisor: forked by the zygote for one notebook, it builds that notebook's sandbox and reports.

Still root, it joins the slot's cgroup, enters new mount and network namespaces, writes the submission's
files into the private /tmp/work, and forks the kernel; then it drops to the slot's *executor* account for
good and runs the executor against that kernel. Without isolation (``isolate=False``, in a pod that is
itself the sandbox) it keeps only the rlimits, uses a temporary directory and cleans that up itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import secrets
import signal
import socket
from pathlib import Path

from atlaslab.core import cgroups

from .executor import execute_notebook
from .jobs import MiB, SandboxLimits, human, recv_frame, send_frame
from .kernel import run_kernel
from .linux import PR_SET_PDEATHSIG, drop_privileges, prctl
from .namespaces import HOME, WORK, enter_namespaces
from .slots import UNISOLATED_PREFIX


def supervise(sock: socket.socket, slot: dict) -> None:
    """Forked per notebook: set up the sandbox, fork the kernel, then execute as the executor account."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    send = lambda obj: send_frame(sock, json.dumps(obj).encode())  # noqa: E731
    base = kernel_pid = None
    try:
        header = json.loads(recv_frame(sock, 1 * MiB))
        lim = SandboxLimits(**header["limits"])
        total = sum(size for _, size in header["files"])
        if total > lim.disk:
            send({"e": "error", "reason": f"the submission's files ({human(total)}) exceed the disk limit"})
            return
        files = [(name, recv_frame(sock, size)) for name, size in header["files"]]
        isolate = header["isolate"]
        if isolate:
            if slot["cgroups"]:
                cgroups.join(slot["cgroups"])
            with contextlib.suppress(OSError):  # needs CAP_SYS_RESOURCE; the kernel's 1000 is what matters
                Path("/proc/self/oom_score_adj").write_text("-1000")
            enter_namespaces(lim, header["hidden"])
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
                run_kernel(ready_w, conn, work, home, slot if isolate else None, lim, header)
            finally:
                os._exit(71)
        os.close(ready_w)
        if isolate:
            drop_privileges(slot["exec_uid"], slot["exec_gid"])
        else:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        with contextlib.suppress(OSError):
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        nb_json = recv_frame(sock, 64 * MiB)
        execute_notebook(send, nb_json, kernel_pid, ready_r, info, header, lim)
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
