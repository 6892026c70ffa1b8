"""The images: Dockerfiles linted (hadolint and our own rules), requirement files fully pinned and complete, and the
CPU user image's pinned requirements installed into a fresh virtual environment where a smoke test runs."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from jupyter_server.extension.config import ExtensionConfigManager
from traitlets.config.loader import PyFileConfigLoader

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


def test_hub_image_has_what_zero_to_jupyterhubs_config_needs() -> None:
    # z2jh's jupyterhub_config.py selects tornado's curl client first thing; without pycurl the hub cannot start.
    hub = (IMAGES / "requirements-hub.txt").read_text()
    assert "-r requirements-user-cpu.txt" in hub and re.search(r"^pycurl==", hub, re.MULTILINE)
    assert "requirements-hub.txt" in (IMAGES / "Dockerfile.hub").read_text()
    for name in ("jupyterhub", "jupyterhub-kubespawner", "kubernetes-asyncio", "jupyterhub-idle-culler"):
        assert re.search(
            rf"^{name.replace('-', '[-_]')}==", (IMAGES / "requirements-user-cpu.txt").read_text(), re.I | re.M
        )


def test_user_images_carry_the_jupyter_config_the_hub_hands_over_on_one_machine(tmp_path: Path) -> None:
    for name in ("Dockerfile.user-cpu", "Dockerfile.user-gpu"):
        assert "python -m atlaslab.hub.imageconfig" in (IMAGES / name).read_text(), name
    # The image's system config dir holds the packages' own files (nbgrader enables its extensions) and ours.
    etc = tmp_path / "etc" / "jupyter"
    shutil.copytree(Path(sys.prefix) / "etc" / "jupyter" / "jupyter_server_config.d", etc / "jupyter_server_config.d")
    r = subprocess.run([sys.executable, "-m", "atlaslab.hub.imageconfig", str(etc)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    enabled = ExtensionConfigManager(read_config_path=[str(etc)]).get_jpserver_extensions()
    assert enabled["nbgrader.server_extensions.formgrader"] is False
    assert enabled["nbgrader.server_extensions.course_list"] is False
    assert enabled["nbgrader.server_extensions.assignment_list"] is True and enabled["jupyterlab"] is True
    # What the local spawner passes as arguments: the workbench panel's data and the Dask dashboard check.
    assert enabled["atlaslab.workbench"] is True and enabled["atlaslab.compute.dashboard"] is True
    for name in ("atlaslab.workbench", "atlaslab.compute.dashboard"):
        assert importlib.import_module(name)._jupyter_server_extension_points()
    conf_d = json.loads((etc / "jupyter_server_config.d" / "zz-atlaslab.json").read_text())
    module, cls = conf_d["ServerApp"]["kernel_websocket_connection_class"].rsplit(".", 1)
    assert getattr(importlib.import_module(module), cls)
    # nbgrader, as students run it, uses AtlasLab's exchange classes.
    loader = PyFileConfigLoader("nbgrader_config.py", path=str(etc))
    factory = loader.load_config().ExchangeFactory
    assert factory.fetch_assignment == "atlaslab.grading.client.ExchangeFetchAssignment"
    for dotted in factory.values():
        module, cls = dotted.rsplit(".", 1)
        assert getattr(importlib.import_module(module), cls)


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
