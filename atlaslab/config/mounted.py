"""The site config as a Kubernetes pod sees it: the chart's ConfigMap mounted read-only, copied where it resolves.

The hub pod and the Dask Gateway's pods read the same mounted site (``atlaslab.yaml``, and ``files.json``:
{relative path: text} for rosters and the like, since a ConfigMap key cannot hold a directory).
"""

from __future__ import annotations

import json
from pathlib import Path

from .loading import LoadedConfig, load

DEFAULT_STATE_DIR = "/srv/jupyterhub/atlaslab"  # on the hub's volume (Zero to JupyterHub's hub-db-dir)
DEFAULT_SITE_DIR = "/etc/atlaslab"  # the ConfigMap atlaslab-site, mounted by the chart
SITE_DIR_ENV, STATE_DIR_ENV = "ATLASLAB_SITE_DIR", "ATLASLAB_STATE_DIR"


def materialise(mounted: Path, target: Path) -> Path:
    """Copy the mounted site to ``target``, where its relative paths resolve; return the site file's path."""
    target.mkdir(parents=True, exist_ok=True)
    files = mounted / "files.json"
    for relative, text in (json.loads(files.read_text()) if files.exists() else {}).items():
        path = (target / relative).resolve()
        if not path.is_relative_to(target.resolve()):
            raise ValueError(f"siteFiles: {relative!r} leaves the site directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    site = target / "atlaslab.yaml"
    site.write_text((mounted / "atlaslab.yaml").read_text())
    return site


def with_state_dir(loaded: LoadedConfig, state_dir: Path) -> LoadedConfig:
    """The site with its state on the hub's volume, whatever ``site.state_dir`` says for one machine."""
    site = loaded.site.model_copy(update={"site": loaded.site.site.model_copy(update={"state_dir": state_dir})})
    return LoadedConfig(site=site, source=loaded.source, rosters=loaded.rosters)


def mounted_dir(env: dict[str, str]) -> Path:
    return Path(env.get(SITE_DIR_ENV) or DEFAULT_SITE_DIR)


def state_dir(env: dict[str, str]) -> Path:
    return Path(env.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)


def load_mounted(env: dict[str, str], target: Path, *, check_secrets: bool = True) -> LoadedConfig:
    """The mounted site, materialised in ``target``, with its state on the hub's volume."""
    loaded = load(materialise(mounted_dir(env), target), check_secrets=check_secrets)
    return with_state_dir(loaded, state_dir(env))
