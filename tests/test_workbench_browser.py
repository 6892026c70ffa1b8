"""The workbench panel end to end: Debian's chromium (driven by playwright-core from tests/browser/workbench.js)
against a real hub. Log in, open JupyterLab, open the panel, see the environment, credits and the course's due
dates (released through the exchange), start a Dask cluster and follow its dashboard link, then use the panel
with the keyboard alone, then French and Arabic (right to left); a user of a French-speaking tenant gets
JupyterLab in French without touching a setting, and their own choice of English wins. Screenshots:
test-artifacts/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from harness import Browser, Workbench, logged_in, unique, wait_server, write_site

from atlaslab.grading.exchange.archive import pack_files

pytestmark = [pytest.mark.root, pytest.mark.browser]
REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium")
PASSWORD = "workbench-browser-password"
USER = unique("wbb-")
USER_FR = unique("wbf-")
TEACHER = unique("wbt-")


def site() -> dict:
    return {
        "site": {"languages": ["en", "fr", "ar"]},
        "login": [{"provider": "shared-password", "password": {"env": "ATLASLAB_TEST_WORKBENCH_PASSWORD"}}],
        "environments": {"cpu-two": {"title": "CPU two", "cpu": 2, "memory": "2G", "default": True}},
        # USER's tenant sets no language (the site's first, English); USER_FR's says French.
        "tenants": {
            "lab": {"title": "Lab", "environments": ["cpu-two"], "members": [USER, TEACHER]},
            "ecole": {"title": "École", "environments": ["cpu-two"], "members": [USER_FR], "language": "fr"},
        },
        "courses": {"algebra": {"title": "Algebra", "tenant": "lab", "instructors": [TEACHER], "students": [USER]}},
        "limits": {"idle_cull_after": "2h"},
        "credits": {"default_user": {"cpu_hours": 5, "period": "month"}},
    }


def release(wb: Workbench, token: str, name: str, due: datetime) -> str:
    """Release an assignment of algebra with a due date, as nbgrader's release_assignment does for TEACHER."""
    url = f"http://127.0.0.1:{wb.site['service_ports']}/services/exchange/api/v1/courses/algebra/assignments/{name}"
    r = httpx.put(
        url,
        params={"due": due.isoformat()},
        content=pack_files({f"{name}.ipynb": b"{}"}),
        headers={"Authorization": f"token {token}"},
        timeout=60,
    )
    assert r.status_code == 201, r.text
    return r.json()["due"]


@pytest.fixture(scope="module")
def wb(tmp_path_factory):
    if not CHROMIUM:
        pytest.skip("Debian's chromium is not installed (scripts/install.sh --test installs it)")
    if not (REPO / "node_modules" / "playwright-core").is_dir():
        pytest.skip("playwright-core is not installed (npm ci in the repository)")
    directory = tmp_path_factory.mktemp("workbench-browser")
    os.chmod(directory, 0o755)
    os.environ["ATLASLAB_TEST_WORKBENCH_PASSWORD"] = PASSWORD
    wb = Workbench(write_site(directory, site())).start()
    yield wb
    wb.stop()


