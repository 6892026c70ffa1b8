"""The usage ledger and budgets with a controllable clock: periods, renewals, refusals, warnings."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from atlaslab.compute import credits
from atlaslab.compute.usage import UsageLedger
from atlaslab.config.schema import Credits, Quota

H = 3600.0


class Clock:
    def __init__(self, when: datetime):
        self.now = when.timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 11, 30, 20, 0, tzinfo=UTC))


@pytest.fixture
def ledger(tmp_path: Path, clock: Clock) -> UsageLedger:
    return UsageLedger(tmp_path / "usage.sqlite", clock=clock)


SCOPES = [("tenant", "startup"), ("team", "vision")]


def test_usage_accumulates_per_scope_and_splits_at_the_period_boundary(ledger: UsageLedger, clock: Clock) -> None:
    ledger.open("ana/", "ana", "gpu-two", cpus=4, gpus=2, scopes=SCOPES)
    clock.advance(6 * H)  # 20:00 on Nov 30 to 02:00 on Dec 1
    ledger.close("ana/")
    nov = (datetime(2026, 11, 1, tzinfo=UTC).timestamp(), datetime(2026, 12, 1, tzinfo=UTC).timestamp())
    dec = (nov[1], datetime(2027, 1, 1, tzinfo=UTC).timestamp())
    for scope in [("user", "ana"), *SCOPES]:
        assert ledger.usage(scope, *nov).gpu_hours == pytest.approx(8.0)  # 4 h x 2 GPUs
        assert ledger.usage(scope, *dec).gpu_hours == pytest.approx(4.0)
        assert ledger.usage(scope, *dec).cpu_hours == pytest.approx(8.0)
    assert ledger.usage(("team", "other"), *nov).gpu_hours == 0


def test_running_sessions_count_up_to_now_and_restart_closes_the_dead(ledger: UsageLedger, clock: Clock) -> None:
    ledger.open("bo/", "bo", "cpu", cpus=1, gpus=0, scopes=[])
    clock.advance(H)
    ledger.seen("bo/")
    clock.advance(H)
    window = (0.0, clock.now + 1)
    assert ledger.usage(("user", "bo"), *window).cpu_hours == pytest.approx(2.0)
    # The hub restarts; bo's server did not survive: the session ends when it was last seen.
    assert ledger.close_all_but(running=set()) == ["bo/"]
    clock.advance(5 * H)
    assert ledger.usage(("user", "bo"), *(0.0, clock.now + 1)).cpu_hours == pytest.approx(1.0)


def test_windows_and_renewal_dates() -> None:
    now = datetime(2026, 11, 25, 13, 0, tzinfo=UTC)  # a Wednesday
    q = Quota()
    assert credits.window("month", now, q) == (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
    assert credits.window("week", now, q)[0] == datetime(2026, 11, 23, tzinfo=UTC)
    assert credits.window("year", now, q)[1] == datetime(2027, 1, 1, tzinfo=UTC)
    access = Quota(period="total", starts=date(2026, 9, 1), expires=date(2027, 2, 28))
    assert credits.window("total", now, access) == (
        datetime(2026, 9, 1, tzinfo=UTC),
        datetime(2027, 3, 1, tzinfo=UTC),
    )


def test_spawn_refusals_say_why_and_when(ledger: UsageLedger, clock: Clock) -> None:
    site = Credits(
        tenants={"startup": Quota(gpu_hours=10, period="month", max_gpus=2, expires=date(2027, 6, 30))},
        teams={"vision": Quota(cpu_hours=100)},
    )
    gpu = credits.Charge("ana", "startup", ("vision",), gpus=1)
    cpu = credits.Charge("ana", "startup", ("vision",), gpus=0)
    clock.now = datetime(2026, 11, 10, 8, 0, tzinfo=UTC).timestamp()
    assert credits.spawn_refusal(ledger, site, gpu, now=clock()) is None
    ledger.open("ana/", "ana", "gpu", cpus=4, gpus=2, scopes=SCOPES)
    # Two GPUs held: a third is over the tenant's concurrency.
    message = credits.spawn_refusal(ledger, site, gpu, now=clock())
    assert message and "allows 2 GPU(s) at once and 2 are in use" in message
    clock.advance(5 * H)
    ledger.close("ana/")
    message = credits.spawn_refusal(ledger, site, gpu, now=clock())
    assert message == (
        "No credit left in the budget of tenant startup: 10.00 of 10 GPU-hours used this month; it renews on"
        " 2026-12-01. Start a CPU environment, or wait for the renewal, or ask for more."
    )
    # A CPU server is still fine: only the GPU budget is spent.
    assert credits.spawn_refusal(ledger, site, cpu, now=clock()) is None
    # After the programme's end nothing starts.
    clock.now = datetime(2027, 7, 1, tzinfo=UTC).timestamp()
    message = credits.spawn_refusal(ledger, site, cpu, now=clock())
    assert message and "ended on 2027-06-30" in message


def test_running_checks_warn_once_per_level_then_stop(ledger: UsageLedger, clock: Clock) -> None:
    site = Credits(users={"cy": Quota(cpu_hours=10, period="day")}, warn_at=[0.5, 0.9], grace=60)
    clock.now = start = datetime(2026, 11, 10, 0, 0, tzinfo=UTC).timestamp()
    ledger.open("cy/", "cy", "cpu", cpus=1, gpus=0, scopes=[])
    seen: list[str] = []
    for _ in range(12):
        clock.advance(H)
        verdict = credits.check_running(ledger, site, credits.Charge("cy"), now=clock())
        for key, level, message in verdict.notices:
            if ledger.notify("cy", key, level, message):
                seen.append(f"{level}: {message.split(':')[0]}")
        if verdict.over:
            break
    assert seen == [
        "warning: 50% of your own budget",
        "warning: 90% of your own budget",
        "stop: No credit left in your own budget",
    ]
    assert clock.now - start == pytest.approx(10 * H)


def test_enforce_warns_then_stops_after_the_grace_even_across_a_restart(tmp_path: Path, clock: Clock) -> None:
    site = Credits(users={"di": Quota(cpu_hours=10, gpu_hours=1, period="day")}, warn_at=[0.8, 0.95], grace=60)
    clock.now = datetime(2026, 11, 10, 0, 0, tzinfo=UTC).timestamp()
    ledger = UsageLedger(tmp_path / "usage.sqlite", clock=clock)
    ledger.open("di/dask/c1/w1", "di", "cpu", cpus=1, gpus=0, scopes=[])

    def check(runs: str = "dask") -> tuple[list[str], credits.Budget | None]:
        return credits.enforce(ledger, site, credits.Charge("di"), now=clock(), runs=runs)

    clock.advance(7 * H)
    assert check() == ([], None)
    clock.advance(1.5 * H)  # 85%
    recorded, spent = check()
    assert [m.split(":")[0] for m in recorded] == ["80% of your own budget"] and spent is None
    # Warnings are one per budget and level, whoever checks: the server's check records nothing new.
    assert check("server") == ([], None)
    clock.advance(1.5 * H)  # 100%: the clusters' own stop notice starts the grace
    recorded, spent = check()
    assert spent is None and len(recorded) == 1
    assert recorded[0].endswith("Your Dask clusters stop in 1 min 0 s: save your work now.")
    clock.advance(59)
    assert check() == ([], None)
    # The checker restarts: the deadline is the notice's time in the ledger, not restarted.
    ledger = UsageLedger(tmp_path / "usage.sqlite", clock=clock)
    clock.advance(1)
    recorded, spent = check()
    assert recorded == [] and spent is not None and (spent.scope, spent.kind) == ("user", "cpu")
    # A server's stop has its own notice (its own words and grace), not the clusters'.
    recorded, spent = check("server")
    assert spent is None and recorded[0].endswith("Your server stops in 1 min 0 s: save your work now.")
    assert [n["level"] for n in ledger.notices("di")] == ["warning", "stop", "stop"]


def test_enforce_stops_only_for_the_kind_of_budget_spent(ledger: UsageLedger, clock: Clock) -> None:
    # The GPU-hours are spent, the CPU-hours are not: GPU work stops, CPU work goes on (as at spawn).
    site = Credits(users={"ed": Quota(cpu_hours=100, gpu_hours=1)}, grace=0)
    ledger.open("ed/dask/gpu/w1", "ed", "gpu", cpus=1, gpus=1, scopes=[])
    clock.advance(2 * H)
    _, spent = credits.enforce(ledger, site, credits.Charge("ed", gpus=1), now=clock(), runs="dask")
    assert spent is not None and spent.kind == "gpu"
    assert credits.enforce(ledger, site, credits.Charge("ed"), now=clock(), runs="dask") == ([], None)
