"""Tracking without a hub: the permission rules, the site config and what configure_tracking adds to the hub."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from traitlets.config import Config

from atlaslab.config import ConfigError, parse
from atlaslab.hub.state import StateDir
from atlaslab.tracking import hub as tracking_hub
from atlaslab.tracking import policy
from atlaslab.tracking.policy import Member, Refused

ALICE = Member.from_groups("alice", ["team:vision", "course:algebra:students", "tenant:lab"])
TEACH = Member.from_groups("teach", ["course:algebra:instructors"])
TA = Member.from_groups("ta", ["course:algebra:tas"])
BOB = Member.from_groups("bob", ["team:nlp"])
ROOT = Member.from_groups("root", [], admin=True)
STUDENTS = {"algebra": {"alice"}}


def students(course: str) -> set[str]:
    return STUDENTS.get(course, set())


def test_member_from_groups() -> None:
    assert ALICE.teams == {"vision"} and ALICE.student_of == {"algebra"} and not ALICE.staff_of
    assert TEACH.staff_of == {"algebra"} and TA.staff_of == {"algebra"}
    assert Member.from_groups("x", ["atlaslab:admins"]).admin
    assert not Member.from_groups("x", ["team:"]).teams


@pytest.mark.parametrize(
    ("member", "owner", "course", "expected"),
    [
        (ALICE, "user:alice", None, "MANAGE"),
        (BOB, "user:alice", None, None),
        (ALICE, "team:vision", None, "MANAGE"),
        (BOB, "team:vision", None, None),
        (TEACH, "user:alice", "algebra", "READ"),  # a student's course work: their instructor reads it
        (TA, "user:alice", "algebra", "READ"),
        (TEACH, "user:alice", None, None),  # not course work: private
        (TEACH, "user:bob", "algebra", None),  # bob is not a student of algebra: the tag proves nothing
        (ALICE, "course:algebra", None, "READ"),  # what the course shares
        (TEACH, "course:algebra", None, "MANAGE"),
        (BOB, "course:algebra", None, None),
        (ALICE, "nonsense", None, None),
    ],
)
def test_level(member: Member, owner: str, course: str | None, expected: str | None) -> None:
    assert policy.level(member, owner, course, students) == expected


def test_namespaces() -> None:
    assert policy.namespace_owner(ALICE, "users/alice/x") == ("user:alice", None)
    assert policy.namespace_owner(ALICE, "teams/vision/x") == ("team:vision", None)
    assert policy.namespace_owner(ALICE, "courses/algebra/alice/hw1") == ("user:alice", "algebra")
    assert policy.namespace_owner(TEACH, "courses/algebra/notes") == ("course:algebra", None)
    assert policy.namespace_owner(ROOT, "teams/nlp/x") == ("team:nlp", None)
    assert policy.namespace_owner(ALICE, "my-experiment") is None
    assert policy.namespace_owner(ALICE, "teams/vision") is None  # two segments: not a namespace
    for name in ("users/bob/x", "teams/nlp/x", "courses/algebra/hw1", "courses/algebra/bob/hw", "courses/bio/a/b"):
        with pytest.raises(Refused):
            policy.namespace_owner(ALICE, name)


def test_creation_owner() -> None:
    assert policy.creation_owner(ALICE, "plain", {}) == ("user:alice", None)
    assert policy.creation_owner(ALICE, "plain", {policy.OWNER_TAG: "team:vision"}) == ("team:vision", None)
    assert policy.creation_owner(ALICE, None, {policy.OWNER_TAG: "team:vision"}) == ("team:vision", None)
    with pytest.raises(Refused):
        policy.creation_owner(ALICE, "plain", {policy.OWNER_TAG: "team:nlp"})
    with pytest.raises(Refused):
        policy.creation_owner(ALICE, None, {policy.OWNER_TAG: "user:bob"})
    with pytest.raises(Refused):
        policy.creation_owner(ALICE, "plain", {policy.OWNER_TAG: "course:algebra"})  # students do not own courses
    with pytest.raises(Refused):
        policy.creation_owner(BOB, "plain", {policy.COURSE_TAG: "algebra"})
    with pytest.raises(Refused):  # the name and the tag disagree
        policy.creation_owner(ALICE, "teams/vision/x", {policy.OWNER_TAG: "user:alice"})
    assert policy.creation_owner(ROOT, "plain", {policy.OWNER_TAG: "team:nlp"}) == ("team:nlp", None)


def test_owner_values() -> None:
    assert ALICE.owner_values() == {"user:alice", "team:vision", "course:algebra"}


# ---- config ----------------------------------------------------------------------------------------------


def site(tmp_path: Path, tracking: str) -> str:
    return f"site:\n  state_dir: {tmp_path / 'state'}\ntracking:\n{tracking}"


@pytest.mark.parametrize(
    ("tracking", "fragment"),
    [
        ("  enabled: yes-please\n", "tracking.enabled"),
        ("  enabled: true\n  artifacts: /var/data\n", "tracking.artifacts"),
        ("  enabled: true\n  permision_cache: 5s\n", "permision_cache"),
        ("  enabled: true\n  permission_cache: soon\n", "tracking.permission_cache"),
        ("  enabled: true\n  s3_endpoint_url: http://minio:9000\n", "need `artifacts`"),
        (
            "  enabled: true\n  artifacts: s3://bucket/mlflow\n  s3_access_key_id: {env: ATLASLAB_TEST_K}\n",
            "s3_secret_access_key",
        ),
        ("  enabled: true\n  database: {env: ATLASLAB_TEST_NEVER_SET_SECRET}\n", "ATLASLAB_TEST_NEVER_SET_SECRET"),
    ],
)
def test_bad_tracking_config_is_one_clear_line(tmp_path: Path, tracking: str, fragment: str) -> None:
    os.environ.pop("ATLASLAB_TEST_NEVER_SET_SECRET", None)
    with pytest.raises(ConfigError) as err:
        parse(site(tmp_path, tracking), source=tmp_path / "atlaslab.yaml")
    message = str(err.value)
    assert fragment in message, message
    assert "Traceback" not in message
    assert all(line.count(":") >= 2 for line in message.splitlines()), message  # file: path: what to do


def test_database_that_is_not_a_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLASLAB_TEST_TRACKING_DB", "my-database")
    with pytest.raises(ConfigError) as err:
        parse(site(tmp_path, "  enabled: true\n  database: {env: ATLASLAB_TEST_TRACKING_DB}\n"))
    assert "SQLAlchemy URL" in str(err.value) and "my-database" not in str(err.value)  # never echo secrets


def test_configure_tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking_hub, "ensure_service_account", lambda *a: None)
    loaded = parse(site(tmp_path, "  enabled: true\n  permission_cache: 3s\n"), source=tmp_path / "a.yaml")
    state = StateDir(loaded.state_dir).ensure()
    c = Config()
    c.JupyterHub.services = [{"name": "other"}]
    c.Spawner.server_token_scopes = ["users:activity!user", "access:servers!server", "x"]
    tracking_hub.configure_tracking(c, loaded, state)
    tracking_hub.configure_tracking(c, loaded, state)  # twice gives the same
    names = [s["name"] for s in c.JupyterHub.services]
    assert names == ["other", "mlflow"]
    service = c.JupyterHub.services[1]
    assert service["url"] == f"http://127.0.0.1:{loaded.site.site.service_ports + 2}"
    assert service["environment"]["ATLASLAB_MLFLOW_CACHE_TTL"] == "3"
    assert service["environment"]["ATLASLAB_MLFLOW_BACKEND"].startswith("sqlite:///")
    assert service["oauth_no_confirm"] is True
    assert [r["name"] for r in c.JupyterHub.load_roles] == ["atlaslab-mlflow"]
    assert c.JupyterHub.extra_user_scopes == ["access:services!service=mlflow"]
    assert c.Spawner.server_token_scopes == [
        "users:activity!user",
        "access:servers!server",
        "x",
        tracking_hub.ACCESS_SCOPE,
    ]
    for name in ("mlflow-token", "mlflow-flask-secret"):
        mode = stat.S_IMODE(os.stat(state.secret_path(name)).st_mode)
        assert mode == 0o600, oct(mode)
    assert stat.S_IMODE(os.stat(state.root / "mlflow").st_mode) == 0o700
    env = c.AtlasLabSpawner.environment
    assert env["MLFLOW_TRACKING_URI"].endswith("/services/mlflow")
    assert env["MLFLOW_ENABLE_ASYNC_LOGGING"] == "true"

    class FakeSpawner:
        api_token = "server-token"

        class user:
            name = "alice"

    assert env["MLFLOW_TRACKING_TOKEN"](FakeSpawner) == "server-token"
    assert env["MLFLOW_EXPERIMENT_NAME"](FakeSpawner) == "users/alice/default"


def test_tracking_off_adds_nothing(tmp_path: Path) -> None:
    loaded = parse(f"site:\n  state_dir: {tmp_path / 'state'}\n")
    c = Config()
    tracking_hub.configure_tracking(c, loaded, StateDir(loaded.state_dir).ensure())
    assert "services" not in c.JupyterHub and "environment" not in c.AtlasLabSpawner
    assert not (tmp_path / "state" / "mlflow").exists()


def test_no_package_named_mlflow_in_the_repository() -> None:
    assert not (Path(__file__).resolve().parent.parent / "mlflow" / "__init__.py").exists()
