"""The pure functions from site config to JupyterHub settings, tested without a hub."""

from __future__ import annotations

import re
import stat
import sys
from pathlib import Path

import pytest
from traitlets.config import Config

from atlaslab.config import LoadedConfig, load, parse
from atlaslab.core import accounts, membership
from atlaslab.core.accounts import MAX_LEN, system_username
from atlaslab.core.state import StateDir
from atlaslab.hub import apply as apply_mod
from atlaslab.hub import roles, services

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "examples" / "atlaslab.yaml"
ORDER = ["cpu-small", "cpu-large", "gpu-slice", "gpu-shared", "gpu-full", "gpu-2x"]
LINUX_NAME = re.compile(r"^[a-z_][a-z0-9_-]*$")


@pytest.fixture(scope="module")
def example() -> LoadedConfig:
    return load(EXAMPLE)


def with_state_dir(loaded: LoadedConfig, state_dir: Path) -> LoadedConfig:
    site = loaded.site.model_copy(update={"site": loaded.site.site.model_copy(update={"state_dir": state_dir})})
    return LoadedConfig(site=site, source=loaded.source, rosters=loaded.rosters)


# ---------------------------------------------------------------------------------------------------------
# membership


def test_config_groups_of_the_example(example: LoadedConfig) -> None:
    groups = membership.config_groups(example)
    assert groups["atlaslab:admins"] == {"users": ["admin"], "properties": {"kind": "admins"}}
    assert groups["tenant:school-1337-bg"] == {
        "users": ["ybenali", "hamrani", "amina", "youssef", "salim"],
        "properties": {"kind": "tenant", "tenant": "school-1337-bg", "title": "1337 Benguerir"},
    }
    assert groups["tenant:school-1337-kh"]["users"] == []
    assert groups["tenant:aljazari-gon"]["users"] == ["fzahra", "aitbrahim", "elidrissi"]
    assert groups["tenant:rd-atlas"]["users"] == ["kamal", "salma"]
    assert groups["tenant:rd-atlas:admins"] == {
        "users": ["kamal"],
        "properties": {"kind": "tenant-admins", "tenant": "rd-atlas"},
    }
    assert groups["tenant:startup-argan"]["users"] == ["rachid"]
    assert groups["course:ml-foundations:students"] == {
        "users": ["amina", "youssef", "salim"],
        "properties": {"kind": "course-students", "course": "ml-foundations"},
    }
    assert groups["course:ml-foundations:instructors"]["users"] == ["ybenali"]
    assert groups["course:ml-foundations:tas"]["users"] == ["hamrani"]
    assert groups["course:agri-ai:students"]["users"] == ["aitbrahim", "elidrissi"]
    assert groups["course:agri-ai:tas"]["users"] == []
    assert groups["team:darija-llm"] == {
        "users": ["kamal", "salma"],
        "properties": {"kind": "team", "team": "darija-llm", "tenant": "rd-atlas"},
    }
    for name, group in groups.items():
        assert len(group["users"]) == len(set(group["users"])), f"{name} lists a user twice"


def test_config_groups_is_stable(example: LoadedConfig) -> None:
    assert membership.config_groups(example) == membership.config_groups(example)


def test_known_users_and_tenants_of(example: LoadedConfig) -> None:
    assert membership.known_users(example) == {
        "admin",
        "ybenali",
        "hamrani",
        "amina",
        "youssef",
        "salim",
        "fzahra",
        "aitbrahim",
        "elidrissi",
        "kamal",
        "salma",
        "rachid",
    }
    assert membership.tenants_of(example, ["tenant:rd-atlas", "team:darija-llm", "tenant:nope"]) == ["rd-atlas"]
    assert membership.tenants_of(example, []) == []


