"""Apply a site config to JupyterHub's config object, one concern per function.

Each ``configure_*`` function reads the site config and sets one area of ``c``; none reads another's
output or shared state, so each can be tested on a fresh ``Config`` and applying twice gives the same.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys

from traitlets.config import Config

from atlaslab.config import LoadedConfig
from atlaslab.tracking.hub import configure_tracking

from . import language, membership, ports, roles, scopes, services
from .accounts import server_path
from .auth import configure_authenticator
from .courses import course_services
from .grading import configure_grading
from .kube import configure_kubernetes
from .state import StateDir

log = logging.getLogger("atlaslab")

# Server extensions no user's server loads; each one is start-up time for every server (docs/benchmarks.md).
# nbgrader's formgrader and course list are instructor tools: instructors grade through their grader service
# (create_assignment is a server extension in some nbgrader versions, a JupyterLab extension in others).
STUDENT_DISABLED_EXTENSIONS = [
    "nbgrader.server_extensions.formgrader",
    "nbgrader.server_extensions.create_assignment",
    "nbgrader.server_extensions.course_list",
]
# Loaded only in the servers of course members (course:* groups): the assignment list and the validate button.
# Importing nbgrader costs ~0.2 s per start, for users who never see an assignment.
COURSE_SERVER_EXTENSIONS = [
    "nbgrader.server_extensions.assignment_list",
    "nbgrader.server_extensions.validate_assignment",
]
# jupyter_lsp serves JupyterLab's language-server features (off by default) and needs a language server; without
# one installed it only costs ~0.2 s per start, so it is loaded only when one of these modules is importable.
LANGUAGE_SERVER_MODULES = ("pylsp", "jedi_language_server")


def isolation_mode(loaded: LoadedConfig) -> str:
    wanted = loaded.site.spawner.isolation
    if wanted == "auto":
        return "system-users" if os.geteuid() == 0 else "none"
    return wanted


def configure_network(c: Config, loaded: LoadedConfig) -> None:
    site = loaded.site.site
    c.JupyterHub.bind_url = f"http://{site.bind}{site.base_url}"
    c.JupyterHub.hub_ip = "127.0.0.1"
    c.JupyterHub.hub_port = site.hub_port
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{site.proxy_api_port}"
    c.JupyterHub.template_vars = {"announcement_login": site.name}


def configure_state(c: Config, loaded: LoadedConfig, state: StateDir) -> None:
    c.JupyterHub.db_url = state.db_url
    c.JupyterHub.cookie_secret = bytes.fromhex(state.secret("cookie-secret"))
    c.ConfigurableHTTPProxy.auth_token = state.secret("proxy-token")
    c.CryptKeeper.keys = [bytes.fromhex(state.secret("crypt-key"))]
    c.JupyterHub.pid_file = str(state.run_dir / "jupyterhub.pid")
    # Restarting the hub must not stop users' servers or forget their routes.
    c.JupyterHub.cleanup_servers = False
    c.JupyterHub.cleanup_proxy = False
    c.ConfigurableHTTPProxy.should_start = False
    c.ConfigurableHTTPProxy.pid_file = str(state.run_dir / "proxy.pid")


def configure_users(c: Config, loaded: LoadedConfig) -> None:
    c.Authenticator.admin_users = set(loaded.site.site.admins)
    c.JupyterHub.admin_access = False  # admins manage servers; they do not open students' notebooks


def configure_groups(c: Config, loaded: LoadedConfig) -> None:
    c.JupyterHub.load_groups = membership.config_groups(loaded)


def configure_roles(c: Config, loaded: LoadedConfig, service_roles: list[dict]) -> None:
    c.JupyterHub.load_roles = roles.config_roles(loaded) + service_roles


def configure_spawner(c: Config, loaded: LoadedConfig, state: StateDir) -> None:
    c.JupyterHub.spawner_class = "atlaslab.hub.spawner.AtlasLabSpawner"
    c.AtlasLabSpawner.environments = {
        key: {
            "title": env.display_title(key),
            "description": env.description,
            "cpu": env.cpu,
            "memory": env.memory,
            "processes": env.processes,
            "gpu": env.gpu.model_dump(exclude_none=True) if env.gpu else None,
            "default": env.default,
        }
        for key, env in loaded.site.environments.items()
    }
    c.AtlasLabSpawner.access_rules = membership.access_rules(loaded)
    c.AtlasLabSpawner.fallback_environments = membership.default_environments(loaded)
    c.AtlasLabSpawner.isolation = isolation_mode(loaded)
    if isolation_mode(loaded) == "none" and os.geteuid() == 0:
        # Development mode run as root: Jupyter refuses root unless told; users are not isolated anyway.
        c.AtlasLabSpawner.args = ["--ServerApp.allow_root=True"]
    c.AtlasLabSpawner.home_root = str(loaded.site.spawner.home_root)
    c.AtlasLabSpawner.dev_home_root = str(state.dev_homes)
    c.AtlasLabSpawner.default_url = loaded.site.spawner.default_url
    c.AtlasLabSpawner.start_timeout = loaded.site.limits.start_timeout
    c.AtlasLabSpawner.http_timeout = loaded.site.limits.start_timeout
    # The user's server starts through AtlasLab's launcher (atlaslab/hub/singleuser.py): jupyterhub-singleuser
    # without ~1.2 s of start-up work no server uses.
    c.AtlasLabSpawner.cmd = [sys.executable, "-m", "atlaslab.hub.singleuser"]
    disabled = list(STUDENT_DISABLED_EXTENSIONS)
    if not any(importlib.util.find_spec(name) for name in LANGUAGE_SERVER_MODULES):
        disabled.append("jupyter_lsp")
    c.AtlasLabSpawner.disabled_server_extensions = disabled
    c.AtlasLabSpawner.course_server_extensions = COURSE_SERVER_EXTENSIONS
    c.AtlasLabSpawner.env_keep = ["PATH", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "LD_LIBRARY_PATH"]
    c.AtlasLabSpawner.lab_settings_root = str(language.write_settings(state.root / "lab-settings"))
    c.AtlasLabSpawner.tenant_languages = language.tenant_languages(loaded)
    c.AtlasLabSpawner.default_language = language.default_language(loaded)
    c.AtlasLabSpawner.environment = {"ATLASLAB_SITE": loaded.site.site.name, "PATH": server_path()}


def configure_credits(c: Config, loaded: LoadedConfig, state: StateDir) -> None:
    """GPU assignments and usage are kept in STATE_DIR/compute; budgets are checked when the site sets any."""
    c.AtlasLabSpawner.compute_dir = str(state.compute_dir)
    credits = loaded.site.credits
    has_budgets = bool(credits.tenants or credits.teams or credits.users or credits.default_user)
    c.AtlasLabSpawner.credits = credits if has_budgets else None
    if has_budgets:
        # The spawner's poll counts and checks running servers.
        c.AtlasLabSpawner.poll_interval = float(credits.check_every)


def configure_credits_service(c: Config, loaded: LoadedConfig) -> None:
    """Users and their servers read their own budgets, notices and GPUs from the `credits` service."""
    service = {
        "name": "credits",
        "url": f"http://127.0.0.1:{ports.service_port(loaded, ports.CREDITS)}",
        "command": [sys.executable, "-m", "atlaslab.compute.service"],
        "display": False,
        "environment": {
            "ATLASLAB_CONFIG": str(loaded.source.resolve()) if loaded.source else "",
            "PATH": server_path(),
        },
    }
    c.JupyterHub.services = scopes.replace_named(c.JupyterHub.get("services"), [service], {"credits"})
    scopes.grant_users_access(c, "credits")
    base = loaded.site.site.base_url.rstrip("/")
    current = c.AtlasLabSpawner.get("environment")
    c.AtlasLabSpawner.environment = {
        **(current if isinstance(current, dict) else {}),
        "ATLASLAB_CREDITS_URL": f"{service['url']}{base}/services/credits/",
    }


def configure_limits(c: Config, loaded: LoadedConfig) -> None:
    lim = loaded.site.limits
    c.JupyterHub.active_server_limit = lim.max_servers
    c.JupyterHub.concurrent_spawn_limit = lim.concurrent_spawns
    # The workbench panel (atlaslab/workbench) shows the time left before the idle cull and the user's courses:
    # it reads the user's own model (last_activity, groups) with the server's token.
    culled = bool(loaded.site.services.idle_culler and lim.idle_cull_after)
    current = c.AtlasLabSpawner.get("environment")
    c.AtlasLabSpawner.environment = {
        **(current if isinstance(current, dict) else {}),
        "ATLASLAB_IDLE_CULL_AFTER": str(int(lim.idle_cull_after) if culled else 0),
    }
    c.Spawner.server_token_scopes = scopes.with_scope(
        c.Spawner.get("server_token_scopes"), scopes.SERVER_TOKEN_SCOPES, "read:users!user"
    )


def configure_services(c: Config, loaded: LoadedConfig, state: StateDir) -> list[dict]:
    """Set the services; return the roles they need (roles are loaded together in configure_roles)."""
    pairs = [services.cli_service(state)]
    for optional in (services.idle_culler_service(loaded), services.metrics_service(loaded, state)):
        if optional:
            pairs.append(optional)
    pairs += services.extra_services(loaded)
    pairs += course_services(loaded, state)
    c.JupyterHub.services = [service for service, _ in pairs]
    c.JupyterHub.authenticate_prometheus = True
    return [role for _, role in pairs if role]


def apply(c: Config, loaded: LoadedConfig) -> Config:
    state = StateDir(loaded.state_dir).ensure()
    configure_network(c, loaded)
    configure_state(c, loaded, state)
    configure_users(c, loaded)
    configure_authenticator(c, loaded, state)
    configure_groups(c, loaded)
    configure_spawner(c, loaded, state)
    configure_credits(c, loaded, state)
    configure_kubernetes(c, loaded)
    configure_limits(c, loaded)
    configure_roles(c, loaded, configure_services(c, loaded, state))
    configure_grading(c, loaded, state)
    configure_credits_service(c, loaded)
    configure_tracking(c, loaded, state)
    if isolation_mode(loaded) == "none":
        banner = (
            "ATLASLAB DEVELOPMENT MODE: the hub is not running as root, so every user's server runs as "
            f"'{_whoami()}' and users are NOT isolated from each other. Run as root for a shared machine."
        )
        print("\n" + "!" * 100 + f"\n{banner}\n" + "!" * 100 + "\n", file=sys.stderr, flush=True)
        log.warning(banner)
    return c


def _whoami() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name
