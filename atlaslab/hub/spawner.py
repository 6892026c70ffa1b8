"""The local spawner: one system account per user, the chosen environment's limits, fast readiness.

It extends JupyterHub's LocalProcessSpawner rather than replacing it, adding what a shared lab machine
needs: a profile menu filtered by the user's groups (and re-checked when the spawn request arrives),
per-user accounts and private homes, cgroup/rlimit limits covering the server and its kernels, and a
readiness wait that returns as soon as the server listens instead of sleeping through back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import os
import sys
import time
import weakref
from pathlib import Path
from typing import ClassVar

import psutil
from jupyterhub.spawner import LocalProcessSpawner
from jupyterhub.utils import random_port
from tornado import web
from traitlets import Any, Dict, Float, Integer, List, Unicode, default

from atlaslab.compute import credits as credits_mod
from atlaslab.compute import gpus as gpus_mod
from atlaslab.compute import metrics
from atlaslab.compute.allocation import GpuAllocator, NoGpuFree, Request
from atlaslab.compute.usage import UsageLedger
from atlaslab.config.units import format_size

from . import accounts, language, limits
from .membership import allowed_environments

SINGLEUSER = str(Path(sys.executable).with_name("jupyterhub-singleuser"))
# Loaded in every user's server (here through the arguments; in the Kubernetes images through their config,
# atlaslab/hub/imageconfig.py): the workbench panel's server side (environment, credits, runs, Dask), and
# dask-labextension's dashboard check taught to find dashboards behind the user's own server (its stock check
# fetches them without credentials and meets the hub's login).
SERVER_EXTENSIONS = ("atlaslab.workbench", "atlaslab.compute.dashboard")
# Kernel websockets with TCP_NODELAY: without it every cell's reply waits ~40 ms on delayed ACKs.
KERNEL_WEBSOCKET = "atlaslab.hub.singleuser.NoDelayKernelConnection"


class AtlasLabSpawner(LocalProcessSpawner):
    environments = Dict(
        help="Environment id -> {title, description, cpu, memory (bytes), processes, gpu, default}.",
    ).tag(config=True)
    access_rules = Dict(
        help="Hub group -> environment ids its members may start.",
    ).tag(config=True)
    fallback_environments = List(
        Unicode(), help="Environments for users in no tenant (fresh sign-ups on a site without a default tenant)."
    ).tag(config=True)
    isolation = Unicode(
        "none", help="'system-users': an account per user (root only); 'none': run as the hub's account."
    ).tag(config=True)
    home_root = Unicode("/home", help="Parent of system-user homes.").tag(config=True)
    dev_home_root = Unicode(help="Parent of per-user directories when isolation is 'none'.").tag(config=True)
    ready_poll_interval = Float(0.02, help="Seconds between readiness checks of a starting server.").tag(config=True)
    disabled_server_extensions = List(
        Unicode(),
        help="Jupyter server extensions not loaded in user servers (they cost start-up time and users lack the role).",
    ).tag(config=True)
    start_concurrency = Integer(
        0,
        help="Servers importing and starting at the same moment; others queue, first come first served."
        " 0: one per CPU core.",
    ).tag(config=True)
    start_slot_hold = Float(
        10.0, help="Seconds a starting server may hold its start slot before the next one may start anyway."
    ).tag(config=True)
    course_server_extensions = List(
        Unicode(),
        help="Jupyter server extensions loaded only in the servers of course members (users in a course:* group).",
    ).tag(config=True)
    compute_dir = Unicode(
        help="Where GPU assignments (gpus.sqlite) and the usage ledger (usage.sqlite) live; empty: not kept."
    ).tag(config=True)
    lab_settings_root = Unicode(
        help="Directory of JupyterLab settings directories, one per language (atlaslab/hub/language.py); empty: the"
        " server's own language default."
    ).tag(config=True)
    tenant_languages = Dict(help="Tenant -> default JupyterLab language of its users (en, fr, ar).").tag(config=True)
    default_language = Unicode("en", help="Default JupyterLab language of users whose tenant sets none.").tag(
        config=True
    )
    credits = Any(None, allow_none=True, help="The site's `credits` section (atlaslab.config.schema.Credits).").tag(
        config=True
    )

    # ---- which environments, and the form ---------------------------------------------------------------

    def allowed(self) -> list[str]:
        groups = [g.name for g in self.user.groups]
        return allowed_environments(
            self.environments, self.access_rules, groups, admin=self.user.admin, fallback=self.fallback_environments
        )

    def _default_choice(self, allowed: list[str]) -> str | None:
        for key in allowed:
            if self.environments[key].get("default"):
                return key
        return allowed[0] if allowed else None

    @default("apply_user_options")
    def _apply_user_options_default(self):
        # Runs when the spawn request arrives, before anything starts: a forbidden choice is a 403 at once.
        return lambda spawner, user_options: spawner.chosen_environment()

    @default("options_form")
    def _options_form_default(self):
        return self.render_form

    def render_form(self, spawner: AtlasLabSpawner) -> str:
        allowed = self.allowed()
        if not allowed:
            return (
                '<p class="alert alert-warning" role="alert">No environment is open to your account yet. '
                "Ask your instructor or the site administrator to add you to a course, team or tenant.</p>"
            )
        choice = self._default_choice(allowed)
        rows = []
        for key in allowed:
            env = self.environments[key]
            checked = " checked" if key == choice else ""
            desc = html.escape(env.get("description") or "")
            rows.append(
                f'<div class="form-check atlaslab-env">'
                f'<input class="form-check-input" type="radio" name="environment" id="env-{key}" value="{key}"'
                f"{checked}>"
                f'<label class="form-check-label" for="env-{key}"><strong>{html.escape(env["title"])}</strong>'
                f' <span class="text-muted">{html.escape(_resources(env))}</span>'
                + (f'<br><small class="text-muted">{desc}</small>' if desc else "")
                + "</label></div>"
            )
        return "<fieldset><legend>Choose an environment</legend>" + "".join(rows) + "</fieldset>"

    def options_from_form(self, formdata: dict) -> dict:
        values = formdata.get("environment") or [""]
        return {"environment": values[0]}

    def chosen_environment(self) -> str:
        """The environment to start, checked against what this user may start (never trust the form)."""
        allowed = self.allowed()
        requested = (self.user_options or {}).get("environment") or self._default_choice(allowed)
        if not requested or requested not in self.environments:
            listing = ", ".join(allowed) or "none"
            raise web.HTTPError(400, f"Unknown environment {requested!r}. You may start: {listing}.")
        if requested not in allowed:
            listing = ", ".join(allowed) or "none"
            raise web.HTTPError(
                403, f"You may not start the environment '{requested}'. Environments open to you: {listing}."
            )
        return requested

    # ---- starting ---------------------------------------------------------------------------------------

    def _limits(self, env: dict) -> limits.ResourceLimits:
        return limits.ResourceLimits(memory=int(env["memory"]), cpu=float(env["cpu"]), processes=int(env["processes"]))

    @property
    def _cgroup_name(self) -> str:
        return accounts.system_username(self.user.name) + (f"-{self.name}" if self.name else "")

    async def start(self):
        key = self.chosen_environment()
        env = self.environments[key]
        gpus = _gpu_share(env)
        await self._check_credits_at_start(gpus)
        self.mem_limit = int(env["memory"])
        self.cpu_limit = float(env["cpu"])
        self.environment["ATLASLAB_ENVIRONMENT"] = key
        if env.get("gpu"):
            devices = await self._assign_gpus(key, env)
            uuids = ",".join(d.uuid for d in devices)
            self.environment.update(CUDA_VISIBLE_DEVICES=uuids, NVIDIA_VISIBLE_DEVICES=uuids, ATLASLAB_GPUS=uuids)
        else:
            self.environment["CUDA_VISIBLE_DEVICES"] = ""
            self.environment["NVIDIA_VISIBLE_DEVICES"] = "none"
            self.environment.pop("ATLASLAB_GPUS", None)
        try:
            ip_port = await self._start_process(env)
        except BaseException:
            await asyncio.to_thread(self._release_compute)
            raise
        await asyncio.to_thread(self._record_start, key, env, gpus)
        return ip_port

    async def _start_process(self, env: dict):
        pick_port = self.port == 0
        res = self._limits(env)
        if self.isolation == "system-users":
            entry = await asyncio.to_thread(accounts.ensure_account, self.user.name, Path(self.home_root))
            self._account = entry
            self._cgroups = await asyncio.to_thread(limits.prepare_cgroup, self._cgroup_name, res)
        else:
            self._account = None
            self._cgroups = []
            Path(self._dev_home).mkdir(parents=True, exist_ok=True, mode=0o700)
        self._resource_limits = res
        # A burst of starts queues here, a few at a time, first come first served: see start_concurrency.
        await self._acquire_start_slot()
        try:
            for _ in range(3):
                if pick_port:
                    # Chosen now, not before the wait: a port picked seconds earlier is often taken meanwhile.
                    self.port = random_port()
                ip, port = await super().start()
                if await self._wait_listening(ip, port):
                    return ip, port
                self.log.warning(
                    "Port %s was taken before %s's server could listen; trying another", port, self._log_name
                )
                await self._kill_starting_server()
                if not pick_port:
                    break
            raise web.HTTPError(
                500, f"Your server could not get a network port ({port} is in use). Try again in a moment."
            )
        finally:
            self._release_start_slot()

    # ---- GPUs and credits ---------------------------------------------------------------------------------

    @property
    def _holder(self) -> str:
        return f"{self.user.name}/{self.name}"

    def _membership(self) -> tuple[str | None, list[str]]:
        names = [g.name for g in self.user.groups]
        tenants = sorted(n.split(":", 1)[1] for n in names if n.startswith("tenant:") and n.count(":") == 1)
        teams = sorted(n.split(":", 1)[1] for n in names if n.startswith("team:"))
        return (tenants[0] if tenants else None), teams

    def _ledger(self) -> UsageLedger | None:
        return UsageLedger(Path(self.compute_dir) / "usage.sqlite") if self.compute_dir else None

    async def _check_credits_at_start(self, gpus: float) -> None:
        if self.credits is None or not self.compute_dir:
            return
        tenant, teams = self._membership()
        ledger = self._ledger()
        refusal = await asyncio.to_thread(
            credits_mod.spawn_refusal, ledger, self.credits, self.user.name, tenant, teams, gpus, time.time()
        )
        if refusal:
            raise web.HTTPError(403, refusal)

    async def _assign_gpus(self, key: str, env: dict) -> list[gpus_mod.GPU]:
        inventory = await asyncio.to_thread(gpus_mod.detect)
        if not inventory:
            raise web.HTTPError(
                503,
                f"'{env['title']}' needs a GPU but {inventory.reason}. Start a CPU environment instead, "
                "or ask the administrator which machine has GPUs.",
            )
        allocator = GpuAllocator(Path(self.compute_dir or self.dev_home_root) / "gpus.sqlite", inventory.gpus)
        try:
            return await asyncio.to_thread(allocator.allocate, self._holder, Request.from_env(env["gpu"]))
        except NoGpuFree as e:
            others = [
                self.environments[k]["title"]
                for k in self.allowed()
                if k != key
                and (
                    not self.environments[k].get("gpu")
                    or allocator.can_allocate(Request.from_env(self.environments[k]["gpu"]))
                )
            ]
            hint = f" You can start {' or '.join(repr(t) for t in others)} now," if others else ""
            raise web.HTTPError(503, f"{e}{hint} or try again when a GPU is free.") from None

    def _gpu_allocator(self) -> GpuAllocator | None:
        path = Path(self.compute_dir or self.dev_home_root) / "gpus.sqlite"
        return GpuAllocator(path, []) if path.exists() else None

    def _record_start(self, key: str, env: dict, gpus: float) -> None:
        allocator = self._gpu_allocator()
        if allocator is not None and self.pid:
            allocator.attach(self._holder, self.pid)
            metrics.record_assignments(allocator.assignments())
        ledger = self._ledger()
        if ledger is not None:
            tenant, teams = self._membership()
            scopes = credits_mod.scopes_of(self.user.name, tenant, teams)
            ledger.open(self._holder, self.user.name, key, float(env["cpu"]), gpus, scopes)

    def _release_compute(self) -> None:
        allocator = self._gpu_allocator()
        if allocator is not None:
            allocator.release(self._holder)
            metrics.record_assignments(allocator.assignments())
        ledger = self._ledger()
        if ledger is not None:
            ledger.close(self._holder)

    async def poll(self):
        status = await super().poll()
        if status is not None:
            await asyncio.to_thread(self._release_compute)
            return status
        # Not while stopping: stop() polls until the process is gone, and a check there would stop again.
        if self.credits is not None and self.compute_dir and not getattr(self, "_stopping", False):
            stopped = await self._check_credits_running()
            if stopped:
                return 0
        return None

    async def _check_credits_running(self) -> bool:
        """Count this server, warn its user at the configured levels, stop it past its grace. True if stopped."""
        ledger = self._ledger()
        assert ledger is not None
        env = self.environments.get(self.environment.get("ATLASLAB_ENVIRONMENT", ""), {})
        tenant, teams = self._membership()
        now = time.time()
        await asyncio.to_thread(ledger.seen, self._holder)
        verdict = await asyncio.to_thread(
            credits_mod.check_running, ledger, self.credits, self.user.name, tenant, teams, _gpu_share(env), now
        )
        metrics.record_budgets(
            await asyncio.to_thread(credits_mod.budgets, ledger, self.credits, self.user.name, tenant, teams, now)
        )
        for key, level, message in verdict.notices:
            if await asyncio.to_thread(ledger.notify, self.user.name, key, level, message):
                self.log.warning("Credits notice for %s: %s", self._log_name, message)
        if not verdict.over:
            return False
        first = verdict.over[0]
        noticed = await asyncio.to_thread(ledger.notice_time, self.user.name, f"{first.key}:stop")
        if noticed is None or now - noticed < float(self.credits.grace):
            return False
        self.log.warning("Stopping %s: no credit left in %s", self._log_name, first.describe())
        await asyncio.to_thread(
            ledger.notify,
            self.user.name,
            f"{first.key}:stopped:{int(now)}",
            "stopped",
            f"Your server was stopped: no credit left in {first.describe()}.",
        )
        await self.stop(now=True)
        return True

    _start_slots: ClassVar[weakref.WeakKeyDictionary] = weakref.WeakKeyDictionary()  # event loop -> semaphore

    async def _acquire_start_slot(self) -> None:
        """Wait for one of ``start_concurrency`` start slots; the asyncio semaphore serves waiters in order.

        Starting a server is a burst of CPU (imports, extensions). When 30 start at once on 2 cores, they share
        the CPU and all become ready at about the same late moment, while the hub, starved too, answers
        everyone slowly. A few at a time, each is ready in about a second and the queue moves.
        """
        slots = AtlasLabSpawner._start_slots
        loop = asyncio.get_running_loop()
        if loop not in slots:
            slots[loop] = asyncio.Semaphore(self.start_concurrency or len(os.sched_getaffinity(0)))
        await slots[loop].acquire()
        self._holding_slot = slots[loop]

    def _release_start_slot(self) -> None:
        slot = getattr(self, "_holding_slot", None)
        if slot is not None:
            self._holding_slot = None
            slot.release()

    async def _kill_starting_server(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait, 10)

    def _server_listens_on(self, port: int) -> bool:
        """Whether the listener on ``port`` is this server (not a kernel or another program that took the port)."""
        if self.proc is None:
            return True
        try:
            server = psutil.Process(self.proc.pid)
            return any(
                conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port
                for proc in (server, *server.children(recursive=True))
                for conn in proc.net_connections(kind="tcp")
            )
        except psutil.Error:
            return True  # cannot tell (no permission, already gone): trust the connection, as the hub would

    async def _wait_listening(self, ip: str, port: int) -> bool:
        """Return as soon as the server accepts connections, so the hub's first readiness check succeeds.

        Polls every ``ready_poll_interval`` instead of relying on the hub's back-off (random waits up to 0.2 s,
        0.4 s, 0.8 s ... 5 s between checks): in a 30-user burst the stock hub noticed a listening server 1.3 s
        late at the median, 3.3 s at p95; this leaves ~0.1 s (docs/benchmarks.md). Returns False when another
        process holds the port (a kernel took it between the port's choice and the server's bind): the server
        cannot listen there and the hub would otherwise wait its whole http_timeout on someone else's socket.
        """
        started = time.monotonic()
        deadline = started + self.start_timeout
        while time.monotonic() < deadline:
            if time.monotonic() - started > self.start_slot_hold:
                self._release_start_slot()  # a server this slow must not hold up everyone else's
            if self.proc is not None and self.proc.poll() is not None:
                raise web.HTTPError(
                    500,
                    f"Your server exited while starting (exit code {self.proc.returncode}). "
                    "Try again; if it keeps failing, tell the site administrator (details are in the hub log).",
                )
            try:
                _, writer = await asyncio.open_connection(ip, port)
            except OSError:
                await asyncio.sleep(self.ready_poll_interval)
                continue
            writer.close()
            return await asyncio.to_thread(self._server_listens_on, port)
        return True

    @property
    def _dev_home(self) -> str:
        return os.path.join(self.dev_home_root or "/tmp/atlaslab-homes", self.user.name)

    def get_args(self) -> list[str]:
        args = list(super().get_args())  # a copy: JupyterHub returns self.args itself, which must not grow
        disabled = list(self.disabled_server_extensions)
        if not any(group.name.startswith("course:") for group in self.user.groups):
            disabled += [e for e in self.course_server_extensions if e not in disabled]
        args += [f"--ServerApp.jpserver_extensions={e}=False" for e in disabled]
        args += [f"--ServerApp.jpserver_extensions={e}=True" for e in SERVER_EXTENSIONS]
        args.append(f"--ServerApp.kernel_websocket_connection_class={KERNEL_WEBSOCKET}")
        if self.lab_settings_root:
            # The tenant's language as JupyterLab's default; the user's own choice in their settings still wins.
            lang = language.language_for(
                [g.name for g in self.user.groups], self.tenant_languages, self.default_language
            )
            args.append(f"--LabApp.app_settings_dir={os.path.join(self.lab_settings_root, lang)}")
        return args

    def make_preexec_fn(self, name: str):
        account = getattr(self, "_account", None)
        res = self._resource_limits
        cgroups = list(self._cgroups)
        home = account.pw_dir if account else self._dev_home

        def preexec() -> None:
            # Runs in the child between fork and exec: join the cgroups while still root, then drop to
            # the user's account with rlimits that a user cannot raise.
            limits.join_cgroups(cgroups)
            limits.apply_rlimits(res, per_account=account is not None)
            if account is not None:
                os.setgroups([])
                os.setgid(account.pw_gid)
                os.setuid(account.pw_uid)
            os.umask(0o077)
            os.chdir(home)

        return preexec

    def user_env(self, env: dict) -> dict:
        account = getattr(self, "_account", None)
        env["USER"] = account.pw_name if account else self.user.name
        env["HOME"] = account.pw_dir if account else self._dev_home
        env["SHELL"] = "/bin/bash"
        return env

    async def stop(self, now: bool = False):
        self._stopping = True
        try:
            await super().stop(now=now)
        finally:
            self._stopping = False
        await asyncio.to_thread(self._release_compute)
        if self.isolation == "system-users":
            await asyncio.to_thread(self._reap_cgroup)

    def _reap_cgroup(self) -> None:
        """Kernels and strays that survived the server die with it, then its cgroup goes."""
        name = self._cgroup_name
        dirs = [d for d in [limits.CGROUP_ROOT / limits.PARENT / name] if d.is_dir()] or [
            limits.CGROUP_ROOT / c / limits.PARENT / name for c in ("pids",)
        ]
        for pid in limits.cgroup_pids(dirs):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        deadline = time.monotonic() + 5
        while limits.cgroup_pids(dirs) and time.monotonic() < deadline:
            time.sleep(0.05)
        limits.remove_cgroup(name)

    @default("cmd")
    def _default_cmd(self):
        return [SINGLEUSER]


def _gpu_share(env: dict) -> float:
    """GPUs a server of ``env`` counts for: whole GPUs, 1 for a MIG slice, 1/N for a seat on a shared GPU."""
    gpu = env.get("gpu") or {}
    if gpu.get("count"):
        return float(gpu["count"])
    if gpu.get("mig"):
        return 1.0
    if gpu.get("shared"):
        return 1.0 / float(gpu["shared"])
    return 0.0


def _resources(env: dict) -> str:
    parts = [f"{env['cpu']:g} CPU", f"{format_size(int(env['memory']))}B RAM"]
    gpu = env.get("gpu") or {}
    if gpu.get("count"):
        parts.append(f"{gpu['count']} GPU")
    elif gpu.get("mig"):
        parts.append(f"GPU slice {gpu['mig']}")
    elif gpu.get("shared"):
        parts.append(f"shared GPU (1/{gpu['shared']})")
    return ", ".join(parts)
