"""One server against its user's budgets: refused at start when none is left, counted while it runs, warned at the
configured levels, stopped once a budget has been spent for the grace (:mod:`atlaslab.compute.credits`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from atlaslab.compute import credits as credits_mod
from atlaslab.compute import metrics
from atlaslab.compute.credits import Charge
from atlaslab.compute.usage import UsageLedger
from atlaslab.config.schema import Credits

LEDGER_NAME = "usage.sqlite"


def ledger_at(directory: Path) -> UsageLedger:
    return UsageLedger(directory / LEDGER_NAME)


@dataclass(frozen=True)
class Stop:
    """A server to stop now: why, as its user reads it, and the notice to record."""

    log: str
    key: str
    message: str


class ServerBudget:
    """``credits`` None: the site sets no budget, and only usage is recorded."""

    def __init__(self, directory: Path, credits: Credits | None, holder: str):
        self.ledger = ledger_at(directory)
        self.credits = credits
        self.holder = holder

    def refusal(self, charge: Charge, now: float) -> str | None:
        if self.credits is None:
            return None
        return credits_mod.spawn_refusal(self.ledger, self.credits, charge, now)

    def started(self, charge: Charge) -> None:
        charge.open_session(self.ledger, self.holder)

    def stopped(self) -> None:
        self.ledger.close(self.holder)

    def check(self, charge: Charge, now: float) -> tuple[list[str], Stop | None]:
        """Count the running server; the notices recorded now, and a :class:`Stop` once its grace is over."""
        self.ledger.seen(self.holder)
        if self.credits is None:
            return [], None
        metrics.record_budgets(credits_mod.budgets(self.ledger, self.credits, charge, now))
        recorded, spent = credits_mod.enforce(self.ledger, self.credits, charge, now)
        if spent is None:
            return recorded, None
        message = f"Your server was stopped: no credit left in {spent.describe()}."
        return recorded, Stop(f"no credit left in {spent.describe()}", f"{spent.key}:stopped:{int(now)}", message)
