"""A student's whole path through a real hub: sign up, approval, login form, profile form, code, stop."""

from __future__ import annotations

import pytest
from harness import Browser, Workbench, run_code, unique, wait_server, write_site

SITE = {
    "login": [{"provider": "native", "tenant": "school"}],
    "tenants": {
        "school": {"title": "School", "environments": ["cpu-small"]},
        "lab": {"title": "Lab", "environments": ["cpu-large"]},
    },
    "environments": {
        "cpu-small": {"title": "CPU small", "cpu": 1, "memory": "1G", "default": True},
        "cpu-large": {"title": "CPU large", "cpu": 2, "memory": "2G"},
    },
}


@pytest.fixture(scope="module")
def workbench(tmp_path_factory):
    wb = Workbench(write_site(tmp_path_factory.mktemp("e2e"), SITE)).start()
    yield wb
    wb.stop()


def test_signup_login_spawn_run_stop(workbench: Workbench):
    name = unique("stu")
    student = Browser(workbench)
    r = student.signup(name, "correct-horse-battery-9")
    assert r.status_code == 200
    # Not approved yet: the login form refuses.
    student.login(name, "correct-horse-battery-9")
    assert student.logged_in_as() is None

    admin = Browser(workbench)
    admin.login("admin", workbench.secret("initial-admin-password"))
    assert admin.logged_in_as() == "admin"
    assert admin.http.get(f"/hub/authorize/{name}").status_code == 200

    student.login(name, "correct-horse-battery-9")
    assert student.logged_in_as() == name
    # The provider's default tenant was applied at login.
    assert "tenant:school" in student.api("GET", f"/users/{name}").json()["groups"]

    form = student.spawn_form()
    assert 'value="cpu-small"' in form and 'value="cpu-large"' not in form
    student.spawn("cpu-small")
    server = wait_server(workbench, name)
    assert server["user_options"] == {"environment": "cpu-small"}

    token = student.token()
    out = run_code(
        workbench, name, token, "import os, getpass; print(getpass.getuser(), os.environ['ATLASLAB_ENVIRONMENT'])"
    )
    assert out.split() == [f"jupyter-{name}" if _root() else _me(), "cpu-small"]

    assert student.api("DELETE", f"/users/{name}/server").status_code in (202, 204)
    with workbench.admin_api() as api:
        for _ in range(100):
            if not api.get(f"/users/{name}").json()["servers"]:
                break
            import time

            time.sleep(0.1)
        assert api.get(f"/users/{name}").json()["servers"] == {}


def _root() -> bool:
    import os

    return os.geteuid() == 0


def _me() -> str:
    import getpass

    return getpass.getuser()
