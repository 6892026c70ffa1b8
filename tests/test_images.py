"""The images: Dockerfiles linted (hadolint and our own rules), requirement files fully pinned and complete, and the
CPU user image's pinned requirements installed into a fresh virtual environment where a smoke test runs."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent
IMAGES = REPO / "images"
DOCKERFILES = sorted(IMAGES.glob("Dockerfile.*"))
PIN = re.compile(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)$")


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-").replace(".", "-")


def test_three_dockerfiles_pass_hadolint_and_our_rules() -> None:
    assert {d.name for d in DOCKERFILES} == {"Dockerfile.hub", "Dockerfile.user-cpu", "Dockerfile.user-gpu"}
    hadolint = Path(sys.executable).with_name("hadolint")
    for dockerfile in DOCKERFILES:
        r = subprocess.run([str(hadolint), str(dockerfile)], capture_output=True, text=True)
        assert r.returncode == 0, f"{dockerfile.name}: {r.stdout}{r.stderr}"
        text = dockerfile.read_text()
        [base] = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
        assert ":" in base and not base.endswith(":latest"), f"{dockerfile.name}: unpinned base image {base}"
        users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
        assert users and users[-1] not in ("root", "0"), f"{dockerfile.name}: must not run as root"
        assert "rm -rf /var/lib/apt/lists/*" in text
        assert not re.search(r"^(ENV|ARG)\s+.*(TOKEN|SECRET|PASSWORD)", text, re.MULTILINE | re.IGNORECASE)
        assert "MLFLOW_ENABLE_ASYNC_LOGGING=true" in text or dockerfile.name == "Dockerfile.hub"


def test_cpu_requirements_are_pinned_and_cover_atlaslab() -> None:
    lines = [line.strip() for line in (IMAGES / "requirements-user-cpu.txt").read_text().splitlines()]
    reqs = [line for line in lines if line and not line.startswith("#")]
    unpinned = [r for r in reqs if not PIN.match(r)]
    assert not unpinned, f"not pinned with ==: {unpinned}"
    pinned = {_name(r) for r in reqs}
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    missing = sorted(_name(d) for d in deps if _name(d) not in pinned)
    assert not missing, f"AtlasLab needs these, the image does not pin them: {missing}"
    assert {"jupyterlab-language-pack-fr-fr", "jupyterlab-language-pack-ar-sa"} <= pinned
    gpu = (IMAGES / "requirements-user-gpu.txt").read_text()
    assert "-r requirements-user-cpu.txt" in gpu and "dask-cuda==" in gpu and "cudf-cu12==" in gpu


SMOKE = """
import importlib, json, os
for module in ("jupyterlab", "nbgrader", "mlflow", "dask", "distributed", "jupyter_server_proxy", "atlaslab.compute"):
    importlib.import_module(module)
from jupyter_client.manager import start_new_kernel
km, kc = start_new_kernel(kernel_name="python3")
try:
    hook = lambda m: print("OUT", m["content"].get("text", ""), end="")  # noqa: E731
    reply = kc.execute_interactive("print(6 * 7)", timeout=60, output_hook=hook)
    assert reply["content"]["status"] == "ok"
finally:
    kc.stop_channels(); km.shutdown_kernel(now=True)
from atlaslab.compute.dask_cluster import plan
limits = {"CPU_LIMIT": "2", "MEM_LIMIT": str(2 << 30)}
p = plan(limits, cpu_count=2, total_memory=4 << 30, nproc_limit=None, dask_cuda=False)
print("PLAN", p.kind, p.n_workers)
"""


@pytest.mark.timeout(600)
def test_cpu_image_requirements_install_into_a_fresh_venv_and_work(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    # --no-deps: the file alone must hold everything (the image installs it the same way).
    r = subprocess.run(
        [*pip, "--no-deps", "-r", str(IMAGES / "requirements-user-cpu.txt")], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([*pip, "--no-deps", str(REPO)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    check = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    r = subprocess.run(
        [str(venv / "bin" / "python"), "-c", SMOKE], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OUT 42" in r.stdout and "PLAN cpu 2" in r.stdout, r.stdout