def test_access_rules_of_the_example(example: LoadedConfig) -> None:
    rules = membership.access_rules(example)
    assert rules["tenant:school-1337-bg"] == ["cpu-small", "gpu-shared"]
    assert rules["tenant:aljazari-gon"] == ["cpu-small", "cpu-large", "gpu-slice"]
    assert rules["tenant:rd-atlas"] == ["cpu-large", "gpu-full", "gpu-2x"]
    assert rules["course:ml-foundations:students"] == []
    assert rules["team:darija-llm"] == []
    assert all(isinstance(v, list) for v in rules.values())


def test_access_rules_from_courses_and_teams() -> None:
    loaded = parse(
        """
environments: {cpu: {default: true}, gpu: {gpu: {count: 1}}, big: {}}
tenants: {s: {title: S, environments: [cpu]}}
courses: {dl: {title: DL, tenant: s, environments: [gpu, gpu]}}
teams: {t: {tenant: s, environments: [big]}}
"""
    )
    rules = membership.access_rules(loaded)
    assert rules == {
        "tenant:s": ["cpu"],
        "course:dl:students": ["gpu"],
        "course:dl:instructors": ["gpu"],
        "course:dl:tas": ["gpu"],
        "team:t": ["big"],
    }


def test_allowed_environments(example: LoadedConfig) -> None:
    rules = membership.access_rules(example)
    fallback = membership.default_environments(example)
    assert fallback == ["cpu-small"]

    def allowed(groups: list[str], admin: bool = False) -> list[str]:
        return membership.allowed_environments(ORDER, rules, groups, admin=admin, fallback=fallback)

    # Admins may start anything, in the site's order.
    assert allowed([], admin=True) == ORDER
    # A student of 1337 Benguerir: the tenant's environments, in the site's order (not the rule's).
    assert allowed(["tenant:school-1337-bg", "course:ml-foundations:students"]) == ["cpu-small", "gpu-shared"]
    # Several groups: the union.
    assert allowed(["tenant:rd-atlas", "tenant:aljazari-gon"]) == [
        "cpu-small",
        "cpu-large",
        "gpu-slice",
        "gpu-full",
        "gpu-2x",
    ]
    # No tenant at all: the fallback only.
    assert allowed([]) == ["cpu-small"]
    assert allowed(["some-other-group"]) == ["cpu-small"]
    # In a tenant: no fallback on top of what the tenant grants.
    assert allowed(["tenant:startup-argan"]) == ["cpu-large", "gpu-full"]
    assert "cpu-small" not in allowed(["tenant:rd-atlas"])


def test_allowed_environments_of_a_tenant_with_none_and_unknown_rules() -> None:
    assert membership.allowed_environments(["a", "b"], {"tenant:x": []}, ["tenant:x"], fallback=["a"]) == []
    assert membership.allowed_environments(["a"], {"team:t": ["zzz", "a"]}, ["team:t"]) == ["a"]
    assert membership.allowed_environments(["a", "b"], {}, [], admin=True, fallback=["a"]) == ["a", "b"]


def test_default_environments_without_a_marked_default() -> None:
    loaded = parse("environments: {first: {}, second: {}}\n")
    assert membership.default_environments(loaded) == ["first"]
    loaded = parse("environments: {first: {}, second: {default: true}}\n")
    assert membership.default_environments(loaded) == ["second"]


# ---------------------------------------------------------------------------------------------------------
# roles


def test_roles_of_the_example(example: LoadedConfig) -> None:
    config_roles = roles.config_roles(example)
    names = [r["name"] for r in config_roles]
    # Only tenants with admins get a tenant-admin role; every course gets a staff role.
    assert names == ["tenant-admin.rd-atlas", "course-staff.ml-foundations", "course-staff.agri-ai"]
    by_name = {r["name"]: r for r in config_roles}
    assert by_name["tenant-admin.rd-atlas"]["groups"] == ["tenant:rd-atlas:admins"]
    assert by_name["course-staff.ml-foundations"]["groups"] == [
        "course:ml-foundations:instructors",
        "course:ml-foundations:tas",
    ]


