"""Single-row PostgreSQL reads without a pooled session, for the change counter behind
cached answers.

Through the pool, reading the counter costs a checkout with its pre-ping, BEGIN, the SELECT
and the ROLLBACK at check-in: four round trips and SQLAlchemy's work around them, on every
public ``GET /api/events``. One connection of its own reads it in one round trip. Requests
take turns on it (a connection runs one query at a time), which at some hundred
microseconds a read is far from a bottleneck.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

# The connection is gone (dropped, the server shutting it down, closed under us): the read
# is tried once more on a new one.
_LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,  # a read caught mid-way by the drop
    ConnectionError,
    OSError,
)


class PgProbe:
    """One connection, opened on first use and again after it is lost."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: asyncpg.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None

    async def scalar(self, sql: str, *args: Any) -> Any:
        """The first column of the first row (None if there is none), as of now."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a connection belongs to the loop that opened it
            self._abandon()
            self._loop, self._lock = loop, asyncio.Lock()
        assert self._lock is not None
        async with self._lock:
            for attempt in (1, 2):
                if self._conn is None or self._conn.is_closed():
                    self._conn = await asyncpg.connect(self._dsn)
                try:
                    return await self._conn.fetchval(sql, *args)
                except _LOST:
                    self._abandon()
                    if attempt == 2:
                        raise
        return None  # unreachable: the second attempt returns or raises

    def _abandon(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            if self._loop is asyncio.get_running_loop():
                await conn.close()
            else:
                conn.terminate()
