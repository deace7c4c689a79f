"""Single-row SQLite reads without a session, for the change counter behind cached answers.

Every public ``GET /api/events`` checks the calendar's change counter before it answers from
the cache (answer_cache). Through a pooled aiosqlite session that check costs several
thread round trips (BEGIN, execute, fetch, close, rollback), each a thread wake-up and a GIL
hand-over, and under load those hand-overs, not SQLite, set the latency. A read of one
indexed row on a read-only WAL connection takes microseconds and never waits for a writer,
so it is done here on the event loop's thread. Everything else goes through SQLAlchemy and
aiosqlite as usual.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any


class Probe:
    """One read-only connection, opened on first use (the file may not exist before)."""

    def __init__(self, database: str, *, uri: bool, busy_timeout_ms: int) -> None:
        self._database = database
        self._uri = uri
        self._busy_timeout_ms = busy_timeout_ms
        self._raw: sqlite3.Connection | None = None

    def scalar(self, sql: str, parameters: Sequence[Any] = ()) -> Any:
        """The first column of the first row (None if there is none), as of now."""
        if self._raw is None:
            raw = sqlite3.connect(self._database, isolation_level=None, uri=self._uri)
            raw.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
            raw.execute("PRAGMA query_only=ON")
            self._raw = raw
        row = self._raw.execute(sql, parameters).fetchone()
        return None if row is None else row[0]

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None