def test_every_staff_scope_is_filtered_to_its_own_group(example: LoadedConfig) -> None:
    for role in roles.config_roles(example):
        for scope in role["scopes"]:
            if scope == "admin-ui":
                continue
            assert "!group=" in scope, f"{role['name']} has an unfiltered scope {scope}"
            group = scope.split("!group=", 1)[1]
            if role["name"].startswith("tenant-admin."):
                assert group == f"tenant:{role['name'].removeprefix('tenant-admin.')}"
            else:
                assert group == f"course:{role['name'].removeprefix('course-staff.')}:students"
        assert "users" not in role, "roles are granted through groups, never to named users"


def test_course_staff_can_read_but_not_act(example: LoadedConfig) -> None:
    staff = roles.course_staff_role("ml-foundations")
    assert not any(s.startswith(("servers", "admin:", "access:", "delete:")) for s in staff["scopes"])
    admin = roles.tenant_admin_role("rd-atlas")
    assert "servers!group=tenant:rd-atlas" in admin["scopes"]
    assert not any(s.startswith(("admin:", "access:")) for s in admin["scopes"])


def test_a_student_has_no_extra_role(example: LoadedConfig) -> None:
    groups = membership.config_groups(example)
    student_groups = {g for g, v in groups.items() if "amina" in v["users"]}
    assert student_groups == {"tenant:school-1337-bg", "course:ml-foundations:students"}
    for role in roles.config_roles(example):
        assert not set(role["groups"]) & student_groups, f"{role['name']} reaches a student"


# ---------------------------------------------------------------------------------------------------------
# apply: each configure_* on a fresh Config


def step(fn, loaded: LoadedConfig, state: StateDir) -> Config:
    """One step of apply, on a fresh Config, from the plan of ``loaded`` with its state in ``state``."""
    c = Config()
    fn(c, apply_mod.plan(with_state_dir(loaded, state.root)))
    return c


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    return StateDir(tmp_path / "state").ensure()


def test_configure_network(example: LoadedConfig, state: StateDir) -> None:
    c = step(apply_mod.configure_network, example, state)
    assert c.JupyterHub.bind_url == "http://127.0.0.1:8000/"
    assert c.JupyterHub.hub_ip == "127.0.0.1"
    assert c.JupyterHub.hub_port == 8081
    assert c.ConfigurableHTTPProxy.api_url == "http://127.0.0.1:8001"


def test_configure_groups_and_roles(example: LoadedConfig, state: StateDir) -> None:
    c = step(apply_mod.configure_groups, example, state)
    assert c.JupyterHub.load_groups == membership.config_groups(example)
    c = step(apply_mod.configure_roles, example, state)
    service_roles = services.hub_part(example, state).roles
    assert c.JupyterHub.load_roles[: len(roles.config_roles(example))] == roles.config_roles(example)
    assert all(r in c.JupyterHub.load_roles for r in service_roles)


def test_configure_login(example: LoadedConfig, state: StateDir) -> None:
    c = step(apply_mod.configure_login, example, state)
    assert c.Authenticator.admin_users == {"admin"}
    assert c.JupyterHub.admin_access is False


def test_configure_limits(example: LoadedConfig, state: StateDir) -> None:
    c = step(apply_mod.configure_limits, example, state)
    assert c.JupyterHub.active_server_limit == 200
    assert c.JupyterHub.concurrent_spawn_limit == 100


