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

``metrics/get-history`` has the same flaw (MLflow's ``redact_metric_history_model_ids`` clears a metric's
``model_id`` only under that veto) and goes through the same two steps. Its bulk variants write metrics without a
``model_id`` at all.

GraphQL (``/graphql``, which the UI uses for ``mlflowGetRun`` and ``mlflowSearchRuns``) answers from the same
protobuf messages, outside the after-request hooks, and MLflow's ``GraphQLAuthorizationMiddleware`` applies the same
all-or-nothing rule. Rewriting its JSON afterwards cannot work: aliases rename every key. So
:class:`ModelLinkMiddleware` is a graphene middleware that sees each field as it is resolved, whatever the query
calls it or however fragments reach it: a field named ``modelId``, on any type, resolves to null when the caller may
not read that model, and a run's ``modelInputs``/``modelOutputs`` lists keep only readable links.
:func:`install_graphql` puts it in front of MLflow's own.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Any

from flask import Response, request
from google.protobuf.message import Message

# The fields _withhold_denied_run_model_links clears (RunInputs.model_inputs, RunOutputs.model_outputs,
# Metric.model_id), and the one redact_metric_history_model_ids clears (Metric.model_id); tests/test_tracking_unit.py
# fails if a later MLflow's redactors read a field not listed here.
MODEL_LINK_FIELDS = ("model_inputs", "model_outputs", "model_id")
# Each as a JSON key, in both spellings ParseDict accepts.
_MARKERS = (b'"model_inputs"', b'"modelInputs"', b'"model_outputs"', b'"modelOutputs"', b'"model_id"', b'"modelId"')
# Model ids per query: well under SQLite's limit on bound parameters.
_CHUNK = 500

AfterRequest = Callable[[Response], Response]
# A response message -> (the runs in it, the metrics in it outside any run).
PartsOf = Callable[[Any], tuple[Iterable[Any], Iterable[Any]]]


def names_model_links(body: bytes) -> bool:
    """Whether a serialised run response may name a logged model (False only when it certainly does not)."""
    return any(marker in body for marker in _MARKERS)


def _plain_json(resp: Response) -> bool:
    return resp.status_code < 400 and not resp.is_streamed and resp.content_encoding is None and resp.is_json


def _model_link_redactors() -> dict[Callable, tuple[Callable[[], Any], PartsOf]]:
    """MLflow's redactors of links to logged models -> (the response message they parse, its runs and metrics)."""
    import mlflow.server.auth as mlflow_auth
    from mlflow.protos.service_pb2 import GetMetricHistory, GetRun, SearchRuns

    return {
        mlflow_auth.redact_search_runs_model_links: (SearchRuns.Response, lambda message: (message.runs, ())),
        mlflow_auth.redact_get_run_model_links: (GetRun.Response, lambda message: ([message.run], ())),
        mlflow_auth.redact_metric_history_model_ids: (GetMetricHistory.Response, lambda message: ((), message.metrics)),
    }


def wrap_after_request(mlflow_after_request: AfterRequest) -> AfterRequest:
    """MLflow's after-request hook: skipped when it would redact model links and the body names no logged model,
    followed by :func:`withhold_unreadable_model_links` when links remain."""
    import mlflow.server.auth as mlflow_auth

    redactors = _model_link_redactors()

    def after_request(resp: Response) -> Response:
        # The handler MLflow itself would pick for this route (exact paths: these routes are all unparameterized);
        # anything else, including a route a later MLflow gives a different handler, goes to MLflow as is.
        redactor = redactors.get(mlflow_auth.AFTER_REQUEST_HANDLERS.get((request.path, request.method)))
        if redactor is None or not _plain_json(resp):
            return mlflow_after_request(resp)
        if not names_model_links(resp.get_data()):
            return resp
        resp = mlflow_after_request(resp)
        if _plain_json(resp) and names_model_links(resp.get_data()) and not mlflow_auth.sender_is_admin():
            message_class, parts_of = redactor
            withhold_unreadable_model_links(resp, message_class(), parts_of)
        return resp

    after_request.__wrapped__ = mlflow_after_request  # type: ignore[attr-defined]
    return after_request


def withhold_unreadable_model_links(resp: Response, message: Any, parts_of: PartsOf) -> None:
    """Drop the caller's unreadable logged models from the runs' inputs, outputs and metrics in ``resp``."""
    import mlflow.server.auth as mlflow_auth
    from mlflow.utils.proto_json_utils import message_to_json, parse_dict

    parse_dict(resp.json, message)
    runs, loose_metrics = parts_of(message)
    runs = list(runs)
    metrics = [*loose_metrics, *(metric for run in runs for metric in run.data.metrics)]
    named = {link.model_id for run in runs for link in (*run.inputs.model_inputs, *run.outputs.model_outputs)}
    named |= {metric.model_id for metric in metrics}
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
    for metric in metrics:
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


# ---- GraphQL ------------------------------------------------------------------------------------------------------

