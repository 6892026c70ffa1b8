"""Logged-model links in runs: MLflow's redaction skipped where it cannot change anything, ours added per model.

For a caller who is not an admin, MLflow's auth app hands every ``runs/search`` and ``runs/get`` response to
``_redact_run_response``: it parses the JSON body back into protobuf (``parse_dict``) to find runs that name logged
models (``inputs.model_inputs``, ``outputs.model_outputs``) and metrics that carry a ``model_id``. On a 1,000-run
page that parse is about a sixth of the request's time in the server (40-50 ms of 175-300 ms on a 2-core machine;
py-spy: ``json.loads`` and ``ParseDict``), and on a page that names no logged model it finds nothing to withhold
and leaves the body as it was. Where it does find links it withholds all of them, but only from a caller denied
logged models as a whole (a workspace-wide veto): a link to a logged model of *another team's* experiment, which
the caller may not open, is left in place.

:func:`wrap_after_request` wraps MLflow's ``_after_request`` hook for exactly those two redactors:

* a body in which none of those field names occurs is passed on untouched: that is what MLflow's redactor would
  have done with it, and there is nothing for ours to withhold;
* any other body goes through MLflow's own redactor, unchanged, and then, if links remain and the caller is not
  an admin, through :func:`withhold_unreadable_model_links`, which drops each link to a logged model the caller
  could not list with ``search_logged_models`` (MLflow's own predicate for that, on the model's experiment).

Every other route, and every response of those routes that is not plain uncompressed JSON, goes straight to
MLflow's hook.

Why the absence of the names is enough: the body is what MLflow's handler wrote (``message_to_json``, i.e.
``MessageToDict`` then ``json.dumps``), which always writes a non-empty repeated field or string under its field
name, in ASCII, unescaped; user data only ever appears in JSON string values, where ``json.dumps`` escapes quotes,
so it can neither make such a key appear nor hide one (a value spelling ``"model_id"`` is written
``\\"model_id\\"``). ``ParseDict`` also reads the lowerCamelCase spelling of each field, so that is looked for
too, in case a later MLflow writes bodies that way.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Any

from flask import Response, request

# The fields _withhold_denied_run_model_links clears (RunInputs.model_inputs, RunOutputs.model_outputs,
# Metric.model_id); tests/test_tracking_unit.py fails if a later MLflow's redactor reads a field not listed here.
MODEL_LINK_FIELDS = ("model_inputs", "model_outputs", "model_id")
# Each as a JSON key, in both spellings ParseDict accepts.
_MARKERS = (b'"model_inputs"', b'"modelInputs"', b'"model_outputs"', b'"modelOutputs"', b'"model_id"', b'"modelId"')
# Model ids per query: well under SQLite's limit on bound parameters.
_CHUNK = 500

AfterRequest = Callable[[Response], Response]
RunsOf = Callable[[Any], Iterable[Any]]


def names_model_links(body: bytes) -> bool:
    """Whether a serialised run response may name a logged model (False only when it certainly does not)."""
    return any(marker in body for marker in _MARKERS)


def _plain_json(resp: Response) -> bool:
    return resp.status_code < 400 and not resp.is_streamed and resp.content_encoding is None and resp.is_json


def _run_redactors() -> dict[Callable, tuple[Callable[[], Any], RunsOf]]:
    """MLflow's run redactors -> (the response message they parse, the runs in it)."""
    import mlflow.server.auth as mlflow_auth
    from mlflow.protos.service_pb2 import GetRun, SearchRuns

    return {
        mlflow_auth.redact_search_runs_model_links: (SearchRuns.Response, lambda message: message.runs),
        mlflow_auth.redact_get_run_model_links: (GetRun.Response, lambda message: [message.run]),
    }


