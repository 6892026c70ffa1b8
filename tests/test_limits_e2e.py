"""Site limits enforced by the real hub: the most servers at once, and the idle culler service."""

from __future__ import annotations

import time

import httpx
from harness import Browser, Workbench, wait_server, write_site

SITE = {
    "login": [{"provider": "shared-password", "password": {"env": "ATLASLAB_TEST_WORKSHOP_PASSWORD"}}],
    "environments": {"cpu-small": {"cpu": 1, "memory": "1G", "default": True}},
    "limits": {"max_servers": 1, "idle_cull_after": "10s"},
    "spawner": {"isolation": "none"},
}


def test_server_limit_then_idle_culling_frees_the_slot(tmp_path, monkeypatch):
    monkeypatch.setenv("ATLASLAB_TEST_WORKSHOP_PASSWORD", "workshop-password-2026")
    wb = Workbench(write_site(tmp_path, SITE)).start()
    try:
        assert "development mode" in wb.log_text() and "NOT" in wb.log_text()
        first, second = Browser(wb), Browser(wb)
        first.login("nadia", "workshop-password-2026")
        second.login("omar", "workshop-password-2026")
        first.spawn()
        wait_server(wb, "nadia")
        r = second.api("POST", "/users/omar/server")
        assert r.status_code == 429 and "limit" in r.text.lower()

        # Nadia does nothing: the culler (a hub service with its own narrow role) stops her server.
        deadline = time.monotonic() + 60
        with wb.admin_api() as api:
            while api.get("/users/nadia").json()["servers"]:
                assert time.monotonic() < deadline, wb.log()
                time.sleep(0.5)
        assert second.api("POST", "/users/omar/server").status_code in (201, 202)
        wait_server(wb, "omar")
        assert httpx.get(
            f"{wb.url}/user/omar/api/status", headers={"Authorization": f"token {second.token()}"}
        ).is_success
    finally:
        wb.stop()
