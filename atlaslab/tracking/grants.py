"""MLflow's own permission machinery, fed from hub groups instead of its user table.

MLflow's auth app (``mlflow.server.auth``) decides every route, search filter and artifact download from the
role grants its store returns for a user (``list_grants``); admins are users whose ``is_admin`` is set. This
store computes those grants at request time from the hub (:mod:`.hubapi`) and the owner tags on experiments
and registered models (:mod:`.policy`), so MLflow's validators and result filters, written and tested by
MLflow, enforce AtlasLab's rules, and nothing is copied into a second user database that could go stale.

When MLflow records a creator (``grant_user_permission(..., MANAGE)`` after an experiment or registered model is
created), this store writes the owner tag instead. Everything else about users and roles is the hub's business:
those methods refuse.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Collection

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST
from mlflow.server.auth.entities import User
from mlflow.server.auth.sqlalchemy_store import RoleGrantRow, SqlAlchemyStore
from sqlalchemy import bindparam, text

from . import policy
from .hubapi import HubAPI

# Permission types that take MLflow's per-name grants; sub-resources (runs, traces, logged models, versions)
# fall back to their experiment's or registered model's grant in MLflow's own rules.
EXPERIMENT = "experiment"
MODEL_TYPES = ("registered_model", "prompt")
MANAGED_BY_HUB = "users, roles and permissions come from JupyterHub groups on this server; change them in the hub"

# Everything owned by the member's user, teams and courses, and the course work of the courses they teach, with
# both tags of each match: one query per request instead of one per resource.
EXPERIMENT_TAGS = text(
    "SELECT experiment_id, key, value FROM experiment_tags WHERE key IN (:owner, :course) AND experiment_id IN"
    " (SELECT experiment_id FROM experiment_tags WHERE (key = :owner AND value IN :owners)"
    " OR (key = :course AND value IN :courses))"
).bindparams(bindparam("owners", expanding=True), bindparam("courses", expanding=True))
MODEL_TAGS = text(
    "SELECT name, key, value FROM registered_model_tags WHERE key IN (:owner, :course) AND name IN"
    " (SELECT name FROM registered_model_tags WHERE (key = :owner AND value IN :owners)"
    " OR (key = :course AND value IN :courses))"
).bindparams(bindparam("owners", expanding=True), bindparam("courses", expanding=True))


class HubGrantStore(SqlAlchemyStore):
    """MLflow's auth store, answering from the hub; its database is never opened."""

    def __init__(self, hub: HubAPI):
        super().__init__()
        self.hub = hub
        self._ids: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._next = itertools.count(2)  # 1 is nobody's: MLflow's own tables start there
        self._lock = threading.Lock()

    def init_db(self, db_uri: str, read_db_uri: str | None = None) -> None:
        """Nothing to open: users and grants live in the hub."""

    # ---- users -------------------------------------------------------------------------------------------

    def _id(self, name: str) -> int:
        with self._lock:
            if name not in self._ids:
                self._ids[name] = next(self._next)
                self._names[self._ids[name]] = name
            return self._ids[name]

    def get_user(self, username: str) -> User:
        member = self.hub.member(username)
        if member is None:
            raise MlflowException(f"User '{username}' does not exist in the hub", RESOURCE_DOES_NOT_EXIST)
        return User(id_=self._id(member.name), username=member.name, password_hash="", is_admin=member.admin)

    def has_user(self, username: str, use_primary: bool = False) -> bool:
        return self.hub.member(username) is not None

    def authenticate_user(self, username: str, password: str, use_primary: bool = False) -> bool:
        return False  # no MLflow passwords: identity comes from hub tokens only

    def list_users(self) -> list[User]:
        return []

    # ---- grants ------------------------------------------------------------------------------------------

    def list_grants(self, user_id: int, workspace: str, resource_types: Collection[str]) -> list[RoleGrantRow]:
        member = self.hub.member(self._names.get(user_id, ""))
        if member is None:
            return []
        if member.admin:
            return [RoleGrantRow("workspace", "*", policy.MANAGE)]
        types = set(resource_types)
        grants: list[RoleGrantRow] = []
        if EXPERIMENT in types:
            for exp_id, level in self._levels(member, EXPERIMENT_TAGS, _tracking_engine()).items():
                grants.append(RoleGrantRow(EXPERIMENT, str(exp_id), level))
        wanted_models = [t for t in MODEL_TYPES if t in types]
        if wanted_models:
            for name, level in self._levels(member, MODEL_TAGS, _registry_engine()).items():
                grants += [RoleGrantRow(t, name, level) for t in wanted_models]
        return grants

    def _levels(self, member: policy.Member, statement, engine) -> dict[object, str]:
        """Resource key -> permission, for everything owned by the member's user, teams and courses."""
        params = {
            "owner": policy.OWNER_TAG,
            "course": policy.COURSE_TAG,
            "owners": sorted(member.owner_values()),
            "courses": sorted(member.staff_of) or [""],
        }
        owners: dict[object, str] = {}
        courses: dict[object, str] = {}
        with engine.connect() as conn:
            for key, tag, value in conn.execute(statement, params):
                (owners if tag == policy.OWNER_TAG else courses)[key] = value
        levels = {}
        for key, owner in owners.items():
            got = policy.level(member, owner, courses.get(key), self._students)
            if got:
                levels[key] = got
        return levels

    def _students(self, course: str) -> set[str]:
        return self.hub.group_members(f"course:{course}:students")

    # ---- what MLflow records on creation, and permission edits -------------------------------------------

    def grant_user_permission(self, username: str, resource_type: str, resource_id: str, permission: str) -> None:
        """MLflow calls this with MANAGE for the creator of an experiment or registered model: record its owner."""
        if permission != policy.MANAGE or resource_type not in (EXPERIMENT, *MODEL_TYPES):
            raise MlflowException(MANAGED_BY_HUB, INVALID_PARAMETER_VALUE)
        from .ownership import record_owner

        record_owner(self, username, resource_type, resource_id)

    def delete_grants_for_resource(self, *args, **kwargs) -> None:
        """Owner tags go with the resource itself."""

    def rename_grants_for_resource(self, *args, **kwargs) -> None:
        """Owner tags follow a renamed registered model."""

    def _refuse(self, *args, **kwargs):
        raise MlflowException(MANAGED_BY_HUB, INVALID_PARAMETER_VALUE)

    create_user = update_user = delete_user = _refuse
    create_role = update_role = delete_role = add_role_permission = remove_role_permission = _refuse
    update_role_permission = assign_role_to_user = unassign_role_from_user = _refuse
    grant_user_resource_permission = revoke_user_resource_permission = _refuse


def _tracking_engine():
    from mlflow.server.handlers import _get_tracking_store

    return _get_tracking_store().engine


def _registry_engine():
    from mlflow.server.handlers import _get_model_registry_store

    return _get_model_registry_store().engine
