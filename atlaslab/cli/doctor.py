"""`atlaslab doctor`: check what the workbench needs on this machine and say how to fix what is wrong."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from atlaslab.cli.supervisor import _port_free, find_proxy, read_pid
from atlaslab.config import ConfigError, load
from atlaslab.core import cgroups
from atlaslab.core.state import StateDir


def run(config: Path | None, out: Console) -> int:
    failures = 0

    def report(ok: bool | None, what: str, detail: str) -> None:
        nonlocal failures
        mark = {True: "[green]ok[/green]  ", False: "[red]FAIL[/red]", None: "[yellow]warn[/yellow]"}[ok]
        out.print(f"{mark} {what}: {detail}", soft_wrap=True)
        failures += ok is False

    try:
        loaded = load(config)
        report(True, "config", f"{loaded.label} is valid")
    except ConfigError as e:
        for p in e.problems:
            report(False, "config", str(p))
        return 2
    site = loaded.site.site
    state = StateDir(loaded.state_dir)

    node = shutil.which("node")
    if node:
        version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
        major = int(version.lstrip("v").split(".")[0] or 0)
        report(major >= 18, "node", f"{version} at {node}" + ("" if major >= 18 else "; Node 18 or newer is needed"))
    else:
        report(False, "node", "not found; install Node.js 18+ (apt-get install nodejs npm)")
    chp = find_proxy(state)
    report(
        True if chp else None,
        "proxy",
        str(chp) if chp else "configurable-http-proxy not installed yet; `atlaslab up` installs it with npm",
    )

    proxy_pid = read_pid(state.run_dir / "proxy.pid")
    for name, host, port in (
        ("public port", site.bind_host, site.bind_port),
        ("proxy API port", "127.0.0.1", site.proxy_api_port),
        ("hub port", "127.0.0.1", site.hub_port),
    ):
        free = _port_free(host, port)
        if free:
            report(True, name, f"{host}:{port} is free")
        elif proxy_pid:
            report(True, name, f"{host}:{port} is in use by the running workbench")
        else:
            report(False, name, f"{host}:{port} is in use by another program; free it or change the site config")

    if state.root.exists():
        mode = stat.S_IMODE(state.root.stat().st_mode)
        report(
            mode & 0o077 == 0,
            "state dir",
            f"{state.root} mode {mode:o}" + ("" if mode & 0o077 == 0 else f"; run chmod 700 {state.root}"),
        )
        loose = [p.name for p in state.secrets_dir.glob("*") if stat.S_IMODE(p.stat().st_mode) & 0o077]
        report(
            not loose,
            "secrets",
            "all mode 0600"
            if not loose
            else f"readable by others: {', '.join(loose)}; run chmod 600 {state.secrets_dir}/*",
        )
    else:
        report(True, "state dir", f"{state.root} will be created at first start")

    if os.geteuid() == 0:
        mode = cgroups.cgroup_mode()
        report(
            True if mode != "none" else None,
            "isolation",
            f"root: one system account per user; memory/CPU limits through cgroup {mode}"
            if mode != "none"
            else "root, but no writable cgroups: only process-count limits apply",
        )
        singleuser = Path(sys.executable).with_name("jupyterhub-singleuser")
        walk = [p for p in [*reversed(singleuser.parents)] if p != Path("/")]
        closed = [str(p) for p in walk if p.exists() and not stat.S_IMODE(p.stat().st_mode) & 0o005]
        report(
            not closed,
            "user access to Python",
            "users' servers can run " + str(singleuser)
            if not closed
            else f"system users cannot enter {', '.join(closed)}; install AtlasLab outside private directories "
            "(e.g. /opt/atlaslab) or chmod o+rx them",
        )
    else:
        report(None, "isolation", "not root: development mode, all servers run as this account (no isolation)")

    from atlaslab.compute import gpus

    inventory = gpus.detect()
    gpu_envs = [k for k, e in loaded.site.environments.items() if e.gpu]
    detail = inventory.reason + "".join(f"\n      GPU {g.index}: {g.name} {g.uuid}" for g in inventory.gpus)
    report(
        True if inventory or not gpu_envs else None,
        "GPUs",
        detail
        + (f"; GPU environments ({', '.join(gpu_envs)}) cannot start here" if gpu_envs and not inventory else ""),
    )
    out.print("All checks passed." if not failures else f"{failures} check(s) failed.")
    return 1 if failures else 0
