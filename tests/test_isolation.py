"""Attacks by one student on another, on the hub and on the machine. Each test fails if the attack works.

Runs as root, as a real site does: each student has a system account, a private home and limits.
"""

from __future__ import annotations

import json
import textwrap
import time

import httpx
import pytest
from harness import Browser, Workbench, run_code, unique, wait_server, write_site

pytestmark = pytest.mark.root

SITE = {
    "login": [{"provider": "native", "tenant": "school"}],
    "tenants": {
        "school": {"title": "School", "environments": ["cpu-small"]},
        "lab": {"title": "Lab", "environments": ["cpu-large"]},
    },
    "environments": {
        "cpu-small": {"cpu": 1, "memory": "512M", "processes": 64, "default": True},
        "cpu-large": {"cpu": 2, "memory": "2G"},
    },
}
PASSWORD = "long-enough-password-1"


class Student:
    def __init__(self, wb: Workbench, admin: Browser):
        self.name = unique("iso")
        self.browser = Browser(wb)
        self.browser.signup(self.name, PASSWORD)
        admin.http.get(f"/hub/authorize/{self.name}")
        self.browser.login(self.name, PASSWORD)
        assert self.browser.logged_in_as() == self.name
        self.token = self.browser.token()
        self.wb = wb

    def api(self, method: str, path: str, **kw) -> httpx.Response:
        return httpx.request(method, f"{self.wb.api}{path}", headers={"Authorization": f"token {self.token}"}, **kw)

    def run(self, code: str) -> str:
        return run_code(self.wb, self.name, self.token, textwrap.dedent(code))


@pytest.fixture(scope="module")
def wb(tmp_path_factory):
    wb = Workbench(write_site(tmp_path_factory.mktemp("iso"), SITE)).start()
    yield wb
    wb.stop()


@pytest.fixture(scope="module")
def admin(wb):
    b = Browser(wb)
    b.login("admin", wb.secret("initial-admin-password"))
    assert b.logged_in_as() == "admin"
    return b


@pytest.fixture(scope="module")
def alice(wb, admin):
    s = Student(wb, admin)
    s.browser.spawn("cpu-small")
    wait_server(wb, s.name)
    return s


@pytest.fixture(scope="module")
def bob(wb, admin):
    s = Student(wb, admin)
    s.browser.spawn("cpu-small")
    wait_server(wb, s.name)
    s.run("open('secret.txt', 'w').write('bob-private-notes')")
    return s


def test_cannot_reach_another_students_server_through_the_proxy(alice, bob, wb):
    # With a token.
    r = httpx.get(f"{wb.url}/user/{bob.name}/api/contents", headers={"Authorization": f"token {alice.token}"})
    assert r.status_code == 403
    # With a browser session: the hub refuses to hand out a login to bob's server.
    r = alice.browser.http.get(f"/user/{bob.name}/api/contents")
    assert "bob-private-notes" not in r.text
    assert r.status_code in (403, 404) or "/hub/login" in str(r.url) or r.status_code >= 400
    # Creating a kernel on bob's server.
    r = httpx.post(f"{wb.url}/user/{bob.name}/api/kernels", headers={"Authorization": f"token {alice.token}"})
    assert r.status_code == 403


def test_cannot_reach_another_students_server_port_directly(alice, bob, wb):
    with wb.admin_api() as api:
        url = api.get(f"/users/{bob.name}").json()["servers"][""]["url"]
        state = api.get(f"/users/{bob.name}", params={"include_stopped_servers": 1}).json()
    assert state
    port = _server_port(wb, bob.name)
    out = alice.run(f"""
        import urllib.request, urllib.error
        for path in ("{url}api/contents", "{url}api/contents/secret.txt"):
            try:
                print(urllib.request.urlopen("http://127.0.0.1:{port}" + path, timeout=5).status)
            except urllib.error.HTTPError as e:
                print(e.code)
    """)
    codes = out.split()
    assert codes and all(c in ("403", "401", "302") for c in codes), out


def test_cannot_read_another_students_home(alice, bob):
    out = alice.run(f"""
        import os
        for action in (lambda: os.listdir('/home/jupyter-{bob.name}'),
                       lambda: open('/home/jupyter-{bob.name}/secret.txt').read()):
            try:
                print('LEAK', action())
            except PermissionError:
                print('denied')
    """)
    assert out.split() == ["denied", "denied"], out


def test_cannot_start_a_forbidden_environment(wb, admin):
    eve = Student(wb, admin)
    # Crafted form POST naming an environment her tenant does not allow.
    page = eve.browser.http.get("/hub/spawn").text
    assert 'value="cpu-large"' not in page
    r = eve.browser.spawn("cpu-large")
    assert r.status_code == 403
    assert "cpu-large" in r.text and "cpu-small" in r.text
    # Straight to the REST API.
    r = eve.api("POST", f"/users/{eve.name}/server", json={"environment": "cpu-large"})
    assert r.status_code == 403
    # An environment that does not exist.
    r = eve.api("POST", f"/users/{eve.name}/server", json={"environment": "../../etc"})
    assert r.status_code == 400
    with wb.admin_api() as api:
        assert api.get(f"/users/{eve.name}").json()["servers"] == {}


