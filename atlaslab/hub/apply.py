"""Apply a site config to JupyterHub's config object: the features' parts assembled once, one concern per step.

Features (grading, tracking, credits, the hub's own services) describe what they add as a
:class:`~atlaslab.core.hubpart.HubPart`; :func:`plan` gathers them and merges them once (two features claiming the
same service, role or environment variable is an error, not a silent overwrite). Each step in :data:`STEPS` then
*sets* its own traits of ``c`` from the plan: no step reads another's output or merges into it, so the steps give
the same config in any order (a test runs every order) and applying twice gives the same config.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from traitlets.config import Config

from atlaslab.compute import hubpart as compute_part
from atlaslab.config import LoadedConfig
from atlaslab.core import membership
from atlaslab.core.accounts import isolation_mode, server_path
from atlaslab.core.hubpart import Assembled, HubPart, merge
from atlaslab.core.state import StateDir
from atlaslab.grading import hubpart as grading_part
from atlaslab.tracking import hubpart as tracking_part
from atlaslab.workbench import language
from atlaslab.workbench.serverconfig import LANGUAGE_SERVER_MODULES

from . import roles, services
from .auth import configure_authenticator
from .kubernetes import configure_kubernetes

log = logging.getLogger("atlaslab")


@dataclass(frozen=True)
class Plan:
    """Everything the steps read: the site, its state directory and the features' parts, merged."""

    loaded: LoadedConfig
    state: StateDir
    parts: Assembled
    in_cluster: bool = False  # in Zero to JupyterHub's hub pod: the chart owns network, database and secrets
    # In the hub pod: KubeSpawner's environment and labels as Zero to JupyterHub's own config set them (its
    # singleuser.extraEnv, its labels); AtlasLab adds to them. Read before any step runs.
    chart_pods: dict[str, dict] = field(default_factory=dict)


def feature_parts(loaded: LoadedConfig, state: StateDir) -> list[HubPart]:
    return [
        services.hub_part(loaded, state),
        grading_part.hub_part(loaded, state),
        tracking_part.hub_part(loaded, state),
        compute_part.hub_part(loaded, state),
    ]


def plan(
    loaded: LoadedConfig,
    extra: list[HubPart] | None = None,
    in_cluster: bool = False,
    chart_pods: dict[str, dict] | None = None,
) -> Plan:
    state = StateDir(loaded.state_dir).ensure()
    return Plan(loaded, state, merge([*feature_parts(loaded, state), *(extra or [])]), in_cluster, chart_pods or {})


# ---- the steps -----------------------------------------------------------------------------------------------


def configure_network(c: Config, p: Plan) -> None:
    site = p.loaded.site.site
    c.JupyterHub.template_vars = {"announcement_login": site.name}
    if p.in_cluster:
        c.JupyterHub.base_url = site.base_url
        return
    c.JupyterHub.bind_url = f"http://{site.bind}{site.base_url}"
    c.JupyterHub.hub_ip = "127.0.0.1"
    c.JupyterHub.hub_port = site.hub_port
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{site.proxy_api_port}"


def configure_state(c: Config, p: Plan) -> None:
    # Restarting the hub must not stop users' servers or forget their routes.
    c.JupyterHub.cleanup_servers = False
    c.JupyterHub.cleanup_proxy = False
    c.ConfigurableHTTPProxy.should_start = False
    if p.in_cluster:
        return
    state = p.state
    c.JupyterHub.db_url = state.db_url
    c.JupyterHub.cookie_secret = bytes.fromhex(state.secret("cookie-secret"))
    c.ConfigurableHTTPProxy.auth_token = state.secret("proxy-token")
    c.CryptKeeper.keys = [bytes.fromhex(state.secret("crypt-key"))]
    c.JupyterHub.pid_file = str(state.run_dir / "jupyterhub.pid")
    c.ConfigurableHTTPProxy.pid_file = str(state.run_dir / "proxy.pid")


def configure_login(c: Config, p: Plan) -> None:
    c.JupyterHub.admin_access = False  # admins manage servers; they do not open students' notebooks
    configure_authenticator(c, p.loaded, p.state)


def configure_groups(c: Config, p: Plan) -> None:
    c.JupyterHub.load_groups = membership.config_groups(p.loaded)


