"""Which server holds which GPU: assignments by UUID, in SQLite so they survive hub restarts.

Requests are an environment's ``gpu`` setting (:class:`atlaslab.config.schema.GPURequest`): ``count`` whole GPUs
(exclusive), one ``mig`` instance of that profile (exclusive), or a ``shared`` seat on a GPU shared by at most N
servers. A whole GPU is never given out while anyone holds it (exclusively or a shared seat), and a
shared GPU is filled before a fresh one is opened, so whole GPUs stay available.

Every decision runs in one ``BEGIN IMMEDIATE`` transaction: concurrent spawns in one hub (threads) or in
several processes are serialized by SQLite's lock and can never pick the same device. Assignments record the
server's PID and its start time once it runs; an assignment whose process is gone (a crash, a killed server,
a machine reboot) is freed the next time anything is allocated, so a crashed server's device comes back
without anyone noticing the crash.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import psutil

from atlaslab.config.schema import GPURequest

from . import sqlite
from .gpus import GPU

# An assignment that never got a PID (the hub died mid-spawn) is stale after this long.
STARTING_GRACE = 15 * 60

SCHEMA = """
CREATE TABLE IF NOT EXISTS assignments (
    uuid TEXT NOT NULL,
    holder TEXT NOT NULL,
    mode TEXT NOT NULL,          -- 'exclusive' or 'shared'
    seats INTEGER NOT NULL,      -- for a shared GPU: how many servers may share it
    since REAL NOT NULL,
    pid INTEGER,
    pid_started REAL,
    PRIMARY KEY (uuid, holder)
);
CREATE INDEX IF NOT EXISTS assignments_holder ON assignments (holder);
"""


class NoGpuFree(RuntimeError):
    """Nothing fits the request now; the message says what is busy."""


class GpuAllocator:
    def __init__(self, db: str | Path, devices: Sequence[GPU]):
        self.db = Path(db)
        self.devices = list(devices)
        sqlite.create(self.db, SCHEMA)

    def _tx(self):
        return sqlite.transaction(self.db)

    # ---- the one decision -------------------------------------------------------------------------------

    def allocate(self, holder: str, request: GPURequest) -> list[GPU]:
        """Devices for ``holder`` (replacing whatever it held); raises NoGpuFree with what is busy."""
        with self._tx() as conn:
            conn.execute("DELETE FROM assignments WHERE holder = ?", (holder,))
            self._free_dead(conn)
            rows = conn.execute("SELECT uuid, holder, mode, seats FROM assignments").fetchall()
            chosen, mode, seats = self._choose(request, rows)
            now = time.time()
            conn.executemany(
                "INSERT INTO assignments (uuid, holder, mode, seats, since) VALUES (?, ?, ?, ?, ?)",
                [(d.uuid, holder, mode, seats, now) for d in chosen],
            )
            return chosen

    def can_allocate(self, request: GPURequest) -> bool:
        """Whether ``request`` would be granted now (nothing is kept)."""
        with self._tx() as conn:
            self._free_dead(conn)
            rows = conn.execute("SELECT uuid, holder, mode, seats FROM assignments").fetchall()
        try:
            self._choose(request, rows)
        except NoGpuFree:
            return False
        return True

    def _choose(self, request: GPURequest, rows: list[tuple]) -> tuple[list[GPU], str, int]:
        holders = Counter(uuid for uuid, *_ in rows)
        exclusive = {uuid for uuid, _, mode, _ in rows if mode == "exclusive"}
        seats = {uuid: s for uuid, _, mode, s in rows if mode == "shared"}
        whole = [d for d in self.devices if not d.is_mig]
        if request.count:
            free = [d for d in whole if not holders[d.uuid]]
            if len(free) < request.count:
                raise NoGpuFree(self._busy(request, whole, holders, exclusive))
            return free[: request.count], "exclusive", 1
        if request.mig:
            slices = [d for d in self.devices if d.mig_profile == request.mig]
            free = [d for d in slices if not holders[d.uuid]]
            if not free:
                raise NoGpuFree(self._busy(request, slices, holders, exclusive))
            return free[:1], "exclusive", 1
        # Shared: the fullest GPU that still has a seat, so fresh GPUs stay whole for others.
        open_ = [d for d in whole if d.uuid in seats and holders[d.uuid] < seats[d.uuid]]
        if open_:
            open_.sort(key=lambda d: (-holders[d.uuid], d.index))
            return open_[:1], "shared", seats[open_[0].uuid]
        fresh = [d for d in whole if not holders[d.uuid]]
        if not fresh:
            raise NoGpuFree(self._busy(request, whole, holders, exclusive))
        return fresh[:1], "shared", int(request.shared or 1)

    def _busy(self, request: GPURequest, pool: list[GPU], holders: Counter, exclusive: set[str]) -> str:
        if not pool:
            kind = f"no {request.mig} MIG slice" if request.mig else "no whole GPU"
            return f"This machine has {kind}, so {request.describe()} cannot be given."
        taken = sum(1 for d in pool if holders[d.uuid])
        whole = sum(1 for d in pool if d.uuid in exclusive)
        shared = taken - whole
        what = "MIG slices" if request.mig else "GPUs"
        detail = f"{taken} of {len(pool)} {what} are in use"
        if shared and not request.mig:
            detail += f" ({whole} by single servers, {shared} shared)"
        return f"No GPU is free for {request.describe()}: {detail}."

    # ---- bookkeeping ------------------------------------------------------------------------------------

    def attach(self, holder: str, pid: int) -> None:
        """Record the running server's process, so that its death frees the device."""
        try:
            started = psutil.Process(pid).create_time()
        except psutil.Error:
            started = None
        with self._tx() as conn:
            conn.execute("UPDATE assignments SET pid = ?, pid_started = ? WHERE holder = ?", (pid, started, holder))

    def release(self, holder: str) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM assignments WHERE holder = ?", (holder,))

    def assignments(self) -> dict[str, list[str]]:
        with self._tx() as conn:
            self._free_dead(conn)
            rows = conn.execute("SELECT holder, uuid FROM assignments ORDER BY holder, uuid").fetchall()
        out: dict[str, list[str]] = {}
        for holder, uuid in rows:
            out.setdefault(holder, []).append(uuid)
        return out

    def held_by(self, holder: str) -> list[GPU]:
        uuids = set(self.assignments().get(holder, []))
        return [d for d in self.devices if d.uuid in uuids]

    def _free_dead(self, conn: sqlite3.Connection) -> None:
        now = time.time()
        for holder, pid, started, since in conn.execute(
            "SELECT DISTINCT holder, pid, pid_started, since FROM assignments"
        ).fetchall():
            if now - since > STARTING_GRACE if pid is None else not _alive(pid, started):
                conn.execute("DELETE FROM assignments WHERE holder = ?", (holder,))


def _alive(pid: int, started: float | None) -> bool:
    try:
        proc = psutil.Process(pid)
        # The same PID may belong to a newer process after a reboot or a wrap-around.
        return proc.is_running() and (started is None or abs(proc.create_time() - started) < 1.0)
    except psutil.Error:
        return False