def test_token_cannot_list_or_modify_other_users(alice, bob):
    assert alice.api("GET", "/users").status_code == 403
    assert alice.api("GET", f"/users/{bob.name}").status_code in (403, 404)
    assert alice.api("DELETE", f"/users/{bob.name}/server").status_code in (403, 404)
    assert alice.api("POST", f"/users/{bob.name}/server").status_code in (403, 404)
    assert alice.api("DELETE", f"/users/{bob.name}").status_code in (403, 404)
    assert alice.api("POST", f"/users/{bob.name}/tokens", json={}).status_code in (403, 404)
    assert alice.api("PATCH", f"/users/{alice.name}", json={"admin": True}).status_code == 403
    assert alice.api("POST", "/groups/tenant:lab/users", json={"users": [alice.name]}).status_code in (403, 404)
    assert alice.api("GET", "/groups").status_code == 403
    assert alice.api("POST", "/users/mallory").status_code == 403
    assert alice.api("GET", f"/users/{alice.name}").json()["admin"] is False


def test_cannot_read_the_hubs_secrets_or_database(alice, wb):
    state = wb.state.resolve()
    out = alice.run(f"""
        import os
        for path in ("{state}/secrets/cookie-secret", "{state}/secrets/proxy-token",
                     "{state}/jupyterhub.sqlite", "{state}/secrets/initial-admin-password"):
            try:
                print('LEAK', open(path, 'rb').read()[:8])
            except PermissionError:
                print('denied')
        print(repr(dict(os.environ)))
    """)
    assert out.split("\n")[:4] == ["denied"] * 4, out
    for name in ("cookie-secret", "proxy-token", "crypt-key", "cli-token"):
        assert wb.secret(name) not in out


def test_metrics_need_the_scrape_token(alice, wb):
    assert httpx.get(f"{wb.url}/hub/metrics").status_code in (401, 403)
    assert alice.api("GET", "/../metrics").status_code in (401, 403, 404)
    r = httpx.get(f"{wb.url}/hub/metrics", headers={"Authorization": f"token {alice.token}"})
    assert r.status_code == 403
    r = httpx.get(f"{wb.url}/hub/metrics", headers={"Authorization": f"token {wb.secret('metrics-token')}"})
    assert r.status_code == 200 and "jupyterhub_" in r.text


def test_limits_apply_to_server_and_kernels(alice):
    out = alice.run("""
        import resource, json
        print(json.dumps({"nproc": resource.getrlimit(resource.RLIMIT_NPROC)[0],
                          "cgroup": open('/proc/self/cgroup').read()}))
    """)
    info = json.loads(out)
    assert info["nproc"] == 64
    assert f"atlaslab/jupyter-{alice.name}" in info["cgroup"]


def test_fork_bomb_is_contained(alice):
    out = alice.run("""
        import subprocess
        procs, refused = [], 0
        for _ in range(150):
            try:
                procs.append(subprocess.Popen(['sleep', '30']))
            except OSError:
                refused += 1
        for p in procs:
            p.kill(); p.wait()
        print(len(procs), refused)
    """)
    started, refused = map(int, out.split())
    assert started < 64 and refused > 0, out


def test_memory_hog_is_killed_not_the_hub(alice, wb):
    base = f"{wb.url}/user/{alice.name}/api"
    headers = {"Authorization": f"token {alice.token}"}
    kid = httpx.post(f"{base}/kernels", headers=headers, json={"name": "python3"}).json()["id"]
    import websocket
    from harness import KernelDied, execute

    ws = websocket.create_connection(
        f"{base.replace('http', 'ws', 1)}/kernels/{kid}/channels",
        header=[f"Authorization: token {alice.token}"],
        timeout=60,
    )
    try:
        with pytest.raises(KernelDied):
            execute(ws, "x = bytearray(1500 * 1024 * 1024); x[::4096] = b'1' * len(x[::4096]); print('survived')", 60)
    finally:
        ws.close()
    # The kernel was killed by the memory limit; the hub, proxy and server still answer.
    time.sleep(1)
    assert httpx.get(f"{wb.api}/").status_code == 200
    assert httpx.get(f"{base}/status", headers=headers).status_code == 200
    assert "survived" not in alice.run("print('ok')") and alice.run("print('ok')").strip() == "ok"


def _server_port(wb: Workbench, user: str) -> int:
    import sqlite3

    db = sqlite3.connect(wb.state / "jupyterhub.sqlite")
    try:
        (port,) = db.execute(
            "select servers.port from servers join spawners on spawners.server_id = servers.id "
            "join users on users.id = spawners.user_id where users.name = ?",
            (user,),
        ).fetchone()
    finally:
        db.close()
    return port
