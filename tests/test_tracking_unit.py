"""Tracking without a hub: the permission rules, the site config and what configure_tracking adds to the hub."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from atlaslab.config import ConfigError, parse
from atlaslab.core.hubpart import merge
from atlaslab.core.state import StateDir
from atlaslab.tracking import hubpart as tracking_hub
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
    part = tracking_hub.hub_part(loaded, state)
    assert part == tracking_hub.hub_part(loaded, state)  # twice gives the same
    assert [s["name"] for s in part.services] == ["mlflow"]
    service = part.services[0]
    assert service["url"] == f"http://127.0.0.1:{loaded.site.site.service_ports + 2}"
    assert service["environment"]["ATLASLAB_MLFLOW_CACHE_TTL"] == "3"
    assert service["environment"]["ATLASLAB_MLFLOW_BACKEND"].startswith("sqlite:///")
    assert service["oauth_no_confirm"] is True
    assert [r["name"] for r in part.roles] == ["atlaslab-mlflow"]
    assert part.user_scopes == ("access:services!service=mlflow",)
    assert part.server_scopes == (tracking_hub.ACCESS_SCOPE,)
    # Assembled with the other features, users' server tokens keep JupyterHub's defaults and gain MLflow's.
    merged = merge([part]).server_scopes
    assert merged == ["users:activity!user", "access:servers!server", tracking_hub.ACCESS_SCOPE]
    for name in ("mlflow-token", "mlflow-flask-secret"):
        mode = stat.S_IMODE(os.stat(state.secret_path(name)).st_mode)
        assert mode == 0o600, oct(mode)
    assert stat.S_IMODE(os.stat(state.root / "mlflow").st_mode) == 0o700
    env = part.server_env
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
    part = tracking_hub.hub_part(loaded, StateDir(loaded.state_dir).ensure())
    assert not part.services and not part.server_env and not part.user_scopes
    assert not (tmp_path / "state" / "mlflow").exists()


def test_no_package_named_mlflow_in_the_repository() -> None:
    assert not (Path(__file__).resolve().parent.parent / "mlflow" / "__init__.py").exists()


# ---- the run redaction MLflow's auth app does, and the check in front of it (atlaslab.tracking.redaction) ----


def _code_strings(code) -> tuple[set[str], set[str]]:
    """(string constants, global and attribute names) used by a function, its comprehensions included."""
    consts, names = set(), set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, str):
            consts.add(const)
        elif hasattr(const, "co_consts"):
            inner_consts, inner_names = _code_strings(const)
            consts |= inner_consts
            names |= inner_names
    return consts, names


def test_mlflow_run_redaction_reads_only_the_fields_the_check_looks_for() -> None:
    """The check skips MLflow's redactor when none of MODEL_LINK_FIELDS occurs: a later MLflow that withholds
    something else from runs must make this fail, not silently leave that field unredacted."""
    import mlflow.server.auth as mlflow_auth

    from atlaslab.tracking.redaction import MODEL_LINK_FIELDS

    fields, _ = _code_strings(mlflow_auth._withhold_denied_run_model_links.__code__)
    assert fields == set(MODEL_LINK_FIELDS)
    _, called = _code_strings(mlflow_auth._redact_run_response.__code__)
    assert {name for name in called if name.startswith("_withhold")} == {"_withhold_denied_run_model_links"}
    for redactor in (mlflow_auth.redact_search_runs_model_links, mlflow_auth.redact_get_run_model_links):
        _, called = _code_strings(redactor.__code__)
        assert "_redact_run_response" in called and not {n for n in called if n.startswith(("_withhold", "filter"))}
    # metric history: MLflow's redactor clears the field _METRIC_SIBLING_FIELD names for logged models, and only that
    _, called = _code_strings(mlflow_auth.redact_metric_history_model_ids.__code__)
    assert {name for name in called if name.startswith("_withhold")} == {"_withhold_denied_metric_references"}
    assert "RESOURCE_TYPE_LOGGED_MODEL" in called
    assert mlflow_auth._METRIC_SIBLING_FIELD[mlflow_auth.RESOURCE_TYPE_LOGGED_MODEL] in MODEL_LINK_FIELDS


SEARCH_RUNS = "/api/2.0/mlflow/runs/search"
THEIR_MODEL = "m-0123456789abcdef0123456789abcdef"  # a logged model in another team's experiment
OUR_MODEL = "m-fedcba9876543210fedcba9876543210"  # one in an experiment of the caller's


def _runs_page(count: int, links: tuple[str, ...] = (), link_every: int = 0, decoy: bool = False) -> bytes:
    """A SearchRuns response as MLflow's handler writes it: every ``link_every``-th run names the models in
    ``links`` (inputs, outputs and the last run's metric), or a param's value spells a model_id key (``decoy``)."""
    from mlflow.protos.service_pb2 import SearchRuns
    from mlflow.utils.proto_json_utils import message_to_json

    page = SearchRuns.Response()
    for i in range(count):
        run = page.runs.add()
        run.info.run_id = run.info.run_uuid = f"{i:032x}"
        run.info.experiment_id = "7"
        run.data.params.add(key="lr", value='{"model_id": "m-1"}' if decoy and i == 0 else "0.1")
        metric = run.data.metrics.add(key="loss", value=0.5, timestamp=1, step=i)
        if links and i == count - 1:
            metric.model_id = links[0]
        for model in links if link_every and i % link_every == 0 else ():
            run.inputs.model_inputs.add(model_id=model)
            run.outputs.model_outputs.add(model_id=model, step=0)
    page.next_page_token = "next"
    return message_to_json(page).encode()


@pytest.fixture
def run_redaction(monkeypatch: pytest.MonkeyPatch):
    """Answer a body through MLflow's own after-request hook and through the wrapped one: (mlflow, wrapped, parses).

    The caller is user a1, not an admin, who may read OUR_MODEL and not THEIR_MODEL; with ``tier_denied`` a1 is
    also denied logged models as a whole (the only case in which MLflow's redactor withholds anything).
    ``parses`` counts MLflow's re-parses in the wrapped app.
    """
    import types

    import flask
    import mlflow.server.auth as mlflow_auth

    from atlaslab.tracking import redaction

    parses: list[int] = []
    tier_denied = [True]
    real_parse = mlflow_auth.parse_dict
    monkeypatch.setattr(mlflow_auth, "sender_is_admin", lambda: False)
    monkeypatch.setattr(mlflow_auth, "authenticate_request", lambda: types.SimpleNamespace(username="a1"))
    monkeypatch.setattr(
        mlflow_auth, "_denied_sibling_tiers", lambda user, tiers: set(tiers) if tier_denied[0] else set()
    )
    monkeypatch.setattr(mlflow_auth, "parse_dict", lambda *a, **k: parses.append(1) or real_parse(*a, **k))
    monkeypatch.setattr(redaction, "readable_models", lambda ids, user: set(ids) & {OUR_MODEL} if user == "a1" else ())

    def app(wrapped: bool, body: bytes, path: str, method: str) -> flask.Flask:
        app = flask.Flask(f"redaction-{wrapped}")
        app.add_url_rule(path, "route", lambda: flask.Response(body, mimetype="application/json"), methods=[method])
        app.after_request(mlflow_auth._after_request)
        if wrapped:
            redaction.install(app)
        return app

    def answer(
        body: bytes, path: str = SEARCH_RUNS, method: str = "POST", denied: bool = True
    ) -> tuple[bytes, bytes, int]:
        tier_denied[0] = denied
        mlflow = app(False, body, path, method).test_client().open(path, method=method).get_data()
        parses.clear()
        wrapped = app(True, body, path, method).test_client().open(path, method=method).get_data()
        return mlflow, wrapped, len(parses)

    return answer


@pytest.mark.parametrize("denied", [True, False])
def test_page_without_model_links_skips_the_reparse_and_is_unchanged(run_redaction, denied: bool) -> None:
    body = _runs_page(1000)
    mlflow, wrapped, parses = run_redaction(body, denied=denied)
    assert wrapped == mlflow == body
    assert parses == 0


@pytest.mark.parametrize(
    ("kind", "page"),
    [
        ("model inputs and outputs", lambda: _runs_page(1000, (THEIR_MODEL,), link_every=250)),
        ("one metric's model_id", lambda: _runs_page(1000, (THEIR_MODEL,))),
        ("single run", lambda: _runs_page(1, (THEIR_MODEL,), link_every=1)),
    ],
)
def test_page_with_another_teams_model_link_is_still_redacted(run_redaction, kind: str, page) -> None:
    """Denied logged models as a whole: MLflow's own redactor runs and decides, byte for byte as without us."""
    body = page()
    assert THEIR_MODEL.encode() in body
    mlflow, wrapped, parses = run_redaction(body)
    assert parses == 1, kind  # MLflow's own redactor ran
    assert wrapped == mlflow != body, kind
    assert THEIR_MODEL.encode() not in wrapped, kind
    assert b'"next_page_token": "next"' in wrapped and wrapped.count(b'"run_uuid"') == body.count(b'"run_uuid"')


def test_link_to_another_teams_model_is_withheld_where_mlflow_keeps_it(run_redaction) -> None:
    """Not denied logged models as a whole (every member, here): MLflow keeps every link; we keep only the links
    to models the caller may read."""
    import json

    body = _runs_page(1000, (THEIR_MODEL, OUR_MODEL), link_every=100)
    mlflow, wrapped, _ = run_redaction(body, denied=False)
    assert mlflow == body and THEIR_MODEL.encode() in mlflow  # what MLflow alone answers
    assert THEIR_MODEL.encode() not in wrapped
    runs = json.loads(wrapped)["runs"]
    assert len(runs) == 1000 and json.loads(wrapped)["next_page_token"] == "next"
    linked = [run for run in runs if run.get("inputs")]
    assert len(linked) == 10
    for run in linked:
        assert run["inputs"]["model_inputs"] == [{"model_id": OUR_MODEL}]
        assert run["outputs"]["model_outputs"] == [{"model_id": OUR_MODEL, "step": 0}]
    # the metric named THEIR_MODEL: the value stays, the link goes
    assert runs[-1]["data"]["metrics"] == [{"key": "loss", "value": 0.5, "timestamp": 1, "step": 999}]
    # the caller's own links alone: nothing to withhold, the body is MLflow's
    own = _runs_page(10, (OUR_MODEL,), link_every=2)
    mlflow, wrapped, _ = run_redaction(own, denied=False)
    assert wrapped == mlflow == own


def test_a_value_cannot_pass_for_a_model_link(run_redaction) -> None:
    # A param whose value spells a model_id key: json.dumps escapes its quotes, so it is no key and no link.
    body = _runs_page(10, decoy=True)
    assert b'\\"model_id\\"' in body
    mlflow, wrapped, parses = run_redaction(body)
    assert wrapped == mlflow == body and parses == 0


def test_get_run_with_a_link_is_redacted_and_other_routes_reach_mlflow(run_redaction) -> None:
    from mlflow.protos.service_pb2 import GetRun
    from mlflow.utils.proto_json_utils import message_to_json

    got = GetRun.Response()
    got.run.info.run_id = "r1"
    got.run.inputs.model_inputs.add(model_id=THEIR_MODEL)
    got.run.inputs.model_inputs.add(model_id=OUR_MODEL)
    body = message_to_json(got).encode()
    for denied in (True, False):
        mlflow, wrapped, parses = run_redaction(body, "/api/2.0/mlflow/runs/get", "GET", denied=denied)
        assert parses == 1 and THEIR_MODEL.encode() not in wrapped, denied
        assert (OUR_MODEL.encode() in wrapped) is not denied
    # Another route: MLflow's hook runs as it would alone. Here it picks filter_search_experiments, which fails
    # alike in both apps for want of a store: the proof that it ran (a skipped hook would answer the page as is).
    page = _runs_page(3)
    mlflow, wrapped, _ = run_redaction(page, "/api/2.0/mlflow/experiments/search", denied=False)
    assert wrapped == mlflow != page


def test_metric_history_link_to_another_teams_model_is_withheld(run_redaction) -> None:
    """metrics/get-history: MLflow clears a metric's model_id only under the veto; we clear the unreadable ones."""
    import json

    from mlflow.protos.service_pb2 import GetMetricHistory
    from mlflow.utils.proto_json_utils import message_to_json

    history = GetMetricHistory.Response()
    for step, model in enumerate((THEIR_MODEL, OUR_MODEL)):
        history.metrics.add(key="loss", value=0.5, timestamp=1, step=step, model_id=model)
    history.metrics.add(key="loss", value=0.5, timestamp=1, step=2)
    body = message_to_json(history).encode()
    path = "/api/2.0/mlflow/metrics/get-history"
    mlflow, wrapped, _ = run_redaction(body, path, "GET", denied=False)
    assert mlflow == body and THEIR_MODEL.encode() in mlflow  # what MLflow alone answers
    assert [metric.get("model_id") for metric in json.loads(wrapped)["metrics"]] == [None, OUR_MODEL, None]
    mlflow, wrapped, parses = run_redaction(body, path, "GET", denied=True)
    assert parses == 1 and wrapped == mlflow and THEIR_MODEL.encode() not in wrapped
    # a history that names no model: not even parsed
    history = GetMetricHistory.Response()
    history.metrics.add(key="loss", value=0.5, timestamp=1, step=0)
    body = message_to_json(history).encode()
    assert run_redaction(body, path, "GET", denied=False) == (body, body, 0)


# ---- GraphQL (atlaslab.tracking.redaction.ModelLinkMiddleware) ----------------------------------------------------

GRAPHQL_RUN = "0" * 32
LINKS = "inputs { modelInputs { modelId } } outputs { modelOutputs { modelId step } } data { metrics { key modelId } }"
GET_RUN = f'mlflowGetRun(input: {{runId: "{GRAPHQL_RUN}"}})'
SEARCH_RUNS_QL = 'mlflowSearchRuns(input: {experimentIds: ["7"]})'
GRAPHQL_QUERIES = {
    "get run": f"query {{ {GET_RUN} {{ run {{ {LINKS} }} }} }}",
    "search runs": f"query {{ {SEARCH_RUNS_QL} {{ runs {{ {LINKS} }} }} }}",
    "search runs, as a mutation": f"mutation {{ {SEARCH_RUNS_QL} {{ runs {{ {LINKS} }} }} }}",
    "aliases and a fragment": f"""
        query Q {{
          a: {GET_RUN} {{ r: run {{ ...Links i: inputs {{ m: modelInputs {{ x: modelId }} }} }} }}
          b: {SEARCH_RUNS_QL} {{ rs: runs {{ ... on MlflowRunExtension {{ {LINKS} }} }} }}
          c: {GET_RUN} {{ run {{ outputs {{ o: modelOutputs {{ id: modelId }} }} }} }}
        }}
        fragment Links on MlflowRunExtension {{ d: data {{ ms: metrics {{ mid: modelId }} }} o: outputs {{ ...Out }} }}
        fragment Out on MlflowRunOutputs {{ modelOutputs {{ modelId }} }}
    """,
    "model versions of a run": f"query {{ {GET_RUN} {{ run {{ modelVersions {{ name modelId }} }} }} }}",
}


@pytest.fixture
def graphql(monkeypatch: pytest.MonkeyPatch):
    """Execute a query on MLflow's own GraphQL schema with ModelLinkMiddleware: (JSON of the answer, look-ups).

    The resolvers answer from a run that names THEIR_MODEL and OUR_MODEL in its inputs, outputs, a metric and a
    model version; the caller is a1 (``admin`` False) who may read OUR_MODEL only. ``look-ups`` counts calls of
    readable_models."""
    import json
    import types

    import mlflow.server.auth as mlflow_auth
    import mlflow.server.handlers as handlers
    from mlflow.protos.model_registry_pb2 import SearchModelVersions
    from mlflow.protos.service_pb2 import GetRun, SearchRuns
    from mlflow.server.graphql.graphql_schema_extensions import schema

    from atlaslab.tracking import redaction

    def fill(run) -> None:
        run.info.run_id = GRAPHQL_RUN
        run.info.experiment_id = "7"
        for model in (THEIR_MODEL, OUR_MODEL):
            run.inputs.model_inputs.add(model_id=model)
            run.outputs.model_outputs.add(model_id=model, step=1)
            run.data.metrics.add(key=f"loss-{model[-4:]}", value=0.5, timestamp=1, step=0, model_id=model)
        run.data.metrics.add(key="plain", value=1.0, timestamp=1, step=0)

    def get_run(message):
        response = GetRun.Response()
        fill(response.run)
        return response

    def search_runs(message):
        response = SearchRuns.Response()
        for _ in range(3):
            fill(response.runs.add())
        return response

    def search_model_versions(message):
        response = SearchModelVersions.Response()
        for model in (THEIR_MODEL, OUR_MODEL):
            response.model_versions.add(name=f"v-{model[-4:]}", version="1", model_id=model)
        return response.model_versions

    lookups: list[set[str]] = []
    admin = [False]
    monkeypatch.setattr(handlers, "get_run_impl", get_run)
    monkeypatch.setattr(handlers, "search_runs_impl", search_runs)
    monkeypatch.setattr(
        handlers, "search_model_versions_impl", lambda m: types.SimpleNamespace(model_versions=search_model_versions(m))
    )
    monkeypatch.setattr(mlflow_auth, "authenticate_request", lambda: types.SimpleNamespace(username="a1"))
    monkeypatch.setattr(mlflow_auth, "sender_is_admin", lambda: admin[0])

    def readable(ids, user):
        lookups.append(set(ids))
        return set(ids) & {OUR_MODEL} if user == "a1" else set()

    monkeypatch.setattr(redaction, "readable_models", readable)

    def execute(query: str, as_admin: bool = False, middleware: bool = True) -> tuple[str, int]:
        admin[0] = as_admin
        lookups.clear()
        result = schema.execute(query, middleware=[redaction.ModelLinkMiddleware()] if middleware else [])
        assert not result.errors, result.errors
        return json.dumps(result.data), len(lookups)

    return execute


@pytest.mark.parametrize("name", list(GRAPHQL_QUERIES))
def test_graphql_withholds_another_teams_model_ids(graphql, name: str) -> None:
    query = GRAPHQL_QUERIES[name]
    bare, _ = graphql(query, middleware=False)
    assert THEIR_MODEL in bare and OUR_MODEL in bare, name  # the attack works without the middleware
    answer, lookups = graphql(query)
    assert THEIR_MODEL not in answer, name
    assert OUR_MODEL in answer, name  # the caller's own links stay
    assert lookups == 1, name  # one batch per request, however many runs, metrics and aliases
    admin, admin_lookups = graphql(query, as_admin=True)
    assert admin == bare and admin_lookups == 0, name


def test_graphql_drops_withheld_links_and_nulls_other_model_ids(graphql) -> None:
    import json

    answer, _ = graphql(GRAPHQL_QUERIES["get run"])
    run = json.loads(answer)["mlflowGetRun"]["run"]
    assert run["inputs"]["modelInputs"] == [{"modelId": OUR_MODEL}]
    assert run["outputs"]["modelOutputs"] == [{"modelId": OUR_MODEL, "step": "1"}]
    # a metric keeps its value and loses the link; a metric that names no model is left as MLflow answers it
    assert {m["key"]: m["modelId"] for m in run["data"]["metrics"]} == {
        f"loss-{THEIR_MODEL[-4:]}": None,
        f"loss-{OUR_MODEL[-4:]}": OUR_MODEL,
        "plain": "",
    }


def test_graphql_caller_the_middleware_cannot_name_reads_no_model(graphql, monkeypatch: pytest.MonkeyPatch) -> None:
    import flask
    import mlflow.server.auth as mlflow_auth

    monkeypatch.setattr(mlflow_auth, "authenticate_request", lambda: flask.Response(status=401))
    answer, lookups = graphql(GRAPHQL_QUERIES["aliases and a fragment"])
    assert THEIR_MODEL not in answer and OUR_MODEL not in answer and lookups == 0


def test_graphql_middleware_goes_in_front_of_mlflows_and_refuses_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow.server.auth as mlflow_auth

    from atlaslab.tracking import redaction

    theirs = object()
    monkeypatch.setattr(mlflow_auth, "get_graphql_authorization_middleware", lambda: [theirs])
    first, second = redaction.graphql_middleware()
    assert isinstance(first, redaction.ModelLinkMiddleware) and second is theirs  # the first is the outermost
    assert redaction.graphql_middleware()[0] is not first  # one per request: no caller carried over
    monkeypatch.setattr(mlflow_auth, "get_graphql_authorization_middleware", lambda: [])
    with pytest.raises(RuntimeError):
        redaction.graphql_middleware()


def test_install_graphql_replaces_the_function_mlflows_handler_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    import inspect

    import mlflow.server.handlers as handlers

    from atlaslab.tracking import redaction

    # MLflow's handler looks the function up by name at each request: replacing the module's attribute is enough.
    _, called = _code_strings(inspect.unwrap(handlers._graphql).__code__)
    assert "_get_graphql_auth_middleware" in called
    monkeypatch.setattr(handlers, "_get_graphql_auth_middleware", handlers._get_graphql_auth_middleware)
    redaction.install_graphql()
    assert handlers._get_graphql_auth_middleware is redaction.graphql_middleware
    with pytest.raises(RuntimeError):
        redaction.install_graphql()


def test_install_replaces_mlflows_hook_once_in_place() -> None:
    import flask
    import mlflow.server.auth as mlflow_auth

    from atlaslab.tracking import redaction

    app = flask.Flask("install")

    def before(resp):
        return resp

    app.after_request(before)
    app.after_request(mlflow_auth._after_request)
    app.after_request(before)
    redaction.install(app)
    hooks = app.after_request_funcs[None]
    assert hooks[0] is before and hooks[2] is before
    assert hooks[1].__wrapped__ is mlflow_auth._after_request
    with pytest.raises(RuntimeError):
        redaction.install(app)  # already wrapped: MLflow's hook is no longer there


def test_service_freezes_what_start_up_left_before_serving(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import gc

    import uvicorn

    from atlaslab.tracking import server

    frozen_when_serving: list[int] = []
    monkeypatch.setattr(os, "environ", {**os.environ, "ATLASLAB_MLFLOW_DIR": str(tmp_path)})
    monkeypatch.setattr(server, "build_app", lambda: object())
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: frozen_when_serving.append(gc.get_freeze_count()))
    try:
        assert server.main() == 0
    finally:
        gc.unfreeze()
    assert frozen_when_serving and frozen_when_serving[0] > 0