def test_configure_spawner(example: LoadedConfig, state: StateDir, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accounts.os, "geteuid", lambda: 0)
    c = step(apply_mod.configure_spawner, example, state)
    s = c.AtlasLabSpawner
    assert c.JupyterHub.spawner_class == "atlaslab.hub.spawner.AtlasLabSpawner"
    assert list(s.environments) == ORDER
    small = s.environments["cpu-small"]
    assert small.display_title("cpu-small") == "CPU - small"
    assert small.description == "1 core, 2 GB: exercises and course notebooks"
    assert (small.cpu, small.memory, small.processes, small.gpu, small.default) == (1.0, 2 * 1024**3, 512, None, True)
    assert s.environments["gpu-slice"].gpu.model_dump(exclude_none=True) == {"mig": "1g.10gb"}
    assert s.environments["gpu-2x"].gpu.model_dump(exclude_none=True) == {"count": 2}
    assert s.environments["gpu-2x"].memory == 128 * 1024**3
    assert s.access_rules == membership.access_rules(example)
    assert s.fallback_environments == ["cpu-small"]
    assert s.isolation == "system-users"
    assert s.home_root == "/home"
    assert s.dev_home_root == str(state.dev_homes)
    assert s.default_url == "/lab"
    assert s.start_timeout == s.http_timeout == 120
    assert s.environment["ATLASLAB_SITE"] == "Atlas AI Lab - Benguerir"
    # Users run this venv's tools first, and nothing under /root (unreadable to them).
    path = s.environment["PATH"].split(":")
    assert path[0] == str(Path(sys.executable).parent) and not any(p.startswith("/root") for p in path)


def test_isolation_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    auto = parse("{}").site.spawner.isolation
    monkeypatch.setattr(accounts.os, "geteuid", lambda: 0)
    assert accounts.isolation_mode(auto) == "system-users"
    monkeypatch.setattr(accounts.os, "geteuid", lambda: 1000)
    assert accounts.isolation_mode(auto) == "none"
    assert accounts.isolation_mode(parse("spawner: {isolation: system-users}").site.spawner.isolation) == "system-users"


def test_configure_services_with_the_idle_culler(example: LoadedConfig, state: StateDir) -> None:
    c = step(apply_mod.configure_services, example, state)
    service_roles = services.hub_part(example, state).roles
    by_service = {s["name"]: s for s in c.JupyterHub.services}
    # The hub's own services, then the features' (the example site's two courses each get a formgrader service
    # named after the course).
    assert list(by_service)[:3] == ["atlaslab-cli", "idle-culler", "prometheus"]
    assert {"ml-foundations", "agri-ai", "exchange", "autograder", "credits"} <= set(by_service)
    services_ = by_service
    culler = services_["idle-culler"]["command"]
    assert culler[:3] == [sys.executable, "-m", "jupyterhub_idle_culler"]
    assert "--timeout=3600" in culler
    assert "--cull-every=300" in culler
    assert not any(arg.startswith("--max-age") for arg in culler)
    assert services_["prometheus"]["api_token"] == state.secret("metrics-token")
    assert services_["atlaslab-cli"]["api_token"] == state.secret("cli-token")
    assert c.JupyterHub.authenticate_prometheus is True
    assert [r["name"] for r in service_roles] == ["atlaslab-cli", "atlaslab-idle-culler", "atlaslab-metrics"]
    all_roles = step(apply_mod.configure_roles, example, state).JupyterHub.load_roles
    assert {"formgrader.ml-foundations", "formgrader.agri-ai"} <= {r["name"] for r in all_roles}
    by_name = {r["name"]: r for r in service_roles}
    assert by_name["atlaslab-metrics"]["scopes"] == ["read:metrics"]
    assert "delete:servers" in by_name["atlaslab-idle-culler"]["scopes"]


def test_idle_culler_follows_the_limits(state: StateDir) -> None:
    def culler(text: str) -> list[str] | None:
        part = services.hub_part(parse(text), state)
        return next((s["command"] for s in part.services if s["name"] == "idle-culler"), None)

    command = culler("limits: {idle_cull_after: 30m, max_server_age: 8h}")
    assert command is not None
    assert "--timeout=1800" in command and "--cull-every=180" in command and "--max-age=28800" in command
    command = culler("limits: {idle_cull_after: 1m}")
    assert command is not None and "--cull-every=10" in command
    assert culler("limits: {idle_cull_after: 0}") is None
    assert culler("services: {idle_culler: false}") is None
    command = culler("limits: {idle_cull_after: 0, max_server_age: 1d}")
    assert command is not None and "--timeout=86400" in command and "--max-age=86400" in command


