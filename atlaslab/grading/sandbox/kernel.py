"""The kernel process: the only one that runs the student's code, so the one with the tightest box.

Forked by the supervisor, it takes a new session, rlimits, the slot's *sandbox* account (not the executor's:
the notebook can then neither signal nor trace the process that reports its results), no_new_privs, a clean
environment, and then starts an ipykernel in-process from the modules the zygote already loaded.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import sys
from pathlib import Path

from .jobs import SandboxLimits
from .linux import PR_SET_PDEATHSIG, drop_privileges, prctl
from .output import cap_streams
from .preload import SLOW_OPTIONAL


def run_kernel(
    ready_w: int, conn: str, work: str, home: str, slot: dict | None, lim: SandboxLimits, header: dict
) -> None:
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
            drop_privileges(slot["uid"], slot["gid"])
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # works only without isolation (same account as the parent)
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
        cap_streams(app, lim)
        os.write(ready_w, b"R")
        os.close(ready_w)
        app.start()
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.write(ready_w, b"E" + f"{e.__class__.__name__}: {e}".encode()[:2000])
    finally:
        os._exit(0)
