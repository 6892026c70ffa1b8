"""SQLite as the compute ledgers use it: one connection per call, every change in a BEGIN IMMEDIATE transaction.

IMMEDIATE takes the write lock at the start, so two hub threads or processes deciding at once are serialized by
SQLite itself (no read-then-write race), and waits up to a minute for the lock instead of failing.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path


def create(db: Path, schema: str) -> None:
    db.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db, timeout=60)
    try:
        conn.executescript(schema)  # idempotent (IF NOT EXISTS); commits on its own
    finally:
        conn.close()


@contextlib.contextmanager
def transaction(db: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(db, timeout=60, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        conn.close()
