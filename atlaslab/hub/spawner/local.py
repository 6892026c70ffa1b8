"""The local spawner: one system account per user, the chosen environment's limits, fast readiness.

It extends JupyterHub's LocalProcessSpawner rather than replacing it, adding what a shared lab machine needs: a
profile menu filtered by the user's groups, the choice re-checked and applied in ``apply_user_options`` when the
spawn request arrives (as JupyterHub intends), per-user accounts and private homes, cgroup/rlimit limits covering
the server and its kernels, and a readiness wait that returns as soon as the server listens. ``start()`` hands the
server's budget (:mod:`.budget`), its GPUs (:mod:`.gpus`) and its place in a burst of starts (:mod:`.slots`) to
small objects of their own.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from jupyterhub.spawner import LocalProcessSpawner
from jupyterhub.utils import random_port
from tornado import web
from traitlets import Any as AnyTrait
from traitlets import Dict, Float, Integer, List, Unicode, default

from atlaslab.compute.credits import Charge
from atlaslab.config.schema import Environment
from atlaslab.core import accounts, cgroups
from atlaslab.core.membership import Membership, allowed_environments
from atlaslab.workbench import language
from atlaslab.workbench.serverconfig import KERNEL_WEBSOCKET, SERVER_EXTENSIONS

from . import form
from .budget import ServerBudget
from .gpus import ServerGpus
from .slots import StartSlot

SINGLEUSER = str(Path(sys.executable).with_name("jupyterhub-singleuser"))


def _apply_environment(spawner: AtlasLabSpawner, user_options: dict) -> None:
    # Runs when the spawn request arrives, before anything starts: a forbidden choice is a 403 at once.
    spawner.apply_environment(spawner.chosen_environment())


class AtlasLabSpawner(LocalProcessSpawner):
    environments = Dict(
        value_trait=AnyTrait(),
        help="Environment id -> atlaslab.config.schema.Environment (title, limits, GPUs), in the site's order.",
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
        help="Directory of JupyterLab settings directories, one per language (atlaslab/workbench/language.py); empty:"
        " the server's own language default."
    ).tag(config=True)
    tenant_languages = Dict(help="Tenant -> default JupyterLab language of its users (en, fr, ar).").tag(config=True)
    default_language = Unicode("en", help="Default JupyterLab language of users whose tenant sets none.").tag(
        config=True
    )
    credits = AnyTrait(
        None, allow_none=True, help="The site's `credits` section (atlaslab.config.schema.Credits)."
    ).tag(config=True)

    # The environment applied to this server (from the user's options); kept in the hub's state across restarts.
    environment_key = Unicode("")
    gpu_uuids = List(Unicode())

    # ---- which environments, and the form -------------------------------------------------------------------

    @property
    def membership(self) -> Membership:
        return Membership.of(g.name for g in self.user.groups)

    def allowed(self) -> list[str]:
        groups = [g.name for g in self.user.groups]
        return allowed_environments(
            self.environments, self.access_rules, groups, admin=self.user.admin, fallback=self.fallback_environments
        )

    def _default_choice(self, allowed: list[str]) -> str | None:
        return next((k for k in allowed if self.environments[k].default), allowed[0] if allowed else None)

    @default("apply_user_options")
    def _apply_user_options_default(self):
        return _apply_environment

    @default("options_form")
    def _options_form_default(self):
        return self.render_form

    def render_form(self, spawner: AtlasLabSpawner) -> str:
        allowed = self.allowed()
        return form.render(self.environments, allowed, self._default_choice(allowed))

    def options_from_form(self, formdata: dict) -> dict:
        values = formdata.get("environment") or [""]
        return {"environment": values[0]}

    def chosen_environment(self) -> str:
        """The environment to start, checked against what this user may start (never trust the form)."""
        allowed = self.allowed()
        requested = (self.user_options or {}).get("environment") or self._default_choice(allowed)
        listing = ", ".join(allowed) or "none"
        if not requested or requested not in self.environments:
            raise web.HTTPError(400, f"Unknown environment {requested!r}. You may start: {listing}.")
        if requested not in allowed:
            raise web.HTTPError(
                403, f"You may not start the environment '{requested}'. Environments open to you: {listing}."
            )
        return requested

    def apply_environment(self, key: str) -> None:
        env: Environment = self.environments[key]
        self.environment_key = key
        self.mem_limit = int(env.memory)
        self.cpu_limit = float(env.cpu)

    @property
    def chosen(self) -> Environment:
        return self.environments[self.environment_key]

    def charge(self) -> Charge:
        """Who pays for this server, and what it holds."""
        env = self.environments.get(self.environment_key)
        return Charge.of(self.user.name, self.membership, self.environment_key, env)

    # ---- state kept by the hub ----------------------------------------------------------------------------

    def get_state(self) -> dict:
        state = super().get_state()
        if self.environment_key:
            state["environment"] = self.environment_key
        if self.gpu_uuids:
            state["gpus"] = list(self.gpu_uuids)
        return state

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        if state.get("environment") in self.environments:
            self.apply_environment(state["environment"])
        self.gpu_uuids = list(state.get("gpus") or [])

    def clear_state(self) -> None:
        super().clear_state()
        self.gpu_uuids = []

    # ---- starting -----------------------------------------------------------------------------------------

    @property
    def _holder(self) -> str:
        return f"{self.user.name}/{self.name}"

    @property
    def _cgroup_name(self) -> str:
        return accounts.system_username(self.user.name) + (f"-{self.name}" if self.name else "")

    def _budget(self) -> ServerBudget | None:
        return ServerBudget(Path(self.compute_dir), self.credits, self._holder) if self.compute_dir else None

    def _gpus(self) -> ServerGpus:
        return ServerGpus(Path(self.compute_dir or self.dev_home_root), self._holder)

    async def start(self):
        if self.environment_key not in self.environments:
            self.apply_environment(self.chosen_environment())
        key, env, charge = self.environment_key, self.chosen, self.charge()
        budget = self._budget()
        if budget is not None:
            refusal = await asyncio.to_thread(budget.refusal, charge, time.time())
            if refusal:
                raise web.HTTPError(403, refusal)
        self.gpu_uuids = []
        if env.gpu is not None:
            others = {k: self.environments[k] for k in self.allowed()}
            devices = await self._gpus().take(key, env, others)
            self.gpu_uuids = [d.uuid for d in devices]
        try:
            ip_port = await self._start_process(self._limits(env))
        except BaseException:
            await asyncio.to_thread(self._release_compute)
            raise
        await asyncio.to_thread(self._record_start, charge)
        return ip_port

    @staticmethod
    def _limits(env: Environment) -> cgroups.ResourceLimits:
        return cgroups.ResourceLimits(memory=int(env.memory), cpu=float(env.cpu), processes=int(env.processes))

    async def _start_process(self, res: cgroups.ResourceLimits):
        pick_port = self.port == 0
        if self.isolation == "system-users":
            self._account = await asyncio.to_thread(accounts.ensure_account, self.user.name, Path(self.home_root))
            self._cgroups = await asyncio.to_thread(cgroups.prepare, self._cgroup_name, res)
        else:
            self._account = None
            self._cgroups = []
            Path(self._dev_home).mkdir(parents=True, exist_ok=True, mode=0o700)
        self._resource_limits = res
        slot = StartSlot()
        await slot.acquire(self.start_concurrency)
        try:
            for _ in range(3):
                if pick_port:
                    # Chosen now, not before the wait: a port picked seconds earlier is often taken meanwhile.
                    self.port = random_port()
                ip, port = await super().start()
                if await self._wait_listening(ip, port, slot):
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
            slot.release()

    def _record_start(self, charge: Charge) -> None:
        if self.gpu_uuids and self.pid:
            self._gpus().attach(self.pid)
        budget = self._budget()
        if budget is not None:
            budget.started(charge)

    def _release_compute(self) -> None:
        self._gpus().release()
        budget = self._budget()
        if budget is not None:
            budget.stopped()

    def get_env(self) -> dict[str, Any]:
        env = super().get_env()
        env["ATLASLAB_ENVIRONMENT"] = self.environment_key
        if self.gpu_uuids:
            uuids = ",".join(self.gpu_uuids)
            env.update(CUDA_VISIBLE_DEVICES=uuids, NVIDIA_VISIBLE_DEVICES=uuids, ATLASLAB_GPUS=uuids)
        else:
            # The NVIDIA runtime would otherwise show every GPU of the machine to a CPU server.
            env.update(CUDA_VISIBLE_DEVICES="", NVIDIA_VISIBLE_DEVICES="none")
            env.pop("ATLASLAB_GPUS", None)
        return env

    # ---- running --------------------------------------------------------------------------------------------

    async def poll(self):
        status = await super().poll()
        if status is not None:
            await asyncio.to_thread(self._release_compute)
            return status
        # Not while stopping: stop() polls until the process is gone, and a check there would stop again.
        checking = self.credits is not None and self.compute_dir and not getattr(self, "_stopping", False)
        if checking and await self._check_budget():
            return 0
        return None

    async def _check_budget(self) -> bool:
        """Count this server, warn its user at the configured levels, stop it past its grace. True if stopped."""
        budget = self._budget()
        assert budget is not None
        recorded, stop = await asyncio.to_thread(budget.check, self.charge(), time.time())
        for message in recorded:
            self.log.warning("Credits notice for %s: %s", self._log_name, message)
        if stop is None:
            return False
        self.log.warning("Stopping %s: %s", self._log_name, stop.log)
        await asyncio.to_thread(budget.ledger.notify, self.user.name, stop.key, "stopped", stop.message)
        await self.stop(now=True)
        return True

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

    async def _wait_listening(self, ip: str, port: int, slot: StartSlot) -> bool:
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
                slot.release()  # a server this slow must not hold up everyone else's
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
        if not self.membership.courses:
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
        joined = list(self._cgroups)
        home = account.pw_dir if account else self._dev_home

        def preexec() -> None:
            # Runs in the child between fork and exec: join the cgroups while still root, then drop to
            # the user's account with rlimits that a user cannot raise.
            cgroups.join(joined)
            cgroups.apply_rlimits(res, per_account=account is not None)
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
        cgroups.kill_members(cgroups.group_dirs(self._cgroup_name))
        cgroups.remove(self._cgroup_name)

    @default("cmd")
    def _default_cmd(self):
        return [SINGLEUSER]
