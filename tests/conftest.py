import os
from pathlib import Path

import pytest
from harness import Workbench, write_site  # noqa: F401 (re-exported for tests)


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root: system accounts and cgroups")
        for item in items:
            if "root" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def site_dir(tmp_path: Path) -> Path:
    # System accounts must be able to enter the state dir's parents? No: only the hub reads them.
    return tmp_path / "site"
