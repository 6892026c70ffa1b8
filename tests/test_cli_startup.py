"""`atlaslab --help` and `atlaslab config check` start fast: importing the CLI leaves the heavy parts out.

The import check is the robust one (it does not depend on how loaded the machine is); the wall-clock bounds are
generous, to catch a large regression (an import of the hub or of nbgrader at start-up) without flaking on a busy
CI machine. Everything runs in a fresh interpreter, with PYTHONPATH on this checkout so that its copy of
AtlasLab is the one measured, whatever else is installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "atlaslab.yaml"
# What only some commands need; `atlaslab --help` and `atlaslab config check` must not pay for it.
HEAVY = (
    "jupyterhub",
    "nbgrader",
    "mlflow",
    "httpx",
    "tenacity",
    "sqlalchemy",
    "tornado",
    "kubernetes",
    "kubernetes_asyncio",
    "dask",
    "distributed",
    "rich.progress",
    "atlaslab.hub",
    "atlaslab.core",
    "atlaslab.grading",
    "atlaslab.compute",
    "atlaslab.tracking",
    "atlaslab.workbench",
    "atlaslab.config.docs",
)
# Wall-clock bound per command, best of three: the commands take about 0.2 s (--help) and 0.35 s (config check)
# on an idle machine; loading the hub and the features at start-up took them past 0.5 s.
BOUND_S = 1.5


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60
    )


# Prints where atlaslab came from and which of the heavy modules (argv[1], JSON) are loaded, after running
# the CLI with the rest of argv (or after only importing it, when there is no rest).
_PROBE = """
import json, sys
heavy = json.loads(sys.argv[1])
args = sys.argv[2:]
import atlaslab.cli
if args:
    try:
        atlaslab.cli.app(args, prog_name="atlaslab")
    except SystemExit as e:
        if e.code not in (0, None):
            raise
loaded = sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in heavy))
print(json.dumps({"file": atlaslab.cli.__file__, "loaded": loaded}))
"""


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="import"),
        pytest.param(["--help"], id="help"),
        pytest.param(["config", "check", "--config", str(EXAMPLE), "--skip-secrets"], id="config-check"),
    ],
)
def test_the_cli_leaves_heavy_modules_unloaded(args: list[str]) -> None:
    r = _python(_PROBE, json.dumps(HEAVY), *args)
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout.strip().splitlines()[-1])
    assert Path(found["file"]).resolve().is_relative_to(ROOT), f"measured another copy: {found['file']}"
    assert found["loaded"] == [], (
        f"`atlaslab {' '.join(args)}` loads {found['loaded']}: import them inside the commands that need them"
    )


def test_help_does_not_load_the_config_schema() -> None:
    """The schema (pydantic) is needed to read a config, not to list the commands."""
    r = _python(_PROBE, json.dumps(["atlaslab.config", "pydantic", "yaml"]), "--help")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["loaded"] == []


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--help"], id="help"),
        pytest.param(["config", "check", "--config", str(EXAMPLE), "--skip-secrets"], id="config-check"),
    ],
)
def test_the_cli_starts_fast(args: list[str]) -> None:
    times = []
    for _ in range(3):
        started = time.perf_counter()
        r = subprocess.run(
            [sys.executable, "-m", "atlaslab.cli", *args],
            cwd=ROOT,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        times.append(time.perf_counter() - started)
        assert r.returncode == 0, r.stderr
    assert min(times) < BOUND_S, f"`atlaslab {' '.join(args)}` took {min(times):.2f} s at best (bound {BOUND_S} s)"
