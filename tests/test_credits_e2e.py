"""GPUs and credits through the real hub: injected GPUs handed out by UUID, budgets checked at spawn and while
servers run (warned, then stopped), usage kept across a hub restart, and the usage report adding up.

Budgets here are tiny (seconds of CPU) so real time plays the part of a month; the ledger's own arithmetic over
periods is tested with a controllable clock in test_credits_unit.py.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from harness import Browser, Workbench, logged_in, run_code, unique, wait_server, write_site

pytestmark = pytest.mark.root
PASSWORD = "credits-workshop-password"
GPUS = [{"uuid": "GPU-11111111-test", "name": "Test GPU", "memory": 16 * 1024**3},
        {"uuid": "GPU-22222222-test", "name": "Test GPU", "memory": 16 * 1024**3}]  # fmt: skip
# Fresh names: homes outlive a test's hub.
G1, G2, G3, R1 = unique("gpu1-"), unique("gpu2-"), unique("gpu3-"), unique("rnd1-")
# 0.003 CPU-hours = 10.8 s of one CPU.
BUDGET = 0.003


def site() -> dict:
    return {
        "login": [{"provider": "shared-password", "password": {"env": "ATLASLAB_TEST_CREDITS_PASSWORD"}}],
        "tenants": {"startup": {"title": "Startup", "environments": ["cpu-small", "gpu-one"]}},
        "environments": {
            "cpu-small": {"title": "CPU small", "cpu": 1, "memory": "1G", "default": True},
            "gpu-one": {"title": "One GPU", "cpu": 1, "memory": "1G", "gpu": {"count": 1}},
        },
        "teams": {
            "lab": {"tenant": "startup", "members": [G1, G2, G3]},
            "research": {"tenant": "startup", "members": [R1]},
        },
        "credits": {
            "teams": {"research": {"cpu_hours": BUDGET, "period": "month"}},
            "warn_at": [0.5],
            "grace": "3s",
            "check_every": "1s",
        },
    }


@pytest.fixture(scope="module")
def wb(tmp_path_factory):
    directory = tmp_path_factory.mktemp("credits")
    inventory = directory / "gpus.json"
    inventory.write_text(json.dumps(GPUS))
    os.chmod(directory, 0o755)
    os.environ["ATLASLAB_TEST_CREDITS_PASSWORD"] = PASSWORD
    os.environ["ATLASLAB_GPU_INVENTORY"] = str(inventory)
    wb = Workbench(write_site(directory, site())).start()
    yield wb
    wb.stop()
    os.environ.pop("ATLASLAB_GPU_INVENTORY", None)


def login(wb: Workbench, name: str) -> Browser:
    return logged_in(wb, name, PASSWORD)


def start(b: Browser, name: str, environment: str) -> httpx.Response:
    return b.api("POST", f"/users/{name}/server", json={"environment": environment})


def env_of(wb: Workbench, b: Browser, name: str) -> dict:
    wait_server(wb, name, timeout=120)
    out = run_code(wb, name, b.token(), "import os, json; print(json.dumps(dict(os.environ)))")
    return json.loads(out)


CREDITS_FROM_SERVER = """
import os, json, urllib.request
req = urllib.request.Request(os.environ["ATLASLAB_CREDITS_URL"] + "api/v1/me",
                             headers={"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]})
print(urllib.request.urlopen(req).read().decode())
"""


def credits_of(wb: Workbench, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"token {token}"} if token else {}
    return httpx.get(f"{wb.url}/services/credits/api/v1/me", headers=headers, timeout=30)


def test_gpus_are_handed_out_by_uuid_and_come_back(wb):
    b1, b2, b3 = login(wb, G1), login(wb, G2), login(wb, G3)
    assert start(b1, G1, "gpu-one").status_code in (201, 202)
    assert start(b2, G2, "gpu-one").status_code in (201, 202)
    e1, e2 = env_of(wb, b1, G1), env_of(wb, b2, G2)
    assert {e1["CUDA_VISIBLE_DEVICES"], e2["CUDA_VISIBLE_DEVICES"]} == {g["uuid"] for g in GPUS}
    # Each user's session reads its own GPUs from the credits service, with the server's own token.
    metrics = httpx.get(f"{wb.url}/hub/metrics", headers={"Authorization": f"token {wb.secret('metrics-token')}"})
    assert "atlaslab_gpus_assigned 2.0" in metrics.text
    out = run_code(wb, G1, b1.token(), CREDITS_FROM_SERVER)
    assert json.loads(out)["gpus"] == [e1["CUDA_VISIBLE_DEVICES"]] and json.loads(out)["user"] == G1
    assert e1["NVIDIA_VISIBLE_DEVICES"] == e1["CUDA_VISIBLE_DEVICES"]
    # Both GPUs are taken: the third user is told at once, with what they can do instead.
    began = time.monotonic()
    r = start(b3, G3, "gpu-one")
    assert r.status_code == 503, r.text
    message = r.json()["message"]
    assert "No GPU is free for 1 whole GPU: 2 of 2 GPUs are in use" in message and "'CPU small'" in message
    assert time.monotonic() - began < 10
    # A CPU environment sees no GPU.
    assert start(b3, G3, "cpu-small").status_code in (201, 202)
    e3 = env_of(wb, b3, G3)
    assert e3["CUDA_VISIBLE_DEVICES"] == "" and e3["NVIDIA_VISIBLE_DEVICES"] == "none"
    assert b3.api("DELETE", f"/users/{G3}/server").status_code in (202, 204)
    # G1 stops: its GPU goes to G3.
    assert b1.api("DELETE", f"/users/{G1}/server").status_code in (202, 204)
    _wait_stopped(wb, G1)
    _wait_stopped(wb, G3)
    assert start(b3, G3, "gpu-one").status_code in (201, 202)
    assert env_of(wb, b3, G3)["CUDA_VISIBLE_DEVICES"] == e1["CUDA_VISIBLE_DEVICES"]
    for b, name in ((b2, G2), (b3, G3)):
        b.api("DELETE", f"/users/{name}/server")


def _wait_stopped(wb: Workbench, name: str, timeout: float = 60) -> dict:
    with wb.admin_api() as api:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = api.get(f"/users/{name}").json()
            if not model.get("servers") and not model.get("pending"):
                return model
            time.sleep(0.3)
    raise TimeoutError(f"{name}'s server did not stop\n{wb.log()}")


def test_a_budget_warns_then_stops_then_refuses_and_survives_a_restart(wb):
    b = login(wb, R1)
    assert start(b, R1, "cpu-small").status_code in (201, 202)
    wait_server(wb, R1, timeout=120)
    started = time.monotonic()
    # 10.8 s of budget, a warning at half, a stop 3 s after it is used up.
    _wait_stopped(wb, R1, timeout=90)
    ran = time.monotonic() - started
    assert 9 < ran < 40, ran
    log = (wb.state / "logs" / "hub.log").read_text()
    assert "50% of the budget of team research" in log and "Stopping" in log
    # Starting again is refused with the budget and its renewal date.
    r = start(b, R1, "cpu-small")
    assert r.status_code == 403, r.text
    message = r.json()["message"]
    assert "No credit left in the budget of team research" in message and "it renews on" in message
    # The session's view: the budget used up, the warning, the notice before the stop, and the stop.
    mine = credits_of(wb, b.token()).json()
    [budget] = mine["budgets"]
    assert (budget["scope"], budget["name"], budget["kind"], budget["remaining"]) == ("team", "research", "cpu", 0)
    assert [n["level"] for n in mine["notices"]] == ["warning", "stop", "stopped"], mine["notices"]
    assert credits_of(wb, None).status_code == 401
    # Prometheus sees the budget (with the site's scrape token only).
    metrics = httpx.get(f"{wb.url}/hub/metrics", headers={"Authorization": f"token {wb.secret('metrics-token')}"})
    line = next(x for x in metrics.text.splitlines() if x.startswith("atlaslab_budget_used_ratio{") and "research" in x)
    assert float(line.rsplit(" ", 1)[1]) >= 1.0, line
    assert httpx.get(f"{wb.url}/hub/metrics").status_code == 403
    assert credits_of(wb, login(wb, G1).token()).json()["budgets"] == []  # G1's team has no budget; R1's unseen
    # The hub restarts; the usage is still there, so is the refusal.
    wb.restart_hub()
    b = login(wb, R1)
    r = start(b, R1, "cpu-small")
    assert r.status_code == 403 and "No credit left" in r.json()["message"]
    # The report adds up: the team's CPU-hours are at least the budget and equal the user's (one member).
    out = subprocess.run(
        [sys.executable, "-m", "atlaslab.cli", "usage", "report", "--csv", "--config", str(wb.config)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = {(row["scope"], row["name"]): row for row in csv.DictReader(io.StringIO(out))}
    team, user = rows[("team", "research")], rows[("user", R1)]
    assert float(team["cpu_hours"]) == pytest.approx(float(user["cpu_hours"]))
    assert BUDGET <= float(team["cpu_hours"]) < BUDGET * 4
    tenant = rows[("tenant", "startup")]
    assert float(tenant["cpu_hours"]) >= float(team["cpu_hours"])
