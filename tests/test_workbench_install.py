"""The workbench panel as shipped: built into the wheel (no Node for users), listed by JupyterLab, every string
of the panel translated in French and Arabic, and the panel's pure data functions."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from atlaslab.workbench import sources

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "lab_extensions" / "atlaslab-workbench" / "src"
LOCALE = REPO / "atlaslab" / "workbench" / "locale"


def msgids() -> set[str]:
    found: set[str] = set()
    for ts in SRC.glob("*.ts"):
        found |= set(re.findall(r"trans\.(?:__|_n)\(\s*'((?:[^'\\]|\\.)+)'", ts.read_text()))
    return found


def test_every_panel_string_is_translated() -> None:
    wanted = msgids()
    assert len(wanted) > 30 and "Start a Dask cluster" in wanted
    for locale, nplurals in (("fr_FR", 2), ("ar_SA", 6)):
        data = json.loads((LOCALE / locale / "LC_MESSAGES" / "atlaslab_workbench.json").read_text())
        assert data[""]["domain"] == "atlaslab_workbench"
        assert wanted <= set(data), f"{locale} lacks {sorted(wanted - set(data))}"
        for key in ("%1 core", "%1 worker"):
            assert len(data[key]) == nplurals, (locale, key)


def test_jupyterlab_serves_the_translations() -> None:
    from jupyterlab_server.translation_utils import get_language_pack

    data, _ = get_language_pack("ar_SA")
    assert data["atlaslab_workbench"]["Environment"] == ["البيئة"]


def test_listed_by_jupyterlab_after_a_plain_install(tmp_path: Path) -> None:
    """A wheel of the package, installed with no Node, puts the built panel where JupyterLab finds it."""
    wheels, prefix = tmp_path / "wheels", tmp_path / "prefix"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", wheels, REPO], check=True, timeout=240, capture_output=True)
    [wheel] = wheels.glob("atlaslab-*.whl")
    # --ignore-installed: never uninstall the running environment's own (editable) atlaslab.
    subprocess.run(
        [*pip, "install", "--no-deps", "--ignore-installed", "--prefix", prefix, wheel], check=True, timeout=240
    )
    shipped = prefix / "share" / "jupyter" / "labextensions" / "atlaslab-workbench"
    assert json.loads((shipped / "package.json").read_text())["name"] == "atlaslab-workbench"
    env = {**os.environ, "JUPYTER_PATH": str(prefix / "share" / "jupyter"), "NO_COLOR": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "jupyter", "labextension", "list"], env=env, capture_output=True, text=True, timeout=60
    )
    listing = out.stdout + out.stderr
    # The section of the fresh prefix (not the development venv's own link) lists it, enabled and OK.
    section = listing.split(str(prefix / "share" / "jupyter" / "labextensions"), 1)[1].split("\n/", 1)[0]
    assert re.search(r"atlaslab-workbench v[\d.]+ .*enabled.* .*OK", section), listing


def test_idle_time_left_from_the_hubs_last_activity() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    model = {"last_activity": "2026-01-01T09:00:00Z", "servers": {"": {"last_activity": "2026-01-01T11:30:00Z"}}}
    assert sources.idle(model, {"ATLASLAB_IDLE_CULL_AFTER": "3600"}, now)["left"] == 1800
    assert sources.idle(model, {"ATLASLAB_IDLE_CULL_AFTER": "600"}, now)["left"] == 0
    assert sources.idle(model, {"ATLASLAB_IDLE_CULL_AFTER": "0"}, now)["left"] is None


def test_courses_from_hub_groups() -> None:
    groups = ["course:darija-nlp:students", "course:gpu-mlops:instructors", "course:gpu-mlops:tas", "lab"]
    assert sources.course_roles({"groups": groups}) == {"darija-nlp": ["students"], "gpu-mlops": ["instructors", "tas"]}


def test_typescript_unit_tests() -> None:
    """jest over the panel's TypeScript (lab_extensions/atlaslab-workbench/test); needs its npm install."""
    ext = REPO / "lab_extensions" / "atlaslab-workbench"
    if not (ext / "node_modules" / ".bin" / "jest").exists():
        pytest.skip("the extension's npm packages are not installed (npm ci in lab_extensions/atlaslab-workbench)")
    done = subprocess.run(
        [str(ext / "node_modules" / ".bin" / "jest"), "--ci"], cwd=ext, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Tests:" in done.stderr and "failed" not in done.stderr.split("Tests:")[1].split("\n")[0]


def test_typescript_type_checks() -> None:
    """The panel's sources type-check against JupyterLab's own type definitions."""
    ext = REPO / "lab_extensions" / "atlaslab-workbench"
    if not (ext / "node_modules" / ".bin" / "tsc").exists():
        pytest.skip("the extension's npm packages are not installed (npm ci in lab_extensions/atlaslab-workbench)")
    done = subprocess.run(
        [str(ext / "node_modules" / ".bin" / "tsc"), "--noEmit", "-p", "tsconfig.json"],
        cwd=ext,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-4000:]