def test_extra_services_and_no_metrics(state: StateDir) -> None:
    loaded = parse(
        """
services:
  metrics: false
  extra:
    - {name: tensorboard, command: [tensorboard, --logdir, runs], port: 5000, scopes: [read:users], environment: {A: b}}
    - {name: quiet, command: [sleep, infinity]}
"""
    )
    part = services.hub_part(loaded, state)
    service_roles = list(part.roles)
    by_name = {s["name"]: s for s in part.services}
    assert list(by_name) == ["atlaslab-cli", "idle-culler", "tensorboard", "quiet"]
    assert by_name["tensorboard"] == {
        "name": "tensorboard",
        "command": ["tensorboard", "--logdir", "runs"],
        "environment": {"A": "b"},
        "url": "http://127.0.0.1:5000",
    }
    assert "url" not in by_name["quiet"]
    assert {"name": "service-tensorboard", "scopes": ["read:users"], "services": ["tensorboard"]} in service_roles
    assert not any(r["name"] == "service-quiet" for r in service_roles)


@pytest.mark.parametrize("fn", apply_mod.STEPS, ids=lambda fn: fn.__name__)
def test_each_step_is_idempotent(fn, example: LoadedConfig, tmp_path: Path) -> None:
    p = apply_mod.plan(with_state_dir(example, tmp_path / "state"))
    once, again = Config(), Config()
    fn(once, p)
    fn(again, p)
    fn(again, p)
    assert once == again


def test_steps_give_the_same_config_in_any_order(example: LoadedConfig, tmp_path: Path) -> None:
    """No step reads or merges into another's output: every order of the steps gives one config."""
    p = apply_mod.plan(with_state_dir(example, tmp_path / "state"))
    reference = apply_mod.apply_plan(Config(), p)
    orders = [list(reversed(apply_mod.STEPS))] + [
        [*apply_mod.STEPS[i:], *apply_mod.STEPS[:i]] for i in range(1, len(apply_mod.STEPS))
    ]
    for order in orders:
        c = Config()
        for fn in order:
            fn(c, p)
        assert c == reference, [fn.__name__ for fn in order]


def test_steps_set_disjoint_traits(example: LoadedConfig, tmp_path: Path) -> None:
    """Each trait has one owner: a step that set another's trait would make the order matter again."""
    p = apply_mod.plan(with_state_dir(example, tmp_path / "state"))
    owner: dict[tuple[str, str], str] = {}
    for fn in apply_mod.STEPS:
        c = Config()
        fn(c, p)
        for section, values in c.items():
            for key in values:
                assert (section, key) not in owner, f"{section}.{key}: {owner[(section, key)]} and {fn.__name__}"
                owner[(section, key)] = fn.__name__


