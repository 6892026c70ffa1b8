"""The workbench panel end to end: Debian's chromium (driven by playwright-core from tests/browser/workbench.js)
against a real hub. Log in, open JupyterLab, open the panel, see the environment and credits, start a Dask
cluster and follow its dashboard link, then French and Arabic (right to left). Screenshots: test-artifacts/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from harness import Workbench, logged_in, unique, wait_server, write_site

pytestmark = [pytest.mark.root, pytest.mark.browser]
REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium")
PASSWORD = "workbench-browser-password"
USER = unique("wbb-")


def site() -> dict:
    return {
        "login": [{"provider": "shared-password", "password": {"env": "ATLASLAB_TEST_WORKBENCH_PASSWORD"}}],
        "environments": {"cpu-two": {"title": "CPU two", "cpu": 2, "memory": "2G", "default": True}},
        "limits": {"idle_cull_after": "2h"},
        "credits": {"default_user": {"cpu_hours": 5, "period": "month"}},
    }


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
    b = logged_in(wb, USER, PASSWORD)
    r = b.api("POST", f"/users/{USER}/server", json={"environment": "cpu-two"})
    assert r.status_code in (201, 202), r.text
    wait_server(wb, USER, timeout=120)
    artifacts = REPO / "test-artifacts"
    config = {"url": wb.url, "user": USER, "password": PASSWORD, "chromium": CHROMIUM, "artifacts": str(artifacts)}
    done = subprocess.run(
        ["node", str(REPO / "tests" / "browser" / "workbench.js"), json.dumps(config)],
        capture_output=True, text=True, timeout=240, cwd=REPO,
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
    assert "You are in no course." in en["courses"]

    dask = seen["dask"]
    assert dask["href"].startswith(f"/user/{USER}/proxy/") and dask["href"].endswith("/status")
    assert "Stop the Dask cluster" in dask["text"] and "2 workers" in dask["text"]
    assert dask["dashboard"]["url"].startswith(f"{wb.url}/user/{USER}/proxy/")
    assert "Dask" in dask["dashboard"]["title"]

    fr, ar = seen["fr"], seen["ar"]
    assert fr["title"] == "Environnement" and fr["dask"] == "Démarrer un cluster Dask" and fr["dir"] == "ltr"
    assert ar["title"] == "البيئة" and ar["dask"] == "تشغيل عنقود Dask"
    assert ar["dir"] == "rtl" and ar["direction"] == "rtl" and ar["lang"] == "ar-SA"
    # Right to left for real: the heading hugs the right edge, in French the left one.
    assert ar["headingRightGap"]["right"] < ar["headingRightGap"]["left"]
    assert fr["headingRightGap"]["left"] < fr["headingRightGap"]["right"]
    for name in ("en", "dask", "fr", "ar"):
        assert (artifacts / f"workbench-{name}.png").stat().st_size > 10_000
