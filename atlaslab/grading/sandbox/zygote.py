"""The zygote: a root process started once per pool that forks a supervisor for every notebook.

It imports and warms up everything a kernel and an executor need before it ever sees a job, so that each
notebook gets a new process and a new kernel without paying for the imports, and its memory holds no
student's data for a fork to inherit. It is root, so it also does the killing and the clean-up of slots.
``SandboxPool`` starts it as ``python -c "from atlaslab.grading.sandbox.zygote import main; main()" FD``
and talks to it over that socket.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys

from atlaslab.core import cgroups

from .linux import PR_SET_CHILD_SUBREAPER, prctl
from .preload import PRELOAD, skip_slow_optional_imports, warm_up
from .slots import clean_slot
from .supervisor import supervise


def main() -> None:
    """Entry point of the zygote process (started by ``_Zygote``)."""
    import gc
    import importlib

    ctl = socket.socket(fileno=int(sys.argv[1]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children (and adopted orphans) are reaped automatically
    with contextlib.suppress(OSError):
        prctl(PR_SET_CHILD_SUBREAPER, 1)
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
                for name in PRELOAD + tuple(req.get("preload", ())):
                    importlib.import_module(name)
                warm_up()
                gc.collect()
                gc.freeze()  # forked children's collections then leave the preloaded objects' pages shared
                for slot in slots.values():  # leftovers of an earlier, interrupted run
                    clean_slot(slot)
                reply = {"ok": True}
            elif op == "fork":
                slot = slots[req["slot"]]
                pid = os.fork()
                if pid == 0:
                    try:
                        ctl.close()
                        for fd in pidfds.values():
                            os.close(fd)
                        supervise(socket.socket(fileno=fds[0]), slot)
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
                clean_slot(slot)
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
            clean_slot(slot)
