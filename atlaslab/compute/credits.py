"""Budgets: which quotas apply to a user, how much of each is used, and what that means for a spawn or a server.

Pure functions over the site config's ``credits`` section and a :class:`UsageLedger`. A server counts against
its user's budget (theirs, or ``default_user``), their tenant's, and each of their teams'; it may start only
while every one of them has room, and it is warned and stopped by whichever runs out first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from atlaslab.config.schema import Credits, Quota

from .usage import Scope, UsageLedger

KIND_LABEL = {"gpu": "GPU-hours", "cpu": "CPU-hours"}
PERIOD_LABEL = {"day": "today", "week": "this week", "month": "this month", "year": "this year", "total": "in all"}


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


def quotas_for(credits: Credits, user: str, tenant: str | None, teams: list[str]) -> list[tuple[Scope, Quota]]:
    out: list[tuple[Scope, Quota]] = []
    mine = credits.users.get(user) or credits.default_user
    if mine is not None:
        out.append((("user", user), mine))
    if tenant and tenant in credits.tenants:
        out.append((("tenant", tenant), credits.tenants[tenant]))
    out += [(("team", t), credits.teams[t]) for t in sorted(teams) if t in credits.teams]
    return out


def scopes_of(user: str, tenant: str | None, teams: list[str]) -> list[Scope]:
    """Where a server's usage is recorded (every scope, budget or not, for reports)."""
    return [("user", user), *([("tenant", tenant)] if tenant else []), *(("team", t) for t in sorted(teams))]


def budgets(
    ledger: UsageLedger, credits: Credits, user: str, tenant: str | None, teams: list[str], now: float
) -> list[Budget]:
    at = datetime.fromtimestamp(now, UTC)
    out = []
    for scope, quota in quotas_for(credits, user, tenant, teams):
        start, end = window(quota.period, at, quota)
        used = ledger.usage(scope, start.timestamp(), (end or at + timedelta(days=1)).timestamp())
        renews = end if quota.period != "total" else None
        for kind, limit, value in (("gpu", quota.gpu_hours, used.gpu_hours), ("cpu", quota.cpu_hours, used.cpu_hours)):
            if limit is not None:
                out.append(Budget(scope[0], scope[1], kind, limit, value, quota.period, start, renews))
    return out


def spawn_refusal(
    ledger: UsageLedger, credits: Credits, user: str, tenant: str | None, teams: list[str], gpus: float, now: float
) -> str | None:
    """Why this user may not start a server with ``gpus`` GPUs now, or None."""
    today = datetime.fromtimestamp(now, UTC).date()
    for (kind, name), quota in quotas_for(credits, user, tenant, teams):
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
    for b in budgets(ledger, credits, user, tenant, teams, now):
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


def check_running(
    ledger: UsageLedger,
    credits: Credits,
    user: str,
    tenant: str | None,
    teams: list[str],
    gpus: float,
    now: float,
    runs: str = "server",
) -> Verdict:
    """Warnings and stop notices for what ``runs`` (see :data:`STOPS`) holding ``gpus`` GPUs; warnings are shared
    (one per budget and level, whatever runs), stop notices are per kind."""
    notices, over = [], []
    for b in budgets(ledger, credits, user, tenant, teams, now):
        if b.kind == "gpu" and not gpus:
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
    ledger: UsageLedger,
    credits: Credits,
    user: str,
    tenant: str | None,
    teams: list[str],
    gpus: float,
    now: float,
    runs: str = "server",
) -> tuple[list[str], Budget | None]:
    """One running check: record the verdict's notices (each once) and say which spent budget's grace is over.

    Returns the messages recorded now and the budget to stop for (None: keep running). The grace runs from the stop
    notice's time in the ledger, so a restart of whoever checks neither loses nor restarts the deadline.
    """
    verdict = check_running(ledger, credits, user, tenant, teams, gpus, now, runs)
    recorded = [message for key, level, message in verdict.notices if ledger.notify(user, key, level, message)]
    for b in verdict.over:
        noticed = ledger.notice_time(user, stop_key(b, runs))
        if noticed is not None and now - noticed >= float(credits.grace):
            return recorded, b
    return recorded, None