def wrap_after_request(mlflow_after_request: AfterRequest) -> AfterRequest:
    """MLflow's after-request hook: skipped when it would redact runs and the body names no logged model, followed
    by :func:`withhold_unreadable_model_links` when links remain."""
    import mlflow.server.auth as mlflow_auth

    run_redactors = _run_redactors()

    def after_request(resp: Response) -> Response:
        # The handler MLflow itself would pick for this route (exact paths: both run routes are unparameterized);
        # anything else, including a route a later MLflow gives a different handler, goes to MLflow as is.
        redactor = run_redactors.get(mlflow_auth.AFTER_REQUEST_HANDLERS.get((request.path, request.method)))
        if redactor is None or not _plain_json(resp):
            return mlflow_after_request(resp)
        if not names_model_links(resp.get_data()):
            return resp
        resp = mlflow_after_request(resp)
        if _plain_json(resp) and names_model_links(resp.get_data()) and not mlflow_auth.sender_is_admin():
            message_class, runs_of = redactor
            withhold_unreadable_model_links(resp, message_class(), runs_of)
        return resp

    after_request.__wrapped__ = mlflow_after_request  # type: ignore[attr-defined]
    return after_request


def withhold_unreadable_model_links(resp: Response, message: Any, runs_of: RunsOf) -> None:
    """Drop the caller's unreadable logged models from the runs' inputs, outputs and metrics in ``resp``."""
    import mlflow.server.auth as mlflow_auth
    from mlflow.utils.proto_json_utils import message_to_json, parse_dict

    parse_dict(resp.json, message)
    runs = list(runs_of(message))
    named = {link.model_id for run in runs for link in (*run.inputs.model_inputs, *run.outputs.model_outputs)}
    named |= {metric.model_id for run in runs for metric in run.data.metrics}
    named.discard("")
    if not named:
        return
    readable = readable_models(named, mlflow_auth.authenticate_request().username)
    changed = False
    for run in runs:
        for links in (run.inputs.model_inputs, run.outputs.model_outputs):
            for index in reversed(range(len(links))):
                if links[index].model_id not in readable:
                    del links[index]
                    changed = True
        for metric in run.data.metrics:
            if metric.model_id and metric.model_id not in readable:
                metric.ClearField("model_id")
                changed = True
    if changed:
        resp.set_data(message_to_json(message))


def readable_models(model_ids: Collection[str], username: str) -> set[str]:
    """The logged models ``username`` may read: as MLflow's ``filter_search_logged_models`` decides, by experiment.

    A model that no longer exists is not readable (MLflow's point route refuses it too)."""
    import mlflow.server.auth as mlflow_auth

    can_read = mlflow_auth._role_based_read_predicate(
        username,
        "experiment",
        also_require=[
            mlflow_auth.Requirement(mlflow_auth.RESOURCE_TYPE_LOGGED_MODEL, "*", mlflow_auth.ACTION_NOT_DENIED)
        ],
    )
    return {model for model, experiment in model_experiments(model_ids).items() if can_read(experiment)}


def model_experiments(model_ids: Collection[str]) -> dict[str, str]:
    """Logged model id -> its experiment id, in one query per few hundred models (a page may name a thousand)."""
    from mlflow.server.handlers import _get_tracking_store
    from mlflow.store.tracking.dbmodels.models import SqlLoggedModel
    from sqlalchemy import select

    ids = sorted(model_ids)
    found: dict[str, str] = {}
    with _get_tracking_store().engine.connect() as conn:
        for start in range(0, len(ids), _CHUNK):
            query = select(SqlLoggedModel.model_id, SqlLoggedModel.experiment_id).where(
                SqlLoggedModel.model_id.in_(ids[start : start + _CHUNK])
            )
            found.update({model: str(experiment) for model, experiment in conn.execute(query)})
    return found


def install(flask_app) -> None:
    """Replace MLflow's ``_after_request`` in the app's hooks by the wrapped one, at the same place in the order."""
    import mlflow.server.auth as mlflow_auth

    hooks = flask_app.after_request_funcs.setdefault(None, [])
    # create_app registers it exactly once; a second install (or a changed MLflow) must fail loudly, not stack.
    if hooks.count(mlflow_auth._after_request) != 1:
        raise RuntimeError("MLflow's auth after-request hook is not registered exactly once on the app")
    hooks[hooks.index(mlflow_auth._after_request)] = wrap_after_request(mlflow_auth._after_request)
