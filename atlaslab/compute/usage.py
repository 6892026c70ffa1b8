"""The usage ledger: every server's run, with its CPUs and GPUs, kept in SQLite so a hub restart loses nothing.

A session opens when a server starts and closes when it stops or is found dead; while it runs, checks move its
``seen`` time forward, so a session whose hub died with it ends at the last moment it was known to run. Each
session is charged to scopes: the user, their tenant and each of their teams. Usage over a window is the
overlap of sessions with it, times their CPUs or GPUs. Notices (budget warnings) are kept here too.

Time comes from a clock passed in (``time.time`` by default), so tests can move it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import sqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY,
    holder TEXT NOT NULL,            -- user/servername
    user TEXT NOT NULL,
    environment TEXT NOT NULL,
    cpus REAL NOT NULL,
    gpus REAL NOT NULL,
    started REAL NOT NULL,
    seen REAL NOT NULL,
    ended REAL
);
CREATE INDEX IF NOT EXISTS sessions_open ON sessions (holder) WHERE ended IS NULL;
CREATE TABLE IF NOT EXISTS charges (
    session INTEGER NOT NULL REFERENCES sessions (id),
    scope TEXT NOT NULL,             -- 'user', 'tenant' or 'team'
    name TEXT NOT NULL,
    PRIMARY KEY (session, scope, name)
);
CREATE INDEX IF NOT EXISTS charges_scope ON charges (scope, name);
CREATE TABLE IF NOT EXISTS notices (
    id INTEGER PRIMARY KEY,
    user TEXT NOT NULL,
    key TEXT NOT NULL,               -- dedupe: one notice per budget, level and period
    level TEXT NOT NULL,             -- 'warning' or 'stop'
    message TEXT NOT NULL,
    at REAL NOT NULL,
    UNIQUE (user, key)
);
"""
Scope = tuple[str, str]  # ("tenant", "school"), ("team", "vision"), ("user", "alice")


@dataclass(frozen=True)
class Usage:
    gpu_hours: float = 0.0
    cpu_hours: float = 0.0


@dataclass(frozen=True)
class Session:
    holder: str
    user: str
    environment: str
    cpus: float
    gpus: float
    started: float
    seen: float
    ended: float | None


class UsageLedger:
    def __init__(self, db: str | Path, clock: Callable[[], float] = time.time):
        self.db = Path(db)
        self.clock = clock
        sqlite.create(self.db, SCHEMA)

    def _tx(self):
        return sqlite.transaction(self.db)

    # ---- sessions -----------------------------------------------------------------------------------------

    def open(self, holder: str, user: str, environment: str, cpus: float, gpus: float, scopes: list[Scope]) -> int:
        """Start counting ``holder``'s server (closing any session it left open)."""
        now = self.clock()
        with self._tx() as conn:
            conn.execute("UPDATE sessions SET ended = seen WHERE holder = ? AND ended IS NULL", (holder,))
            cur = conn.execute(
                "INSERT INTO sessions (holder, user, environment, cpus, gpus, started, seen) VALUES (?,?,?,?,?,?,?)",
                (holder, user, environment, cpus, gpus, now, now),
            )
            sid = int(cur.lastrowid or 0)
            conn.executemany(
                "INSERT OR IGNORE INTO charges (session, scope, name) VALUES (?, ?, ?)",
                [(sid, scope, name) for scope, name in {("user", user), *scopes}],
            )
            return sid

    def seen(self, holder: str) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE sessions SET seen = ? WHERE holder = ? AND ended IS NULL", (self.clock(), holder))

    def close(self, holder: str) -> None:
        now = self.clock()
        with self._tx() as conn:
            conn.execute(
                "UPDATE sessions SET seen = ?, ended = ? WHERE holder = ? AND ended IS NULL", (now, now, holder)
            )

    def close_all_but(self, running: set[str]) -> list[str]:
        """Close sessions of servers that are not running (the hub restarted after they died); at last sight."""
        with self._tx() as conn:
            open_ = [h for (h,) in conn.execute("SELECT holder FROM sessions WHERE ended IS NULL").fetchall()]
            gone = [h for h in open_ if h not in running]
            conn.executemany(
                "UPDATE sessions SET ended = seen WHERE holder = ? AND ended IS NULL", [(h,) for h in gone]
            )
        return gone

    def open_sessions(self) -> list[Session]:
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT holder, user, environment, cpus, gpus, started, seen, ended FROM sessions WHERE ended IS NULL"
            ).fetchall()
        return [Session(*r) for r in rows]

    # ---- sums ---------------------------------------------------------------------------------------------

    def usage(self, scope: Scope, since: float, until: float) -> Usage:
        """GPU- and CPU-hours charged to ``scope`` between ``since`` and ``until`` (open sessions: up to now)."""
        now = self.clock()
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT s.cpus, s.gpus, s.started, s.seen, s.ended FROM sessions s JOIN charges c ON c.session = s.id"
                " WHERE c.scope = ? AND c.name = ? AND s.started < ? AND COALESCE(s.ended, ?) > ?",
                (scope[0], scope[1], until, max(now, until), since),
            ).fetchall()
        gpu = cpu = 0.0
        for cpus, gpus, started, seen, ended in rows:
            end = ended if ended is not None else max(seen, now)
            overlap = max(0.0, min(end, until) - max(started, since)) / 3600
            gpu += gpus * overlap
            cpu += cpus * overlap
        return Usage(gpu_hours=gpu, cpu_hours=cpu)

    def gpus_held(self, scope: Scope) -> float:
        with self._tx() as conn:
            (held,) = conn.execute(
                "SELECT COALESCE(SUM(s.gpus), 0) FROM sessions s JOIN charges c ON c.session = s.id"
                " WHERE c.scope = ? AND c.name = ? AND s.ended IS NULL",
                scope,
            ).fetchone()
        return float(held)

    def report(self, since: float, until: float) -> list[tuple[str, str, Usage]]:
        """(scope, name, usage) for every scope charged in the window, sorted."""
        with self._tx() as conn:
            scopes = conn.execute(
                "SELECT DISTINCT c.scope, c.name FROM charges c JOIN sessions s ON c.session = s.id"
                " WHERE s.started < ? AND COALESCE(s.ended, ?) > ?",
                (until, max(self.clock(), until), since),
            ).fetchall()
        order = {"tenant": 0, "team": 1, "user": 2}
        return [(s, n, self.usage((s, n), since, until)) for s, n in sorted(scopes, key=lambda x: (order[x[0]], x[1]))]

    # ---- notices ------------------------------------------------------------------------------------------

    def notify(self, user: str, key: str, level: str, message: str) -> bool:
        """Record a notice once per ``key``; True if it is new."""
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO notices (user, key, level, message, at) VALUES (?, ?, ?, ?, ?)",
                (user, key, level, message, self.clock()),
            )
            return cur.rowcount == 1

    def notice_time(self, user: str, key: str) -> float | None:
        with self._tx() as conn:
            row = conn.execute("SELECT at FROM notices WHERE user = ? AND key = ?", (user, key)).fetchone()
        return row[0] if row else None

    def notices(self, user: str, since: float = 0.0) -> list[dict]:
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT level, message, at FROM notices WHERE user = ? AND at >= ? ORDER BY at, id", (user, since)
            ).fetchall()
        return [{"level": level, "message": message, "at": at} for level, message, at in rows]
