"""Owner tags: checked before MLflow creates, renames or retags something, recorded right after it creates it.

The tags are the permission data (see :mod:`.policy`), so users may not edit them: only admins set or delete
``atlaslab.*`` tags after creation, and a rename may not move an experiment into a namespace that names
another owner.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Response, g, request
from mlflow.entities import ExperimentTag
from mlflow.entities.model_registry import RegisteredModelTag

from . import policy

# /api/2.0/mlflow/..., /ajax-api/2.0/mlflow/... (and later API versions)
_ROUTE = re.compile(r"^/(?:ajax-)?api/\d+\.\d+/mlflow/(?P<route>[a-z0-9/_-]+)$")
_TAG_EDITS = {
    "experiments/set-experiment-tag",
    "experiments/delete-experiment-tag",
    "registered-models/set-tag",
    "registered-models/delete-tag",
}


def _tags(body: dict[str, Any]) -> dict[str, str]:
    tags = body.get("tags") or []
    if isinstance(tags, dict):
        return {str(k): str(v) for k, v in tags.items()}
    return {str(t.get("key")): str(t.get("value")) for t in tags if isinstance(t, dict)}


def _refuse(message: str) -> Response:
    return Response(f"Permission denied: {message}", status=403, mimetype="text/plain")


def guard() -> Response | None:
    """Flask before-request hook, run after MLflow's auth hook has identified (and authorized) the caller."""
    match = _ROUTE.match(request.path)
    if match is None or request.method not in ("POST", "PATCH", "DELETE"):
        return None
    route = match["route"]
    if route not in _TAG_EDITS and route not in (
        "experiments/create",
        "experiments/update",
        "registered-models/create",
    ):
        return None
    from .runtime import current

    username = getattr(g, "mlflow_authenticated_user", None)
    member = current().hub.member(username) if username else None
    if member is None:
        return _refuse("unknown user")
    body = request.get_json(silent=True, force=True) or {}
    if not isinstance(body, dict):
        return None  # MLflow answers a malformed body with its own 400
    try:
        if route in _TAG_EDITS:
            if str(body.get("key", "")).startswith(policy.RESERVED_TAG_PREFIX) and not member.admin:
                raise policy.Refused("atlaslab.* tags hold ownership; only admins change them")
        elif route == "experiments/create":
            policy.creation_owner(member, str(body.get("name") or ""), _tags(body))
        elif route == "registered-models/create":
            policy.creation_owner(member, None, _tags(body))
        elif route == "experiments/update" and body.get("new_name"):
            _check_rename(member, str(body.get("experiment_id")), str(body["new_name"]))
    except policy.Refused as refused:
        return _refuse(str(refused))
    return None


def _check_rename(member: policy.Member, experiment_id: str, new_name: str) -> None:
    from mlflow.server.handlers import _get_tracking_store

    target = policy.namespace_owner(member, new_name)
    if target is None or member.admin:
        return
    current = _get_tracking_store().get_experiment(experiment_id).tags.get(policy.OWNER_TAG)
    if current != target[0]:
        raise policy.Refused(f"'{new_name}' would belong to {target[0]}, this experiment belongs to {current}")


def record_owner(store, username: str, resource_type: str, resource_id: str) -> None:
    """Tag a new experiment or registered model with its owner, unless its creation already did."""
    from mlflow.server.handlers import _get_model_registry_store, _get_tracking_store

    member = store.hub.member(username) or policy.Member(username)
    if resource_type == "experiment":
        tracking = _get_tracking_store()
        experiment = tracking.get_experiment(resource_id)
        if policy.OWNER_TAG in experiment.tags:
            return
        try:
            owner, course = policy.creation_owner(member, experiment.name, {})
        except policy.Refused:
            owner, course = f"user:{member.name}", None
        if course:
            tracking.set_experiment_tag(resource_id, ExperimentTag(policy.COURSE_TAG, course))
        tracking.set_experiment_tag(resource_id, ExperimentTag(policy.OWNER_TAG, owner))
        return
    registry = _get_model_registry_store()
    if policy.OWNER_TAG not in registry.get_registered_model(resource_id).tags:
        registry.set_registered_model_tag(resource_id, RegisteredModelTag(policy.OWNER_TAG, f"user:{member.name}"))