def test_panel_in_three_languages(wb: Workbench) -> None:
    teacher = Browser(wb)
    teacher.login(TEACHER, PASSWORD)
    now = datetime.now(UTC)
    soon = release(wb, teacher.token(), "ps2", now + timedelta(days=3))
    release(wb, teacher.token(), "ps1", now - timedelta(days=1))
    teacher.close()
    for name in (USER, USER_FR):
        b = logged_in(wb, name, PASSWORD)
        r = b.api("POST", f"/users/{name}/server", json={"environment": "cpu-two"})
        assert r.status_code in (201, 202), r.text
    for name in (USER, USER_FR):
        wait_server(wb, name, timeout=120)
    artifacts = REPO / "test-artifacts"
    config = {
        "url": wb.url,
        "user": USER,
        "userFr": USER_FR,
        "password": PASSWORD,
        "chromium": CHROMIUM,
        "artifacts": str(artifacts),
    }
    done = subprocess.run(
        ["node", str(REPO / "tests" / "browser" / "workbench.js"), json.dumps(config)],
        capture_output=True, text=True, timeout=420, cwd=REPO,
    )  # fmt: skip
    assert done.stdout, f"the browser script printed nothing: {done.stderr[-3000:]}"
    seen = json.loads(done.stdout)
    assert "error" not in seen, f"{seen['error']}\n{json.dumps(seen, ensure_ascii=False)}\n{wb.log()[-3000:]}"

    en = seen["en"]
    assert en["title"] == "Environment" and en["dir"] == "ltr"
    assert "cpu-two" in en["environment"] and "2 cores" in en["environment"] and "2 GiB" in en["environment"]
    # The user's budget from the credits service, and the time before the idle cull from the hub.
    assert "Your budget" in en["credits"] and "of 5 CPU-hours left" in en["credits"]
    assert "Stopped when idle in 1 h 59 min" in en["credits"] or "Stopped when idle in 2 h 0 min" in en["credits"]
    # No tracking on this site: the section says why instead of staying blank.
    assert "no MLFLOW_TRACKING_URI" in en["runs"]
    # algebra's next due date, from the exchange, in the user's language, with the exact instant for machines;
    # the one already past and never submitted is flagged.
    assert "algebra" in en["courses"] and "ps2 due" in en["courses"], en["courses"]
    assert en["dueTimes"] == [soon] and "ps1 was due" in en["courses"] and "is not submitted" in en["courses"]
    assert str((datetime.fromisoformat(soon)).year) in en["courses"]

    dask = seen["dask"]
    assert dask["href"].startswith(f"/user/{USER}/proxy/") and dask["href"].endswith("/status")
    assert "Stop the Dask cluster" in dask["text"] and "2 workers" in dask["text"]
    assert dask["dashboard"]["url"].startswith(f"{wb.url}/user/{USER}/proxy/")
    assert "Dask" in dask["dashboard"]["title"]

    # Keyboard only: the command palette opens the panel with focus in it, Tab reaches every control, each has a
    # name and a visible focus ring, and Enter / Space start and stop the Dask cluster with focus kept on the button.
    kb = seen["keyboard"]
    assert kb["focusInPanelAfterOpen"], kb
    assert kb["controls"] and kb["unreached"] == [], kb
    names = {c["key"]: c["name"] for c in kb["controls"]}
    assert names["refresh"] == "Refresh" and names["dask"] == "Start a Dask cluster", names
    assert all(c["name"] for c in kb["controls"]), kb["controls"]
    assert all(c["focusVisible"] for c in kb["controls"]), kb["controls"]
    assert kb["started"]["text"].startswith("Stop the Dask cluster") and kb["started"]["focusOnButton"], kb
    assert kb["started"]["dashboardReached"], kb
    assert kb["stopped"]["text"] == "Start a Dask cluster" and kb["stopped"]["focusOnButton"], kb

    fr, ar = seen["fr"], seen["ar"]
    assert fr["title"] == "Environnement" and fr["dask"] == "Démarrer un cluster Dask" and fr["dir"] == "ltr"
    # Due dates follow the language: French words, same instant.
    assert "ps2 à rendre le" in fr["courses"] and fr["dueTimes"] == [soon]
    assert ar["title"] == "البيئة" and ar["dask"] == "تشغيل عنقود Dask"
    assert ar["dir"] == "rtl" and ar["direction"] == "rtl" and ar["lang"] == "ar-SA"
    # Right to left for real: the heading hugs the right edge, in French the left one.
    assert ar["headingRightGap"]["right"] < ar["headingRightGap"]["left"]
    assert fr["headingRightGap"]["left"] < fr["headingRightGap"]["right"]

    # The French-speaking tenant's user: French from the first visit (JupyterLab's own menus and the panel), with
    # the locale coming from the setting's default; then their own choice, English, wins over the tenant's.
    tenant = seen["tenantFr"]
    assert tenant["default"]["title"] == "Environnement" and tenant["default"]["menu"] == "Fichier", tenant
    assert tenant["default"]["setting"] == {"composite": "fr_FR", "user": None}, tenant
    assert tenant["chosen"]["title"] == "Environment" and tenant["chosen"]["menu"] == "File", tenant
    assert tenant["chosen"]["setting"] == {"composite": "en", "user": "en"}, tenant
    # USER's tenant sets none: the site's first language.
    assert seen["siteDefault"] == {"composite": "en", "user": None}, seen["siteDefault"]
    for name in ("en", "dask", "keyboard", "fr", "ar", "tenant-fr", "tenant-fr-chose-en"):
        assert (artifacts / f"workbench-{name}.png").stat().st_size > 10_000
