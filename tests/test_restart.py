"""Restarting the hub keeps users, groups and running servers, and the servers stay reachable."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3

import httpx
from harness import Browser, Workbench, run_code, wait_server, write_site

SITE = {
    "login": [{"provider": "shared-password", "password": {"file": "workshop-password"}}],
    "tenants": {"school": {"title": "School", "environments": ["cpu-small"]}},
    "environments": {"cpu-small": {"cpu": 1, "memory": "1G", "default": True}},
    "courses": {"c1": {"title": "C1", "tenant": "school", "instructors": ["teach"], "students": ["amina"]}},
}


def _table_counts(db_path) -> dict[str, int]:
    db = sqlite3.connect(db_path)
    try:
        return {t: db.execute(f"select count(*) from {t}").fetchone()[0] for t in ("users", "groups", "spawners")}
    finally:
        db.close()


def test_hub_restart_and_workbench_restart_keep_running_servers(tmp_path):
    (tmp_path / "site").mkdir()
    secret = tmp_path / "site" / "workshop-password"
    secret.write_text("a-shared-workshop-password\n")
    secret.chmod(0o600)
    wb = Workbench(write_site(tmp_path / "site", SITE)).start("--keep-servers")
    pid = None
    try:
        amina = Browser(wb)
        amina.login("amina", "a-shared-workshop-password")
        assert amina.logged_in_as() == "amina"
        amina.spawn()
        before = wait_server(wb, "amina")
        token = amina.token()
        pid = int(run_code(wb, "amina", token, "import os; print(os.getppid())"))
        counts = _table_counts(wb.state / "jupyterhub.sqlite")

        # 1. Only the hub restarts (SIGHUP to `atlaslab up`).
        wb.restart_hub()
        _assert_still_serving(wb, amina, token, pid, before)
        assert _table_counts(wb.state / "jupyterhub.sqlite") == counts

        # 2. The whole workbench stops leaving servers running (an upgrade), then starts again.
        assert wb.stop() == 0
        os.kill(pid, 0)  # the server process survived
        wb.start("--keep-servers")
        _assert_still_serving(wb, amina, token, pid, before)
        with wb.admin_api() as api:
            groups = api.get("/users/amina").json()["groups"]
        assert "course:c1:students" in groups and "tenant:school" in groups
    finally:
        wb.stop()
        if pid:  # started with --keep-servers: the server outlives the workbench unless stopped here
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def _assert_still_serving(wb: Workbench, amina: Browser, token: str, pid: int, before: dict) -> None:
    after = wait_server(wb, "amina")
    assert after["started"] == before["started"]
    r = httpx.get(f"{wb.url}/user/amina/api/status", headers={"Authorization": f"token {token}"})
    assert r.status_code == 200
    assert int(run_code(wb, "amina", token, "import os; print(os.getppid())")) == pid
    assert amina.logged_in_as() == "amina"  # cookies stay valid: the cookie secret was kept
