"""Jupyter config baked into the user images (images/Dockerfile.user-*), for servers KubeSpawner starts.

On one machine the hub hands users' servers this config through JUPYTER_CONFIG_PATH (a directory in STATE_DIR) and
its spawner turns nbgrader's instructor extensions off per user; a pod has neither, so the image carries the same
settings in its system config directory: ``python -m atlaslab.hub.imageconfig PREFIX/etc/jupyter``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from atlaslab.grading.hubpart import STUDENT_DISABLED_EXTENSIONS, client_config
from atlaslab.workbench import language
from atlaslab.workbench.serverconfig import KERNEL_WEBSOCKET, SERVER_EXTENSIONS


def server_config() -> dict:
    # Instructors grade through their course's formgrader service, never in their own server; the rest is what the
    # local spawner passes as arguments.
    extensions = dict.fromkeys(STUDENT_DISABLED_EXTENSIONS, False) | dict.fromkeys(SERVER_EXTENSIONS, True)
    return {"ServerApp": {"jpserver_extensions": extensions, "kernel_websocket_connection_class": KERNEL_WEBSOCKET}}


def write(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "nbgrader_config.py").write_text(client_config())
    conf_d = directory / "jupyter_server_config.d"
    conf_d.mkdir(exist_ok=True)
    # Sorted after the packages' own files (nbgrader.json enables them), so this one wins.
    (conf_d / "zz-atlaslab.json").write_text(json.dumps(server_config(), indent=2) + "\n")
    # The default JupyterLab language of each user, which KubeSpawner hands over in ATLASLAB_LANGUAGE.
    language.write_settings(directory / "lab-settings")
    (directory / "jupyter_server_config.py").write_text(language.IMAGE_CONFIG)


if __name__ == "__main__":
    write(Path(sys.argv[1]))