def configure_roles(c: Config, p: Plan) -> None:
    c.JupyterHub.load_roles = roles.config_roles(p.loaded) + p.parts.roles


def configure_services(c: Config, p: Plan) -> None:
    c.JupyterHub.services = p.parts.services
    c.JupyterHub.authenticate_prometheus = True


def configure_scopes(c: Config, p: Plan) -> None:
    """Users (so their tokens) and their servers' tokens may reach the features' services."""
    c.JupyterHub.extra_user_scopes = p.parts.user_scopes
    c.Spawner.server_token_scopes = p.parts.server_scopes


def configure_limits(c: Config, p: Plan) -> None:
    lim = p.loaded.site.limits
    c.JupyterHub.active_server_limit = lim.max_servers
    c.JupyterHub.concurrent_spawn_limit = lim.concurrent_spawns


def configure_spawner(c: Config, p: Plan) -> None:
    """The local spawner (a server per user on this machine), unless Kubernetes is enabled (see configure_pods)."""
    loaded, state = p.loaded, p.state
    s = c.AtlasLabSpawner
    kube = loaded.site.kubernetes.enabled
    c.JupyterHub.spawner_class = "kubespawner.KubeSpawner" if kube else "atlaslab.hub.spawner.AtlasLabSpawner"
    s.environments = dict(loaded.site.environments)
    s.access_rules = membership.access_rules(loaded)
    s.fallback_environments = membership.default_environments(loaded)
    mode = isolation_mode(loaded.site.spawner.isolation)
    s.isolation = mode
    if mode == "none" and os.geteuid() == 0:
        # Development mode run as root: Jupyter refuses root unless told; users are not isolated anyway.
        s.args = ["--ServerApp.allow_root=True"]
    s.home_root = str(loaded.site.spawner.home_root)
    s.dev_home_root = str(state.dev_homes)
    s.default_url = loaded.site.spawner.default_url
    s.start_timeout = loaded.site.limits.start_timeout
    s.http_timeout = loaded.site.limits.start_timeout
    # The user's server starts through AtlasLab's launcher (atlaslab/workbench/singleuser.py): jupyterhub-singleuser
    # without ~1.2 s of start-up work no server uses.
    s.cmd = [sys.executable, "-m", "atlaslab.workbench.singleuser"]
    disabled = list(grading_part.STUDENT_DISABLED_EXTENSIONS)
    if not any(importlib.util.find_spec(name) for name in LANGUAGE_SERVER_MODULES):
        disabled.append("jupyter_lsp")
    s.disabled_server_extensions = disabled
    s.course_server_extensions = list(grading_part.COURSE_SERVER_EXTENSIONS)
    s.env_keep = ["PATH", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "LD_LIBRARY_PATH"]
    s.lab_settings_root = str(language.write_settings(state.root / "lab-settings"))
    s.tenant_languages = language.tenant_languages(loaded)
    s.default_language = language.default_language(loaded)
    s.environment = {"ATLASLAB_SITE": loaded.site.site.name, "PATH": server_path(), **p.parts.server_env}
    for name, value in p.parts.spawner.items():
        s[name] = value


def configure_pods(c: Config, p: Plan) -> None:
    configure_kubernetes(c, p.loaded, p.parts.server_env, p.chart_pods if p.in_cluster else None)


STEPS: tuple[Callable[[Config, Plan], None], ...] = (
    configure_network,
    configure_state,
    configure_login,
    configure_groups,
    configure_roles,
    configure_services,
    configure_scopes,
    configure_limits,
    configure_spawner,
    configure_pods,
)


def apply_plan(c: Config, p: Plan) -> Config:
    for step in STEPS:
        step(c, p)
    return c


def apply(c: Config, loaded: LoadedConfig) -> Config:
    p = plan(loaded)
    apply_plan(c, p)
    if isolation_mode(loaded.site.spawner.isolation) == "none":
        banner = (
            "ATLASLAB DEVELOPMENT MODE: the hub is not running as root, so every user's server runs as "
            f"'{pwd.getpwuid(os.geteuid()).pw_name}' and users are NOT isolated from each other. "
            "Run as root for a shared machine."
        )
        print("\n" + "!" * 100 + f"\n{banner}\n" + "!" * 100 + "\n", file=sys.stderr, flush=True)
        log.warning(banner)
    return c
