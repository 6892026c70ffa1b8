"""The atlaslab command against a running workbench: status, users import, doctor, and `up`'s own errors."""

from __future__ import annotations

import socket
import subprocess

import pytest
from harness import ATLASLAB, ROOT, Workbench, write_site

SITE = {
    "login": [{"provider": "native"}],
    "tenants": {"school": {"title": "School", "environments": ["cpu-small"]}},
    "environments": {"cpu-small": {"cpu": 1, "memory": "1G", "default": True}},
    "courses": {"ml": {"title": "ML", "tenant": "school", "instructors": ["teach"]}},
}


def atlaslab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*ATLASLAB, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def wb(tmp_path_factory):
    wb = Workbench(write_site(tmp_path_factory.mktemp("cli"), SITE)).start()
    yield wb
    wb.stop()


def test_users_import_adds_students_to_the_course(wb, tmp_path):
    roster = tmp_path / "roster.csv"
    roster.write_text("username,name\n" + "".join(f"stud{i},Student {i}\n" for i in range(12)))
    r = atlaslab("users", "import", str(roster), "--course", "ml", "--config", str(wb.config))
    assert r.returncode == 0, r.stderr
    assert "12 students in ml (12 new users)" in r.stdout
    with wb.admin_api() as api:
        group = api.get("/groups/course:ml:students").json()
        assert sorted(group["users"]) == sorted(f"stud{i}" for i in range(12))
        assert "stud3" in api.get("/groups/tenant:school").json()["users"]
    # Importing again changes nothing and creates nobody.
    r = atlaslab("users", "import", str(roster), "--course", "ml", "--config", str(wb.config))
    assert r.returncode == 0 and "(0 new users)" in r.stdout


def test_users_import_rejects_bad_input_clearly(wb, tmp_path):
    roster = tmp_path / "roster.csv"
    roster.write_text("login\nx\n")
    r = atlaslab("users", "import", str(roster), "--course", "ml", "--config", str(wb.config))
    assert r.returncode == 2 and "no 'username' column" in r.stderr and "Traceback" not in r.stderr
    r = atlaslab("users", "import", str(roster), "--course", "nope", "--config", str(wb.config))
    assert r.returncode == 2 and "unknown course 'nope'" in r.stderr


def test_status_lists_hub_proxy_and_users(wb):
    r = atlaslab("status", "--config", str(wb.config))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Proxy: running" in r.stdout and "Hub:   running" in r.stdout
    assert "teach" in r.stdout


def test_doctor_reports_ports_in_use_by_the_workbench(wb):
    r = atlaslab("doctor", "--config", str(wb.config))
    assert "in use by the running workbench" in r.stdout
    assert "config" in r.stdout and "node" in r.stdout and "GPUs" in r.stdout


def test_up_refuses_a_busy_port_with_a_clear_message(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = write_site(tmp_path, {"site": {"bind": f"127.0.0.1:{port}"}})
        r = atlaslab("up", "--config", str(config))
    assert r.returncode == 1
    assert f"port {port}" in r.stderr and "in use" in r.stderr and "Traceback" not in r.stderr


def test_up_refuses_an_invalid_config_before_starting_anything(tmp_path):
    config = tmp_path / "atlaslab.yaml"
    config.write_text("site:\n  bind: nowhere\n")
    r = atlaslab("up", "--config", str(config))
    assert r.returncode == 2
    assert "site.bind" in r.stderr and str(config) in r.stderr
    assert not (tmp_path / "state").exists()


def test_example_site_is_valid():
    r = atlaslab("config", "check", "--config", str(ROOT / "examples" / "atlaslab.yaml"))
    assert r.returncode == 0, r.stderr
    assert "5 tenants" in r.stdout and "2 courses" in r.stdout