def test_configure_state_creates_private_secrets(example: LoadedConfig, tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state").ensure()
    c = step(apply_mod.configure_state, with_state_dir(example, tmp_path / "state"), state)
    assert c.JupyterHub.db_url == f"sqlite:///{tmp_path / 'state' / 'jupyterhub.sqlite'}"
    assert c.JupyterHub.cookie_secret == bytes.fromhex(state.secret("cookie-secret"))
    assert len(c.JupyterHub.cookie_secret) == 32
    assert c.ConfigurableHTTPProxy.auth_token == state.secret("proxy-token")
    assert c.JupyterHub.cleanup_servers is False and c.JupyterHub.cleanup_proxy is False
    assert c.ConfigurableHTTPProxy.should_start is False


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_apply_writes_private_secrets_and_reuses_them(example: LoadedConfig, tmp_path: Path) -> None:
    loaded = with_state_dir(example, tmp_path / "state")
    first = apply_mod.apply(Config(), loaded)
    secrets_dir = tmp_path / "state" / "secrets"
    files = sorted(p.name for p in secrets_dir.iterdir())
    assert {"cookie-secret", "proxy-token", "crypt-key", "cli-token", "metrics-token"} <= set(files)
    assert not any(name.endswith(".tmp") for name in files)
    # The root is traversable only (grader accounts reach their course dirs); what is in it stays private.
    assert mode(tmp_path / "state") == 0o711
    for d in (secrets_dir, tmp_path / "state" / "run", tmp_path / "state" / "logs"):
        assert mode(d) == 0o700, d
    for f in secrets_dir.iterdir():
        assert mode(f) == 0o600, f
        assert f.read_text().strip()
    before = {f.name: f.read_text() for f in secrets_dir.iterdir()}

    second = apply_mod.apply(Config(), loaded)
    assert {f.name: f.read_text() for f in secrets_dir.iterdir()} == before
    assert first.JupyterHub.cookie_secret == second.JupyterHub.cookie_secret
    assert first.ConfigurableHTTPProxy.auth_token == second.ConfigurableHTTPProxy.auth_token
    assert first.CryptKeeper["keys"] == second.CryptKeeper["keys"]  # `.keys` is the dict method
    assert first.JupyterHub.services == second.JupyterHub.services
    assert first.JupyterHub.load_groups == second.JupyterHub.load_groups
    assert first.JupyterHub.load_roles == second.JupyterHub.load_roles
    assert plain(first) == plain(second)


def plain(c: Config) -> dict:
    """The config as plain data (hooks compare by value)."""
    return {section: dict(values) for section, values in c.items() if isinstance(values, Config)}


def test_apply_sets_the_limits_and_services(example: LoadedConfig, tmp_path: Path) -> None:
    c = apply_mod.apply(Config(), with_state_dir(example, tmp_path / "state"))
    assert c.JupyterHub.active_server_limit == 200
    assert c.JupyterHub.concurrent_spawn_limit == 100
    assert [s["name"] for s in c.JupyterHub.services][:3] == ["atlaslab-cli", "idle-culler", "prometheus"]
    assert {r["name"] for r in c.JupyterHub.load_roles} >= {
        "tenant-admin.rd-atlas",
        "course-staff.ml-foundations",
        "atlaslab-idle-culler",
        "atlaslab-metrics",
        "atlaslab-cli",
    }
    assert c.JupyterHub.load_groups == membership.config_groups(example)


# ---------------------------------------------------------------------------------------------------------
# system account names


def test_valid_names_stay_readable() -> None:
    assert system_username("amina") == "jupyter-amina"
    assert system_username("a-b") == "jupyter-a-b"
    assert system_username("salma_2") == "jupyter-salma_2"


NAMES = [
    "a.b",
    "a-b",
    "a_b",
    "A-b",
    "Amina",
    "amina",
    "user@um6p.ma",
    "user-um6p-ma",
    "oidc:amina",
    "oidc-amina",
    "x" * 24,
    "x" * 25,
    "x" * 40,
    "x" * 41,
    "x" * 128,
    "1337",
    "élève",
    "a+b",
]


@pytest.mark.parametrize("name", NAMES)
def test_system_names_are_valid_linux_names(name: str) -> None:
    account = system_username(name)
    assert LINUX_NAME.match(account), account
    assert len(account) <= MAX_LEN == 32
    assert account.startswith("jupyter-")
    assert system_username(name) == account


def test_no_two_hub_names_share_an_account() -> None:
    accounts = [system_username(n) for n in NAMES]
    assert len(set(accounts)) == len(NAMES), sorted(zip(accounts, NAMES, strict=True))


def test_long_names_are_truncated_with_a_hash() -> None:
    long = system_username("x" * 40)
    assert len(long) == 32
    assert long.startswith("jupyter-xxxxxxxxx")
    assert re.search(r"-[0-9a-f]{6}$", long)
    assert system_username("x" * 40) != system_username("x" * 41)
    assert len(system_username("x" * 24)) == 32 and system_username("x" * 24) == "jupyter-" + "x" * 24


def test_a_chosen_name_cannot_take_over_a_hashed_account() -> None:
    for victim in ("a.b", "Amina", "x" * 40, "oidc:amina"):
        account = system_username(victim)
        assert system_username(account.removeprefix("jupyter-")) != account
