"""Talk to the running hub as the `atlaslab-cli` service (its token is in the state dir, readable by root)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from atlaslab.cli.supervisor import read_pid
from atlaslab.config import LoadedConfig
from atlaslab.config.rosters import read_roster
from atlaslab.core.membership import course_group, tenant_group
from atlaslab.core.state import StateDir


def client(loaded: LoadedConfig) -> httpx.Client:
    state = StateDir(loaded.state_dir)
    token_file = state.secret_path("cli-token")
    token = token_file.read_text().strip()
    site = loaded.site.site
    return httpx.Client(
        base_url=f"http://127.0.0.1:{site.hub_port}{site.base_url}hub/api",
        headers={"Authorization": f"token {token}"},
        timeout=30,
    )


def print_status(loaded: LoadedConfig, out: Console) -> int:
    state = StateDir(loaded.state_dir)
    proxy = read_pid(state.run_dir / "proxy.pid")
    hub = read_pid(state.run_dir / "jupyterhub.pid")
    out.print(f"Site:  {loaded.site.site.name} at {loaded.site.site.public_url}/  (config: {loaded.label})")
    out.print(f"State: {state.root}")
    out.print(f"Proxy: {'running, pid ' + str(proxy) if proxy else 'not running'}")
    out.print(f"Hub:   {'running, pid ' + str(hub) if hub else 'not running'}")
    if not hub or not state.secret_path("cli-token").exists():
        return 1
    try:
        with client(loaded) as api:
            users = api.get("/users").raise_for_status().json()
    except (httpx.HTTPError, OSError) as e:
        out.print(f"[red]The hub does not answer its API ({e}).[/red]")
        return 1
    table = Table("user", "admin", "groups", "server", "last activity")
    running = 0
    for user in users:
        server = (user.get("servers") or {}).get("")
        if server:
            running += 1
        table.add_row(
            user["name"],
            "yes" if user.get("admin") else "",
            ", ".join(user.get("groups", [])),
            ("ready" if server.get("ready") else "starting") if server else "",
            user.get("last_activity") or "",
        )
    out.print(table)
    out.print(f"{len(users)} users, {running} servers running")
    return 0


@retry(
    retry=retry_if_exception_type(httpx.TransportError),
    stop=stop_after_attempt(4),
    wait=wait_exponential(multiplier=0.2, max=3),
    reraise=True,
)
def _send(api: httpx.Client, method: str, url: str, **kwargs) -> httpx.Response:
    return api.request(method, url, **kwargs)


def import_roster(loaded: LoadedConfig, roster: Path, course: str, out: Console, err: Console) -> int:
    if course not in loaded.site.courses:
        known = ", ".join(loaded.site.courses) or "none"
        err.print(f"[red]error[/red] unknown course '{course}'; courses in {loaded.label}: {known}")
        return 2
    names, problem = read_roster(roster)
    if problem:
        err.print(f"[red]error[/red] {problem}")
        return 2
    tenant = loaded.site.courses[course].tenant
    groups = [course_group(course, "students"), tenant_group(tenant)]
    try:
        api = client(loaded)
        api.get("/").raise_for_status()
    except (httpx.HTTPError, OSError) as e:
        err.print(f"[red]error[/red] the hub is not reachable ({e}); start it with `atlaslab up` first")
        return 1
    created = 0
    with contextlib.closing(api), Progress(console=out) as progress:
        task = progress.add_task(f"Adding {len(names)} students to {course}", total=len(names) + len(groups))
        for name in names:
            r = _send(api, "GET", f"/users/{name}")
            if r.status_code == 404:
                _send(api, "POST", f"/users/{name}").raise_for_status()
                created += 1
            progress.advance(task)
        for group in groups:
            if _send(api, "GET", f"/groups/{group}").status_code == 404:
                _send(api, "POST", f"/groups/{group}").raise_for_status()
            _send(api, "POST", f"/groups/{group}/users", json={"users": list(names)}).raise_for_status()
            progress.advance(task)
    out.print(f"{len(names)} students in {course} ({created} new users); groups: {', '.join(groups)}")
    return 0
