"""Budgets: which quotas apply to a user, how much of each is used, and what that means for a spawn or a server.

Pure functions over the site config's ``credits`` section and a :class:`UsageLedger`. A server counts against
its user's budget (theirs, or ``default_user``), their tenant's, and each of their teams'; it may start only
while every one of them has room, and it is warned and stopped by whichever runs out first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from atlaslab.config.schema import Credits, Environment, Quota
from atlaslab.core.membership import Membership

from .usage import Scope, UsageLedger

KIND_LABEL = {"gpu": "GPU-hours", "cpu": "CPU-hours"}
PERIOD_LABEL = {"day": "today", "week": "this week", "month": "this month", "year": "this year", "total": "in all"}


@dataclass(frozen=True)
class Charge:
    """Who pays for something that runs (a user's server, a Dask worker) and what it holds while it runs.

    The budgets it spends are its user's, its tenant's and each of its teams'; the spawner, the credits service
    and the Dask Gateway all build one of these and hand it to the functions below.
    """

    user: str
    tenant: str | None = None
    teams: tuple[str, ...] = ()
    environment: str = ""
    gpus: float = 0.0  # GPUs held: whole GPUs, 1 for a MIG slice, 1/N for a seat on a shared GPU
    cpus: float = 0.0

    @classmethod
    def of(cls, user: str, member: Membership, key: str = "", env: Environment | None = None) -> Charge:
        """What a server or worker of environment ``key`` (``env``) started by ``user`` is charged to."""
        gpus = env.gpu.share() if env is not None and env.gpu is not None else 0.0
        cpus = float(env.cpu) if env is not None else 0.0
        return cls(user, member.tenant, tuple(member.teams), key, gpus, cpus)

    def scopes(self) -> list[Scope]:
        """Where its usage is recorded (every scope, budget or not, for reports)."""
        tenant = [("tenant", self.tenant)] if self.tenant else []
        return [("user", self.user), *tenant, *(("team", t) for t in sorted(self.teams))]

    def open_session(self, ledger: UsageLedger, holder: str) -> None:
        """Start counting ``holder`` (a server, a worker) against this charge's budgets."""
        ledger.open(holder, self.user, self.environment, self.cpus, self.gpus, self.scopes())

    def per_worker(self, kind: str) -> float:
        """What one of these spends of a budget of ``kind`` (gpu or cpu) per hour."""
        return self.gpus if kind == "gpu" else self.cpus

    def values(self) -> dict[str, str]:
        """As text, for a cluster's environment or a pod's annotations (:meth:`from_values` reads it back)."""
        return {
            "user": self.user,
            "environment": self.environment,
            "tenant": self.tenant or "",
            "teams": ",".join(self.teams),
            "gpus": f"{self.gpus:g}",
            "cpus": f"{self.cpus:g}",
        }

    @classmethod
    def from_values(cls, values: Mapping[str, Any], prefix: str) -> Charge | None:
        get = {k[len(prefix) :].lower(): v for k, v in values.items() if k.startswith(prefix)}
        if not get.get("user"):
            return None
        return cls(
            user=get["user"],
            environment=get.get("environment", ""),
            tenant=get.get("tenant") or None,
            teams=tuple(t for t in get.get("teams", "").split(",") if t),
            gpus=float(get.get("gpus") or 0),
            cpus=float(get.get("cpus") or 0),
        )


@dataclass(frozen=True)
class Budget:
    scope: str
    name: str
    kind: str  # "gpu" or "cpu"
    limit: float
    used: float
    period: str
    start: datetime
    renews: datetime | None

    @property
    def fraction(self) -> float:
        return self.used / self.limit if self.limit > 0 else float("inf")  # a zero budget allows nothing

    @property
    def remaining(self) -> float:
        return max(0.0, self.limit - self.used)

    @property
    def label(self) -> str:
        return "your own budget" if self.scope == "user" else f"the budget of {self.scope} {self.name}"

    @property
    def key(self) -> str:
        return f"{self.scope}:{self.name}:{self.kind}:{self.start.date().isoformat()}"

    def describe(self) -> str:
        renew = f"; it renews on {self.renews.date().isoformat()}" if self.renews else ""
        return (
            f"{self.label}: {self.used:.2f} of {self.limit:g} {KIND_LABEL[self.kind]} used"
            f" {PERIOD_LABEL[self.period]}{renew}"
        )

    def as_dict(self) -> dict:
        return {
            "scope": self.scope,
            "name": self.name,
            "kind": self.kind,
            "limit": self.limit,
            "used": round(self.used, 4),
            "remaining": round(self.remaining, 4),
            "period": self.period,
            "period_start": self.start.isoformat(),
            "renews": self.renews.isoformat() if self.renews else None,
        }


def window(period: str, now: datetime, quota: Quota) -> tuple[datetime, datetime | None]:
    """The current period's start and end (None: no end, for `total` without expiry)."""
    day = datetime(now.year, now.month, now.day, tzinfo=UTC)
    if period == "day":
        return day, day + timedelta(days=1)
    if period == "week":
        start = day - timedelta(days=now.weekday())
        return start, start + timedelta(days=7)
    if period == "month":
        start = day.replace(day=1)
        return start, (start + timedelta(days=32)).replace(day=1)
    if period == "year":
        start = day.replace(month=1, day=1)
        return start, start.replace(year=start.year + 1)
    start = _midnight(quota.starts) if quota.starts else datetime(1970, 1, 1, tzinfo=UTC)
    return start, _midnight(quota.expires) + timedelta(days=1) if quota.expires else None


def _midnight(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def quotas_for(credits: Credits, charge: Charge) -> list[tuple[Scope, Quota]]:
    out: list[tuple[Scope, Quota]] = []
    mine = credits.users.get(charge.user) or credits.default_user
    if mine is not None:
        out.append((("user", charge.user), mine))
    if charge.tenant and charge.tenant in credits.tenants:
        out.append((("tenant", charge.tenant), credits.tenants[charge.tenant]))
    out += [(("team", t), credits.teams[t]) for t in sorted(charge.teams) if t in credits.teams]
    return out


def budgets(ledger: UsageLedger, credits: Credits, charge: Charge, now: float) -> list[Budget]:
    at = datetime.fromtimestamp(now, UTC)
    out = []
    for scope, quota in quotas_for(credits, charge):
        start, end = window(quota.period, at, quota)
        used = ledger.usage(scope, start.timestamp(), (end or at + timedelta(days=1)).timestamp())
        renews = end if quota.period != "total" else None
        for kind, limit, value in (("gpu", quota.gpu_hours, used.gpu_hours), ("cpu", quota.cpu_hours, used.cpu_hours)):
            if limit is not None:
                out.append(Budget(scope[0], scope[1], kind, limit, value, quota.period, start, renews))
    return out


def spawn_refusal(ledger: UsageLedger, credits: Credits, charge: Charge, now: float) -> str | None:
    """Why ``charge``'s user may not start something holding its GPUs now, or None."""
    gpus = charge.gpus
    today = datetime.fromtimestamp(now, UTC).date()
    for (kind, name), quota in quotas_for(credits, charge):
        label = "Your budget" if kind == "user" else f"The budget of {kind} {name}"
        if quota.expires and today > quota.expires:
            return f"{label} ended on {quota.expires.isoformat()}; ask an administrator to extend it."
        if quota.starts and today < quota.starts:
            return f"{label} starts on {quota.starts.isoformat()}."
        if gpus and quota.max_gpus is not None:
            held = ledger.gpus_held((kind, name))
            if held + gpus > quota.max_gpus:
                return (
                    f"{label} allows {quota.max_gpus} GPU(s) at once and {held:g} are in use;"
                    " stop another GPU server or start a CPU environment."
                )
    for b in budgets(ledger, credits, charge, now):
        if (b.kind == "cpu" or gpus) and b.fraction >= credits.stop_at:
            what = "a CPU environment, or " if b.kind == "gpu" else ""
            return f"No credit left in {b.describe()}. Start {what}wait for the renewal, or ask for more."
    return None


# What a running check stops, in the words of its stop notice: a user's server (the spawner's poll) or their Dask
# clusters (the gateway's heartbeat check).
STOPS = {"server": "Your server stops", "dask": "Your Dask clusters stop"}


def stop_key(budget: Budget, runs: str = "server") -> str:
    """The stop notice's key: its time in the ledger starts the grace. Servers keep the key they always had (a stop
    pending in an existing ledger keeps its deadline); clusters get their own notice, in their own words."""
    return f"{budget.key}:stop" if runs == "server" else f"{budget.key}:stop:{runs}"


@dataclass(frozen=True)
class Verdict:
    notices: list[tuple[str, str, str]]  # (key, level, message) to record once
    over: list[Budget]  # budgets at or past stop_at


def check_running(ledger: UsageLedger, credits: Credits, charge: Charge, now: float, runs: str = "server") -> Verdict:
    """Warnings and stop notices for what ``runs`` (see :data:`STOPS`) under ``charge``; warnings are shared
    (one per budget and level, whatever runs), stop notices are per kind."""
    notices, over = [], []
    for b in budgets(ledger, credits, charge, now):
        if b.kind == "gpu" and not charge.gpus:
            continue
        if b.fraction >= credits.stop_at:
            over.append(b)
            grace = int(credits.grace)
            notices.append(
                (
                    stop_key(b, runs),
                    "stop",
                    f"No credit left in {b.describe()}. {STOPS[runs]} in {grace // 60} min {grace % 60} s:"
                    " save your work now.",
                )
            )
            continue
        for level in reversed(credits.warn_at):
            if b.fraction >= level:
                notices.append((f"{b.key}:{level:g}", "warning", f"{round(level * 100)}% of {b.describe()}."))
                break
    return Verdict(notices, over)


def enforce(
    ledger: UsageLedger, credits: Credits, charge: Charge, now: float, runs: str = "server"
) -> tuple[list[str], Budget | None]:
    """One running check: record the verdict's notices (each once) and say which spent budget's grace is over.

    Returns the messages recorded now and the budget to stop for (None: keep running). The grace runs from the stop
    notice's time in the ledger, so a restart of whoever checks neither loses nor restarts the deadline.
    """
    verdict = check_running(ledger, credits, charge, now, runs)
    recorded = [message for key, level, message in verdict.notices if ledger.notify(charge.user, key, level, message)]
    for b in verdict.over:
        noticed = ledger.notice_time(charge.user, stop_key(b, runs))
        if noticed is not None and now - noticed >= float(credits.grace):
            return recorded, b
    return recorded, None
