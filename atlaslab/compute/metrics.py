"""Prometheus metrics of GPUs and budgets, served with the hub's own at /hub/metrics (scrape token needed)."""

from __future__ import annotations

from prometheus_client import Gauge

GPUS_ASSIGNED = Gauge("atlaslab_gpus_assigned", "GPU devices (whole or MIG) held by running servers")
BUDGET_USED = Gauge(
    "atlaslab_budget_used_ratio",
    "Fraction of a GPU or CPU budget used in its current period",
    ["scope", "name", "kind"],
)
BUDGET_USED_HOURS = Gauge(
    "atlaslab_budget_used_hours",
    "GPU- or CPU-hours used in a budget's current period",
    ["scope", "name", "kind"],
)


def record_budgets(budgets: list) -> None:
    for b in budgets:
        BUDGET_USED.labels(b.scope, b.name, b.kind).set(b.used / b.limit if b.limit > 0 else 1.0)
        BUDGET_USED_HOURS.labels(b.scope, b.name, b.kind).set(b.used)


def record_assignments(assignments: dict[str, list[str]]) -> None:
    GPUS_ASSIGNED.set(sum(len(uuids) for uuids in assignments.values()))
