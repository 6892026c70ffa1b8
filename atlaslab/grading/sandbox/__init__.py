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

Modules, bottom to top (each imports only from those above it in this list): ``jobs`` (the job, its limits,
the result, the wire framing), ``linux`` (unshare, mount, prctl), ``namespaces`` (what a notebook sees),
``slots`` (accounts, cgroups, locks, clean-up), ``preload`` (what the zygote loads), ``output`` (output
budgets), ``kernel``, ``executor``, ``supervisor``, ``zygote`` (the processes above, one module each) and
``pool`` (the trusted side). This package re-exports what callers use.
"""

from .jobs import EXECUTE_TRAITS, NotebookJob, NotebookResult, SandboxError, SandboxLimits, Slot
from .namespaces import DEFAULT_HIDDEN, HOME, WORK
from .pool import SandboxPool, run_notebook
from .preload import SLOW_OPTIONAL, skip_slow_optional_imports
from .slots import (
    CGROUP_PREFIX,
    EXECUTOR_PREFIX,
    LOCK_DIR,
    SANDBOX_PREFIX,
    UNISOLATED_PREFIX,
    can_access,
    ensure_slots,
    prepare_slot_cgroup,
    slot_cgroup,
)

__all__ = [
    "CGROUP_PREFIX",
    "DEFAULT_HIDDEN",
    "EXECUTE_TRAITS",
    "EXECUTOR_PREFIX",
    "HOME",
    "LOCK_DIR",
    "SANDBOX_PREFIX",
    "SLOW_OPTIONAL",
    "UNISOLATED_PREFIX",
    "WORK",
    "NotebookJob",
    "NotebookResult",
    "SandboxError",
    "SandboxLimits",
    "SandboxPool",
    "Slot",
    "can_access",
    "ensure_slots",
    "prepare_slot_cgroup",
    "run_notebook",
    "skip_slow_optional_imports",
    "slot_cgroup",
]
