"""MLflow behind a real hub: a user's notebook with no setup, the browser's login, and attacks that must fail.

One hub for the module: teams alpha (a1, a2) and beta (b1, b2, b3), course algebra (teacher; students s1, s2),
tracking on with a 2 s permission cache. MLflow's own Python client talks to the real MLflow service the hub
started; raw HTTP is used where an attacker would not use the client (forged headers, artifact and AJAX routes).
Every attack has a positive control beside it (a member doing the same thing succeeds), so a server that refused
everything would fail too.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import Browser, Workbench, run_code, wait_server, write_site

pytestmark = pytest.mark.root
PASSWORD = "tracking-workshop-password"
ADMIN_PASSWORD = "tracking-admin-password-long-enough-32"
SITE = {
    "login": [
        {
            "provider": "shared-password",
            "password": {"env": "ATLASLAB_TEST_TRACKING_PASSWORD"},
            "admin_password": {"env": "ATLASLAB_TEST_TRACKING_ADMIN_PASSWORD"},
        }
    ],
    "tenants": {"lab": {"title": "Lab", "environments": ["cpu-small"]}},
    "environments": {"cpu-small": {"cpu": 1, "memory": "2G", "default": True}},
    "teams": {
        "alpha": {"tenant": "lab", "members": ["a1", "a2"]},
        "beta": {"tenant": "lab", "members": ["b1", "b2", "b3"]},
    },
    "courses": {"algebra": {"title": "Algebra", "tenant": "lab", "instructors": ["teach"], "students": ["s1", "s2"]}},
    "tracking": {"enabled": True, "permission_cache": "2s"},
    "services": {"idle_culler": False, "metrics": False},
}
USERS = ["a1", "a2", "b1", "b2", "b3", "teach", "s1", "s2", "admin"]
CACHE_WAIT = 20  # seconds to wait for a hub change to reach MLflow (cache 2 s, a loaded machine)


# ---- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wb(tmp_path_factory) -> Iterator[Workbench]:
    os.environ["ATLASLAB_TEST_TRACKING_PASSWORD"] = PASSWORD
    os.environ["ATLASLAB_TEST_TRACKING_ADMIN_PASSWORD"] = ADMIN_PASSWORD
    wb = Workbench(write_site(tmp_path_factory.mktemp("tracking"), SITE)).start(timeout=120)
    yield wb
    wb.stop()


@pytest.fixture(scope="module")
def url(wb: Workbench) -> str:
    """MLflow straight at its port (as users' servers reach it), under its hub prefix."""
    url = f"http://127.0.0.1:{wb.site['service_ports'] + 2}/services/mlflow"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return url
        time.sleep(0.2)
    raise TimeoutError(f"MLflow not up at {url}\n{wb.log()}")


@pytest.fixture(scope="module")
def browsers(wb: Workbench, url: str) -> Iterator[dict[str, Browser]]:
    out = {}
    for name in USERS:
        b = Browser(wb)
        b.login(name, ADMIN_PASSWORD if name == "admin" else PASSWORD)
        assert b.logged_in_as() == name
        out[name] = b
    yield out
    for b in out.values():
        b.close()


@pytest.fixture(scope="module")
def tokens(browsers: dict[str, Browser]) -> dict[str, str]:
    return {name: b.token("tracking") for name, b in browsers.items()}


class Client:
    """MLflow's own Python client as one user: their hub token in MLFLOW_TRACKING_TOKEN, read at each call."""

    def __init__(self, url: str, token: str):
        from mlflow import MlflowClient

        self.token = token
        self._client = MlflowClient(tracking_uri=url, registry_uri=url)

    def __getattr__(self, name: str):
        method = getattr(self._client, name)

        def call(*args, **kwargs):
            with as_token(self.token):
                return method(*args, **kwargs)

        return call


@contextlib.contextmanager
def as_token(token: str) -> Iterator[None]:
    saved = os.environ.get("MLFLOW_TRACKING_TOKEN")
    os.environ["MLFLOW_TRACKING_TOKEN"] = token
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_TOKEN", None)
        else:
            os.environ["MLFLOW_TRACKING_TOKEN"] = saved


@pytest.fixture(scope="module")
def clients(url: str, tokens: dict[str, str]) -> dict[str, Client]:
    return {name: Client(url, token) for name, token in tokens.items()}


def denied(call, *args, **kwargs) -> str:
    """Run a client call that must be refused; return MLflow's error code."""
    from mlflow.exceptions import MlflowException, RestException

    try:
        result = call(*args, **kwargs)
    except (MlflowException, RestException) as e:
        return e.error_code
    raise AssertionError(f"allowed: {result!r}")


@pytest.fixture(scope="module")
def beta(clients: dict[str, Client], tmp_path_factory) -> dict[str, str]:
    """Team beta's experiment, run (param, metric, artifact) and registered model with one version."""
    b1 = clients["b1"]
    exp = b1.create_experiment("teams/beta/secret-project")
    run = b1.create_run(exp).info.run_id
    b1.log_param(run, "secret_param", "beta-only")
    b1.log_metric(run, "secret_metric", 0.99)
    b1.log_text(run, "beta secret artifact", "secret.txt")
    b1.set_terminated(run)
    b1.create_registered_model("beta-model", tags={"atlaslab.owner": "team:beta"})
    version = b1.create_model_version("beta-model", f"runs:/{run}/secret.txt", run_id=run)
    return {"experiment": exp, "run": run, "model": "beta-model", "version": str(version.version)}


@pytest.fixture(scope="module")
def alpha(clients: dict[str, Client]) -> dict[str, str]:
    a1 = clients["a1"]
    exp = a1.create_experiment("teams/alpha/project")
    run = a1.create_run(exp).info.run_id
    a1.log_metric(run, "m", 1.0)
    return {"experiment": exp, "run": run}


def http(url: str, token: str | None = None, **headers: str) -> httpx.Client:
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.Client(base_url=url, headers=headers, timeout=60)


# ---- the zero-setup notebook -------------------------------------------------------------------------------

NOTEBOOK = """
import json, os, tempfile
import mlflow
from mlflow import MlflowClient

class Doubler(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return [2 * x for x in model_input]

with mlflow.start_run() as run:
    mlflow.log_param("lr", 0.1)
    mlflow.log_metric("loss", 0.25)
    path = os.path.join(tempfile.mkdtemp(), "notes.txt")
    open(path, "w").write("hello from a notebook")
    mlflow.log_artifact(path)
    info = mlflow.pyfunc.log_model(
        name="model", python_model=Doubler(), pip_requirements=["mlflow"], registered_model_name="a2-doubler"
    )
client = MlflowClient()
data = client.get_run(run.info.run_id).data
notes = open(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="notes.txt")).read()
model = mlflow.pyfunc.load_model("models:/a2-doubler/1")
experiment = client.get_experiment(run.info.experiment_id)
print(json.dumps({
    "params": data.params, "metrics": data.metrics, "notes": notes, "prediction": list(model.predict([1, 2])),
    "experiment": experiment.name, "owner": experiment.tags.get("atlaslab.owner"),
    "versions": [v.version for v in client.search_model_versions("name='a2-doubler'")],
    "async": os.environ.get("MLFLOW_ENABLE_ASYNC_LOGGING"),
}))
"""


def test_notebook_logs_and_reads_back_with_no_setup(wb: Workbench, browsers: dict[str, Browser], url: str) -> None:
    b = browsers["a2"]
    b.spawn()
    wait_server(wb, "a2", timeout=120)
    out = run_code(wb, "a2", b.token("kernel"), NOTEBOOK, timeout=240)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, out
    got = json.loads(lines[-1])
    assert got["params"] == {"lr": "0.1"} and got["metrics"] == {"loss": 0.25}, got
    assert got["notes"] == "hello from a notebook"
    assert got["prediction"] == [2, 4]
    assert got["experiment"] == "users/a2/default" and got["owner"] == "user:a2"
    assert got["versions"] == ["1"] and got["async"] == "true"


# ---- the browser -----------------------------------------------------------------------------------------------


def test_browser_without_login_is_sent_to_the_hub_never_served_data(wb: Workbench, beta: dict, url: str) -> None:
    with httpx.Client(base_url=wb.url, timeout=60) as anonymous:
        page = anonymous.get("/services/mlflow/", headers={"Accept": "text/html"})
        assert page.status_code == 302, page.text
        assert "/hub/api/oauth2/authorize" in page.headers["location"]
        landed = anonymous.get("/services/mlflow/", headers={"Accept": "text/html"}, follow_redirects=True)
        assert landed.url.path == "/hub/login", landed.url
        for path in ("ajax-api/2.0/mlflow/experiments/search", "api/2.0/mlflow/experiments/search"):
            r = anonymous.post(f"/services/mlflow/{path}", json={"max_results": 100})
            assert r.status_code == 401 and "secret-project" not in r.text, (path, r.status_code, r.text)


def test_browser_login_reaches_the_ui_and_sees_only_its_own(
    wb: Workbench, browsers: dict[str, Browser], beta: dict, alpha: dict
) -> None:
    http_client = browsers["a1"].http
    page = http_client.get("/services/mlflow/", headers={"Accept": "text/html"})
    assert page.status_code == 200 and page.url.path == "/services/mlflow/", page.url
    assert "<title>MLflow</title>" in page.text
    assert http_client.cookies.get("atlaslab-mlflow-token", path="/services/mlflow/")
    # The UI's own calls, with the login cookie only.
    r = http_client.post("/services/mlflow/ajax-api/2.0/mlflow/experiments/search", json={"max_results": 1000})
    assert r.status_code == 200, r.text
    names = {e["name"] for e in r.json().get("experiments", [])}
    assert "teams/alpha/project" in names and "teams/beta/secret-project" not in names, names
    r = http_client.get("/services/mlflow/ajax-api/2.0/mlflow/runs/get", params={"run_id": beta["run"]})
    assert r.status_code == 403 and "beta-only" not in r.text


def test_a_forged_login_cookie_is_refused(wb: Workbench, beta: dict) -> None:
    with httpx.Client(base_url=wb.url, timeout=60, cookies={"atlaslab-mlflow-token": "forged"}) as forged:
        r = forged.post("/services/mlflow/ajax-api/2.0/mlflow/experiments/search", json={"max_results": 100})
        assert r.status_code == 401 and "secret-project" not in r.text


# ---- team A against team B -------------------------------------------------------------------------------------


def test_team_member_reads_and_writes_the_team_experiment(clients: dict[str, Client], beta: dict) -> None:
    b2 = clients["b2"]
    run = b2.get_run(beta["run"])
    assert run.data.params["secret_param"] == "beta-only"
    b2.log_metric(beta["run"], "from_b2", 1.0)
    assert b2.get_registered_model("beta-model").name == "beta-model"
    b2.set_registered_model_tag("beta-model", "reviewed", "yes")
    assert {e.name for e in b2.search_experiments()} >= {"teams/beta/secret-project"}


def test_other_team_cannot_touch_experiments_or_runs(clients: dict[str, Client], beta: dict) -> None:
    a1 = clients["a1"]
    assert denied(a1.get_experiment, beta["experiment"]) == "PERMISSION_DENIED"
    assert denied(a1.get_experiment_by_name, "teams/beta/secret-project") == "PERMISSION_DENIED"
    assert denied(a1.get_run, beta["run"]) == "PERMISSION_DENIED"
    assert denied(a1.get_metric_history, beta["run"], "secret_metric") == "PERMISSION_DENIED"
    assert denied(a1.log_metric, beta["run"], "injected", 1.0) == "PERMISSION_DENIED"
    assert denied(a1.set_tag, beta["run"], "injected", "x") == "PERMISSION_DENIED"
    assert denied(a1.create_run, beta["experiment"]) == "PERMISSION_DENIED"
    assert denied(a1.delete_run, beta["run"]) == "PERMISSION_DENIED"
    assert denied(a1.delete_experiment, beta["experiment"]) == "PERMISSION_DENIED"
    assert denied(a1.rename_experiment, beta["experiment"], "stolen") == "PERMISSION_DENIED"


def test_search_filters_other_teams_out(clients: dict[str, Client], beta: dict, alpha: dict) -> None:
    a1 = clients["a1"]
    names = {e.name for e in a1.search_experiments(max_results=1000)}
    assert "teams/alpha/project" in names and "teams/beta/secret-project" not in names
    runs = a1.search_runs([alpha["experiment"], beta["experiment"]])
    assert {r.info.run_id for r in runs} == {alpha["run"]}
    assert "beta-model" not in {m.name for m in a1.search_registered_models()}
    assert not [v for v in a1.search_model_versions("name='beta-model'")]
    assert not [v for v in a1.search_model_versions() if v.name == "beta-model"]


def test_search_runs_never_includes_another_teams_runs(
    url: str, tokens: dict[str, str], clients: dict[str, Client], beta: dict, alpha: dict
) -> None:
    a1, b2 = clients["a1"], clients["b2"]
    assert list(a1.search_runs([beta["experiment"]], max_results=1000)) == []
    assert list(a1.search_runs([beta["experiment"]], filter_string="params.secret_param = 'beta-only'")) == []
    # positive control: the team finds its run, with what was logged in it
    found = b2.search_runs([alpha["experiment"], beta["experiment"]], max_results=1000)
    assert [r.info.run_id for r in found] == [beta["run"]] and found[0].data.params["secret_param"] == "beta-only"
    body = {"experiment_ids": [alpha["experiment"], beta["experiment"]], "max_results": 1000}
    with http(url, tokens["a1"]) as raw:
        for path in ("/api/2.0/mlflow/runs/search", "/ajax-api/2.0/mlflow/runs/search"):
            r = raw.post(path, json=body)
            assert r.status_code == 200, (path, r.text[:200])
            assert [run["info"]["run_id"] for run in r.json()["runs"]] == [alpha["run"]], path
            assert beta["run"] not in r.text and "beta-only" not in r.text and "secret_metric" not in r.text


@pytest.fixture(scope="module")
def beta_logged_model(clients: dict[str, Client], beta: dict) -> str:
    """A logged model of team beta's (only beta and admins may read it)."""
    return clients["b1"].create_logged_model(beta["experiment"], name="beta-logged", source_run_id=beta["run"]).model_id


@pytest.fixture(scope="module")
def linked_run(clients: dict[str, Client], beta_logged_model: str) -> dict[str, Any]:
    """A run of alpha's (beside 20 plain ones) that names beta's logged model, as an input, an output and in a
    metric, beside alpha's own logged model (an admin linked beta's: users cannot)."""
    from mlflow.entities import LoggedModelInput, LoggedModelOutput, Metric

    a1, admin = clients["a1"], clients["admin"]
    exp = a1.create_experiment("teams/alpha/linked")
    plain = [a1.create_run(exp).info.run_id for _ in range(20)]
    linked = a1.create_run(exp).info.run_id
    ours = a1.create_logged_model(exp, name="alpha-logged").model_id
    a1.log_inputs(linked, models=[LoggedModelInput(ours)])
    a1.log_outputs(linked, [LoggedModelOutput(ours, 1)])
    assert denied(a1.log_inputs, linked, models=[LoggedModelInput(beta_logged_model)]) == "PERMISSION_DENIED"
    admin.log_inputs(linked, models=[LoggedModelInput(beta_logged_model)])
    admin.log_outputs(linked, [LoggedModelOutput(beta_logged_model, 0)])
    admin.log_batch(linked, metrics=[Metric("linked_metric", 1.0, 0, 0, model_id=beta_logged_model)])
    return {"experiment": exp, "plain": plain, "run": linked, "ours": ours}


def test_page_with_another_teams_model_link_is_still_redacted(
    url: str, tokens: dict[str, str], clients: dict[str, Client], beta_logged_model: str, linked_run: dict
) -> None:
    """a1 sees its run and its own model's link, never beta's, in a page of runs and on the run's own route."""
    a1 = clients["a1"]
    exp, plain, linked, ours = linked_run["experiment"], linked_run["plain"], linked_run["run"], linked_run["ours"]
    search = {"experiment_ids": [exp], "max_results": 1000}
    # positive control: the links are there, and an admin (never redacted) sees them
    with http(url, tokens["admin"]) as raw:
        assert beta_logged_model in raw.post("/api/2.0/mlflow/runs/search", json=search).text
        assert raw.get("/api/2.0/mlflow/runs/get", params={"run_id": linked}).text.count(beta_logged_model) >= 2
    runs = {r.info.run_id: r for r in a1.search_runs([exp], max_results=1000)}
    assert set(runs) == {*plain, linked}
    assert [m.model_id for m in runs[linked].outputs.model_outputs] == [ours]
    assert runs[linked].data.metrics == {"linked_metric": 1.0}
    got = a1.get_run(linked)
    assert [m.model_id for m in got.inputs.model_inputs] == [ours]
    assert [m.model_id for m in got.outputs.model_outputs] == [ours]
    with http(url, tokens["a1"]) as raw:
        pages = [
            raw.post(path, json=search) for path in ("/api/2.0/mlflow/runs/search", "/ajax-api/2.0/mlflow/runs/search")
        ]
        pages.append(raw.get("/api/2.0/mlflow/runs/get", params={"run_id": linked}))
        pages.append(raw.get("/ajax-api/2.0/mlflow/runs/get", params={"run_id": linked}))
        for r in pages:
            assert r.status_code == 200 and linked in r.text and ours in r.text, (r.request.url, r.text[:200])
            assert beta_logged_model not in r.text, r.request.url


RUN_LINKS = (
    "info { runId } inputs { modelInputs { modelId } } outputs { modelOutputs { modelId } }"
    " data { metrics { key modelId } }"
)


def graphql_queries(experiment: str, run: str) -> dict[str, str]:
    """The UI's GraphQL run queries, and the same with aliases and fragments (a filter on JSON keys misses those)."""
    get = f'mlflowGetRun(input: {{runId: "{run}"}})'
    search = f'mlflowSearchRuns(input: {{experimentIds: ["{experiment}"], maxResults: 1000}})'
    return {
        "mlflowGetRun": f"query {{ {get} {{ run {{ {RUN_LINKS} }} }} }}",
        "mlflowSearchRuns": f"query {{ {search} {{ runs {{ {RUN_LINKS} }} }} }}",
        "mlflowSearchRuns as a mutation": f"mutation {{ {search} {{ runs {{ {RUN_LINKS} }} }} }}",
        "aliases and fragments": f"""
            query Leak {{
              one: {get} {{ r: run {{ ...Links }} }}
              many: {search} {{
                rs: runs {{ ... on MlflowRunExtension {{ o: outputs {{ x: modelOutputs {{ y: modelId }} }} }} }}
              }}
            }}
            fragment Links on MlflowRunExtension {{
              info {{ runId }}
              i: inputs {{ m: modelInputs {{ id: modelId }} }}
              d: data {{ ms: metrics {{ mid: modelId }} }}
            }}
        """,
    }


def test_graphql_never_names_another_teams_model(
    url: str, tokens: dict[str, str], beta_logged_model: str, linked_run: dict
) -> None:
    """The UI's GraphQL endpoint answers from the same runs: a1 gets its run and its own model, never beta's."""
    for name, query in graphql_queries(linked_run["experiment"], linked_run["run"]).items():
        answers = {}
        for user in ("admin", "a1"):
            with http(url, tokens[user]) as raw:
                r = raw.post("/graphql", json={"query": query})
            assert r.status_code == 200 and not r.json().get("errors"), (name, user, r.text[:300])
            answers[user] = r.text
        assert beta_logged_model in answers["admin"], name  # positive control: the link exists and is served
        assert linked_run["run"] in answers["a1"] and linked_run["ours"] in answers["a1"], name  # alpha's own stays
        assert beta_logged_model not in answers["a1"], name


def test_metric_history_never_names_another_teams_model(
    url: str, tokens: dict[str, str], clients: dict[str, Client], beta_logged_model: str, linked_run: dict
) -> None:
    """No positive control here: MLflow's SQL store keeps a metric's model_id with the logged model's metrics, not
    in the run's history, so today even an admin's history names none. The REST route is redacted all the same
    (tests/test_tracking_unit.py), for a store or a later MLflow that does return it."""
    run = linked_run["run"]
    history = clients["a1"].get_metric_history(run, "linked_metric")
    assert [(m.value, m.model_id) for m in history] == [(1.0, None)]
    with http(url, tokens["a1"]) as raw:
        answers = [
            raw.get(f"{api}/mlflow/metrics/get-history", params={"run_id": run, "metric_key": "linked_metric"})
            for api in ("/api/2.0", "/ajax-api/2.0")
        ]
        # The bulk variants carry no model_id field at all: checked so that a later MLflow adding one fails here.
        answers.append(
            raw.get(
                "/ajax-api/2.0/mlflow/metrics/get-history-bulk", params={"run_id": run, "metric_key": "linked_metric"}
            )
        )
        answers.append(
            raw.get(
                "/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval",
                params={"run_ids": run, "metric_key": "linked_metric"},
            )
        )
        for r in answers:
            assert r.status_code == 200 and '"linked_metric"' in r.text, (r.request.url, r.text[:200])
            assert beta_logged_model not in r.text, r.request.url


def test_other_team_cannot_touch_registered_models(clients: dict[str, Client], beta: dict) -> None:
    a1 = clients["a1"]
    assert denied(a1.get_registered_model, "beta-model") == "PERMISSION_DENIED"
    assert denied(a1.get_model_version, "beta-model", beta["version"]) == "PERMISSION_DENIED"
    assert denied(a1.get_model_version_download_uri, "beta-model", beta["version"]) == "PERMISSION_DENIED"
    assert denied(a1.set_registered_model_tag, "beta-model", "x", "y") == "PERMISSION_DENIED"
    assert denied(a1.rename_registered_model, "beta-model", "mine") == "PERMISSION_DENIED"
    assert denied(a1.delete_registered_model, "beta-model") == "PERMISSION_DENIED"
    assert denied(a1.create_model_version, "beta-model", "runs:/x/y") == "PERMISSION_DENIED"


def test_other_team_cannot_read_or_write_artifacts(url: str, tokens: dict[str, str], beta: dict) -> None:
    path = f"{beta['experiment']}/{beta['run']}/artifacts/secret.txt"
    with http(url, tokens["b2"]) as member:  # positive control: the routes work for the team
        assert member.get(f"/api/2.0/mlflow-artifacts/artifacts/{path}").text == "beta secret artifact"
        assert member.get("/get-artifact", params={"run_id": beta["run"], "path": "secret.txt"}).status_code == 200
    with http(url, tokens["a1"]) as a1:
        requests = [
            a1.get(f"/api/2.0/mlflow-artifacts/artifacts/{path}"),
            a1.get(f"/ajax-api/2.0/mlflow-artifacts/artifacts/{path}"),
            a1.get("/api/2.0/mlflow-artifacts/artifacts", params={"path": f"{beta['experiment']}/{beta['run']}"}),
            a1.get("/get-artifact", params={"run_id": beta["run"], "path": "secret.txt"}),
            a1.get("/api/2.0/mlflow/artifacts/list", params={"run_id": beta["run"]}),
            a1.get(
                "/model-versions/get-artifact", params={"name": "beta-model", "version": beta["version"], "path": ""}
            ),
            a1.put(
                f"/api/2.0/mlflow-artifacts/artifacts/{beta['experiment']}/{beta['run']}/artifacts/x.txt",
                content=b"overwritten",
            ),
            a1.delete(f"/api/2.0/mlflow-artifacts/artifacts/{path}"),
        ]
        for r in requests:
            assert r.status_code == 403, (r.request.method, r.request.url, r.status_code, r.text[:200])
            assert "beta secret" not in r.text
    with http(url, tokens["b2"]) as member:
        assert member.get(f"/api/2.0/mlflow-artifacts/artifacts/{path}").text == "beta secret artifact"


def test_other_team_cannot_use_ajax_routes(url: str, tokens: dict[str, str], beta: dict) -> None:
    with http(url, tokens["a1"]) as a1:
        checks = [
            a1.get("/ajax-api/2.0/mlflow/experiments/get", params={"experiment_id": beta["experiment"]}),
            a1.get("/ajax-api/2.0/mlflow/runs/get", params={"run_id": beta["run"]}),
            a1.get(
                "/ajax-api/2.0/mlflow/metrics/get-history-bulk",
                params={"run_id": beta["run"], "metric_key": "secret_metric"},
            ),
            a1.get(
                "/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval",
                params={"run_ids": beta["run"], "metric_key": "secret_metric"},
            ),
            a1.get("/ajax-api/2.0/mlflow/registered-models/get", params={"name": "beta-model"}),
            a1.post(
                "/ajax-api/2.0/mlflow/runs/log-metric",
                json={"run_id": beta["run"], "key": "x", "value": 1, "timestamp": 1},
            ),
        ]
        for r in checks:
            assert r.status_code == 403, (r.request.url, r.status_code, r.text[:200])
            assert "beta-only" not in r.text and "0.99" not in r.text
        r = a1.post("/ajax-api/2.0/mlflow/runs/search", json={"experiment_ids": [beta["experiment"]]})
        assert r.status_code in (200, 403) and beta["run"] not in r.text
        r = a1.post("/ajax-api/2.0/mlflow/experiments/search", json={"max_results": 1000})
        assert r.status_code == 200 and "secret-project" not in r.text
        r = a1.get("/ajax-api/2.0/mlflow/registered-models/search", params={"max_results": 1000})
        assert r.status_code == 200 and "beta-model" not in r.text


def test_ownership_cannot_be_claimed_or_moved(clients: dict[str, Client], alpha: dict) -> None:
    a1 = clients["a1"]
    assert denied(a1.create_experiment, "teams/beta/planted") == "PERMISSION_DENIED"
    assert denied(a1.create_experiment, "mine", tags={"atlaslab.owner": "team:beta"}) == "PERMISSION_DENIED"
    assert denied(a1.create_experiment, "users/b1/planted") == "PERMISSION_DENIED"
    assert denied(a1.set_experiment_tag, alpha["experiment"], "atlaslab.owner", "team:beta") == "PERMISSION_DENIED"
    assert denied(a1.rename_experiment, alpha["experiment"], "teams/beta/moved") == "PERMISSION_DENIED"
    assert denied(a1.create_registered_model, "planted", tags={"atlaslab.owner": "team:beta"}) == "PERMISSION_DENIED"
    # positive control: a1 may name a team it is in, and rename within it
    exp = a1.create_experiment("alpha-shared", tags={"atlaslab.owner": "team:alpha"})
    assert clients["a2"].get_experiment(exp).name == "alpha-shared"
    a1.rename_experiment(alpha["experiment"], "teams/alpha/project")


# ---- identity: headers, tokens, scopes, membership ----------------------------------------------------------------

FORGED = {
    "X-Remote-User": "b1",
    "X-Forwarded-User": "b1",
    "Remote-User": "b1",
    "X-Auth-Request-User": "b1",
    "X-Forwarded-Preferred-Username": "b1",
    "X-JupyterHub-User": "b1",
    "X-MLflow-User": "b1",
}


def test_forged_identity_headers_are_ignored(url: str, tokens: dict[str, str], beta: dict) -> None:
    params = {"experiment_id": beta["experiment"]}
    with http(url, tokens["b1"]) as control:
        assert control.get("/api/2.0/mlflow/experiments/get", params=params).status_code == 200
    with http(url, **FORGED) as nobody:
        r = nobody.get("/api/2.0/mlflow/experiments/get", params=params)
        assert r.status_code == 401, r.text
    with http(url, tokens["a1"], **FORGED) as a1:
        assert a1.get("/api/2.0/mlflow/experiments/get", params=params).status_code == 403
    with http(url, Authorization="Basic YjE6cGFzc3dvcmQ=") as basic:  # b1:password, MLflow's own login scheme
        assert basic.get("/api/2.0/mlflow/experiments/get", params=params).status_code == 401


def test_no_token_gets_nothing(url: str, beta: dict) -> None:
    path = f"{beta['experiment']}/{beta['run']}/artifacts/secret.txt"
    with http(url) as nobody:
        for r in (
            nobody.post("/api/2.0/mlflow/experiments/search", json={"max_results": 10}),
            nobody.get("/api/2.0/mlflow/runs/get", params={"run_id": beta["run"]}),
            nobody.get(f"/api/2.0/mlflow-artifacts/artifacts/{path}"),
            nobody.get("/get-artifact", params={"run_id": beta["run"], "path": "secret.txt"}),
            nobody.get("/ajax-api/2.0/mlflow/registered-models/search"),
            nobody.post("/api/2.0/mlflow/experiments/create", json={"name": "anonymous"}),
            nobody.get("/graphql", params={"query": "{ __typename }"}),
        ):
            assert r.status_code == 401, (r.request.url, r.status_code, r.text[:200])
            assert "beta" not in r.text


def wait_for(check, timeout: float = CACHE_WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the hub's change did not reach MLflow in time"
        time.sleep(0.5)


def test_revoked_token_stops_working(url: str, browsers: dict[str, Browser], beta: dict) -> None:
    b = browsers["b2"]
    r = b.api("POST", "/users/b2/tokens", json={"note": "to revoke", "expires_in": 3600})
    token, token_id = r.json()["token"], r.json()["id"]
    params = {"experiment_id": beta["experiment"]}
    with http(url, token) as client:
        assert client.get("/api/2.0/mlflow/experiments/get", params=params).status_code == 200
        assert b.api("DELETE", f"/users/b2/tokens/{token_id}").status_code == 204
        wait_for(lambda: client.get("/api/2.0/mlflow/experiments/get", params=params).status_code == 401)


def test_user_removed_from_team_loses_access_without_restart(wb: Workbench, url: str, tokens: dict, beta: dict) -> None:
    params = {"experiment_id": beta["experiment"]}
    pid_before = _service_pid(wb)
    with http(url, tokens["b3"]) as b3:
        assert b3.get("/api/2.0/mlflow/experiments/get", params=params).status_code == 200
        with wb.admin_api() as api:
            r = api.request("DELETE", "/groups/team:beta/users", json={"users": ["b3"]})
            assert r.status_code == 200, r.text
        wait_for(lambda: b3.get("/api/2.0/mlflow/experiments/get", params=params).status_code == 403)
        r = b3.post("/api/2.0/mlflow/experiments/search", json={"max_results": 1000})
        assert r.status_code == 200 and "secret-project" not in r.text
        with wb.admin_api() as api:
            assert api.post("/groups/team:beta/users", json={"users": ["b3"]}).status_code == 200
        wait_for(lambda: b3.get("/api/2.0/mlflow/experiments/get", params=params).status_code == 200)
    assert _service_pid(wb) == pid_before, "MLflow was restarted"


def _service_pid(wb: Workbench) -> int:
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        if "atlaslab.tracking.server" in " ".join(proc.info["cmdline"] or []):
            return proc.pid
    raise AssertionError("no MLflow service process")


def test_token_without_the_mlflow_scope_is_refused(url: str, browsers: dict[str, Browser]) -> None:
    b = browsers["b1"]
    r = b.api(
        "POST", "/users/b1/tokens", json={"note": "no mlflow", "expires_in": 600, "scopes": ["read:users:name!user"]}
    )
    assert r.status_code in (200, 201), r.text
    with http(url, r.json()["token"]) as client:
        r = client.post("/api/2.0/mlflow/experiments/search", json={"max_results": 10})
        assert r.status_code == 403 and "secret-project" not in r.text, r.text


# ---- courses and admins -----------------------------------------------------------------------------------------


def test_course_rules(clients: dict[str, Client]) -> None:
    teach, s1, s2 = clients["teach"], clients["s1"], clients["s2"]
    work = s1.create_experiment("courses/algebra/s1/homework-1")
    run = s1.create_run(work).info.run_id
    s1.log_metric(run, "score", 0.7)
    notes = teach.create_experiment("courses/algebra/notes")
    # the instructor reads the student's course work, and may not write it
    assert teach.get_run(run).data.metrics["score"] == 0.7
    assert denied(teach.log_metric, run, "score", 1.0) == "PERMISSION_DENIED"
    # another student sees neither the work nor its run; both students read what the course shares
    assert denied(s2.get_experiment, work) == "PERMISSION_DENIED"
    assert denied(s2.get_run, run) == "PERMISSION_DENIED"
    assert s2.get_experiment(notes).name == "courses/algebra/notes"
    assert denied(s1.create_run, notes) == "PERMISSION_DENIED"
    assert denied(s1.create_experiment, "courses/algebra/homework-1") == "PERMISSION_DENIED"
    # the instructor does not read a student's private experiment
    private = s1.create_experiment("s1-private")
    assert denied(teach.get_experiment, private) == "PERMISSION_DENIED"
    assert denied(clients["a1"].get_experiment, work) == "PERMISSION_DENIED"


def test_admin_sees_everything(clients: dict[str, Client], beta: dict) -> None:
    admin = clients["admin"]
    assert admin.get_run(beta["run"]).data.params["secret_param"] == "beta-only"
    assert "teams/beta/secret-project" in {e.name for e in admin.search_experiments(max_results=1000)}


def test_secrets_are_private(wb: Workbench) -> None:
    for name in ("mlflow-token", "mlflow-flask-secret"):
        assert (wb.state / "secrets" / name).stat().st_mode & 0o777 == 0o600
    assert (wb.state / "mlflow").stat().st_mode & 0o777 == 0o700
    assert Path(wb.state / "mlflow" / "mlflow.sqlite").exists()