# Field names (as the schema spells them) the middleware acts on; any other field costs one set lookup.
_MODEL_ID = "modelId"
_LINK_LISTS = frozenset({("MlflowRunInputs", "modelInputs"), ("MlflowRunOutputs", "modelOutputs")})
_RUN_FIELDS = frozenset({"run", "runs"})
_RUN_TYPES = frozenset({"MlflowRun", "MlflowRunExtension"})
_WATCHED = frozenset({_MODEL_ID, "modelInputs", "modelOutputs", *_RUN_FIELDS})


class ModelLinkMiddleware:
    """Graphene middleware that withholds logged-model ids a non-admin caller may not read.

    Safety rests on two per-field rules, which no alias or fragment can get around (graphql-core calls the
    middleware for every field it resolves, under whatever name the query gives it):

    * any field named ``modelId`` (runs' model inputs and outputs, metrics, model versions and their metrics)
      resolves to null unless the caller may read that model;
    * ``MlflowRunInputs.modelInputs`` and ``MlflowRunOutputs.modelOutputs`` keep only links to readable models,
      as the REST routes do, so a withheld link does not even show as an entry.

    A field that resolves to runs only asks, in one batch, which of the models they name are readable, so that
    a page of runs costs one lookup, not one per metric. An instance serves one request (see
    :func:`graphql_middleware`): it remembers the caller and their answers for that request only.
    """

    def __init__(self) -> None:
        self._caller: tuple[str, bool] | None = None  # (username, admin)
        self._readable: dict[str, bool] = {}

    def resolve(self, next_: Callable[..., Any], root: Any, info: Any, **args: Any) -> Any:
        value = next_(root, info, **args)
        field = info.field_name
        if field not in _WATCHED or value is None:
            return value
        username, admin = self._who()
        if admin:
            return value
        if field == _MODEL_ID:
            # An unset id reads as "" on a protobuf message: nothing to withhold, and what MLflow would answer.
            return value if not value or self._may_read(username, [value]) else None
        if (info.parent_type.name, field) in _LINK_LISTS:
            readable = self._may_read(username, [link.model_id for link in value])
            return [link for link in value if link.model_id in readable]
        if field in _RUN_FIELDS and _named_type(info.return_type) in _RUN_TYPES:
            # Only the batch look-up; the model ids themselves are judged when their own fields resolve.
            runs = [value] if isinstance(value, Message) else value
            self._may_read(username, [model for run in runs for model in _models_named_by(run)])
        return value

    def _who(self) -> tuple[str, bool]:
        if self._caller is None:
            import mlflow.server.auth as mlflow_auth

            authorization = mlflow_auth.authenticate_request()
            # MLflow's before-request hook refuses a caller it cannot authenticate; if one got here anyway, they
            # are nobody, who reads no model.
            username = "" if isinstance(authorization, Response) else (authorization.username or "")
            self._caller = (username, bool(username) and mlflow_auth.sender_is_admin())
        return self._caller

    def _may_read(self, username: str, model_ids: Iterable[str]) -> set[str]:
        """Which of ``model_ids`` the caller may read; looks up only those this request has not yet asked about."""
        ids = set(model_ids)
        ids.discard("")
        unknown = ids - self._readable.keys()
        if unknown:
            readable = readable_models(unknown, username) if username else set()
            self._readable.update({model: model in readable for model in unknown})
        return {model for model in ids if self._readable[model]}


def _named_type(graphql_type: Any) -> str:  # MlflowRunExtension for both [MlflowRunExtension!] and MlflowRunExtension
    from graphql import get_named_type

    return get_named_type(graphql_type).name


def _models_named_by(run: Any) -> list[str]:
    links = (*run.inputs.model_inputs, *run.outputs.model_outputs)
    return [link.model_id for link in links] + [metric.model_id for metric in run.data.metrics]


def graphql_middleware() -> list[Any]:
    """The middleware for one GraphQL request: ours, outermost, so it sees what MLflow's lets through; then MLflow's.

    MLflow's handler calls this for each request through ``_get_graphql_auth_middleware``, which it would otherwise
    call itself; that one turns any error into *no* middleware, so this one does not catch: an error, or MLflow's
    GraphQL authorization being off, refuses the query instead of answering it unchecked.
    """
    import mlflow.server.auth as mlflow_auth

    mlflow_middleware = mlflow_auth.get_graphql_authorization_middleware()
    if not mlflow_middleware:
        # Ours only withholds model ids; without MLflow's nothing would authorize the query's runs at all.
        raise RuntimeError("MLflow's GraphQL authorization is off (MLFLOW_SERVER_ENABLE_GRAPHQL_AUTH): refused")
    return [ModelLinkMiddleware(), *mlflow_middleware]


def install_graphql() -> None:
    """Make MLflow's GraphQL handler use :func:`graphql_middleware` (its own files on disk stay as they are)."""
    import mlflow.server.handlers as handlers

    # Installed once, in place of MLflow's own function; anything else there means a changed MLflow: fail loudly.
    if getattr(handlers._get_graphql_auth_middleware, "__module__", None) != handlers.__name__:
        raise RuntimeError("MLflow's _get_graphql_auth_middleware is not MLflow's own: already installed?")
    handlers._get_graphql_auth_middleware = graphql_middleware
