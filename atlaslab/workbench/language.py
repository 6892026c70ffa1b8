"""The default JupyterLab language of a user's server: their tenant's ``language``, else the site's first language.

JupyterLab takes its language from the setting ``@jupyterlab/translation-extension:plugin`` → ``locale``, whose own
default ("default": the server's system locale) means English on a machine with only C locales. A settings
directory per language holds an ``overrides.json`` that changes that setting's *default*; a user's server is
pointed at the one of their language with ``LabApp.app_settings_dir``. What a user picks in Settings > Language is
kept in their own user settings, which override defaults, so their choice still wins.

* One machine: the hub writes STATE_DIR/lab-settings/LANG (readable by every account) and the spawner passes
  ``--LabApp.app_settings_dir`` (atlaslab/hub/spawner.py).
* Kubernetes: the user image carries the same directories and a ``jupyter_server_config.py`` reading
  ``ATLASLAB_LANGUAGE`` (written by atlaslab/hub/imageconfig.py); KubeSpawner sets that variable per user
  (atlaslab/core/kube.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atlaslab.core.membership import tenant_of
from atlaslab.core.state import write_public

if TYPE_CHECKING:
    from atlaslab.config import LoadedConfig

# Site-config language -> JupyterLab locale (the installed language packs: jupyterlab-language-pack-fr-FR, -ar-SA).
LOCALES = {"en": "en", "fr": "fr_FR", "ar": "ar_SA"}
TRANSLATION_PLUGIN = "@jupyterlab/translation-extension:plugin"
ENV = "ATLASLAB_LANGUAGE"
# The Jupyter server config read by the user images' servers (LabApp takes its settings from the server's config).
IMAGE_CONFIG = """\
# Written by atlaslab.hub.imageconfig: the default JupyterLab language the hub chose for this user (ATLASLAB_LANGUAGE).
import os as _os

_language = _os.environ.get("ATLASLAB_LANGUAGE", "")
_settings = _os.path.join(_os.path.dirname(__file__), "lab-settings", _language)
if _language and _os.path.isfile(_os.path.join(_settings, "overrides.json")):
    c.LabApp.app_settings_dir = _settings
"""


def overrides(language: str) -> dict[str, Any]:
    return {TRANSLATION_PLUGIN: {"locale": LOCALES[language]}}


def write_settings(root: Path) -> Path:
    """ROOT/LANG/overrides.json for every language, readable by every account; return ROOT."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    for language in LOCALES:
        directory = root / language
        directory.mkdir(exist_ok=True)
        os.chmod(directory, 0o755)
        write_public(directory / "overrides.json", json.dumps(overrides(language), indent=2) + "\n")
    return root


def tenant_languages(loaded: LoadedConfig) -> dict[str, str]:
    """Tenant -> its language, for the tenants that set one."""
    return {tid: t.language for tid, t in loaded.site.tenants.items() if t.language}


def default_language(loaded: LoadedConfig) -> str:
    return loaded.site.site.languages[0] if loaded.site.site.languages else "en"


def language_for(groups: Iterable[str], by_tenant: Mapping[str, str], default: str) -> str:
    """The language of a user in ``groups``: that of their tenant (the first by name, as the spawners pick the
    tenant for namespaces and credits), else ``default``."""
    tenant = tenant_of(groups)
    return by_tenant.get(tenant, default) if tenant else default


class UserLanguage:
    """KubeSpawner's ``environment`` value for ATLASLAB_LANGUAGE: called with the spawner, answers its user's."""

    def __init__(self, by_tenant: Mapping[str, str], default: str):
        self.by_tenant, self.default = dict(by_tenant), default

    def __call__(self, spawner: Any) -> str:
        return language_for([g.name for g in spawner.user.groups], self.by_tenant, self.default)
