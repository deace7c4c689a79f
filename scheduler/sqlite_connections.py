"""SQLite connections for SQLAlchemy's async engine, without aiosqlite's thread round trips.

aiosqlite runs every call on the connection's own thread and hands the result back to the
event loop: creating a cursor, executing, fetching and closing are four round trips per
statement, each a thread wake-up, a GIL hand-over and a turn of the loop. A ``GET /health``
(BEGIN, SELECT 1, ROLLBACK) made nine of them. Under load the hand-overs, not SQLite, set
the latency: each result waits for the loop to come round to it, behind every other ready
request, while the statement itself takes microseconds.

Readers therefore run on the event loop's own thread: in WAL mode a reader never waits for a
writer's lock, so a read cannot stall the loop on ``busy_timeout``. The writer keeps a thread
of its own, as BEGIN IMMEDIATE may wait for another process's write lock (the CLI syncing a
feed, a second node) and a commit may run a checkpoint; SQLite's own work then also runs on
the other core. (A writer on the loop's thread was measured: less CPU per registration, but
a worse p99, the loop waiting out every commit.) It makes one round trip per statement: BEGIN
goes with the first statement, a statement fetches its first rows with it, and closing a
cursor or rolling back nothing costs none.

SQLAlchemy's aiosqlite dialect drives these objects (``async_creator``), so the dialect,
its SQL and its error classes (``sqlite3``'s, which aiosqlite re-exports) stay the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

# Rows a writer's statement brings back with its own round trip; a stream (``yield_per``)
# fetches the rest in chunks, so memory stays bounded whatever the result's size.
PREFETCH_ROWS = 1000


class Cursor:
    """The subset of aiosqlite's cursor that SQLAlchemy's adapter calls."""

    def __init__(self, owner: Connection, cursor: sqlite3.Cursor) -> None:
        self._owner = owner
        self._cursor = cursor
        self._rows: deque[Any] = deque()
        self._more = False  # rows may remain in the sqlite3 cursor
        self.arraysize = 1

    async def __aenter__(self) -> Cursor:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    async def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> Cursor:
        self._rows.clear()
        first, self._more = await self._owner.run(
            _execute,
            self._cursor,
            self._owner.take_begin(),
            sql,
            () if parameters is None else parameters,
        )
        self._rows.extend(first)
        return self

    async def executemany(self, sql: str, seq_of_parameters: Any) -> Cursor:
        self._rows.clear()
        self._more = False
        await self._owner.run(
            _executemany, self._cursor, self._owner.take_begin(), sql, seq_of_parameters
        )
        return self

    async def fetchone(self) -> Any:
        if not self._rows and self._more:
            await self._refill(PREFETCH_ROWS)
        return self._rows.popleft() if self._rows else None

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        size = self.arraysize if size is None else size
        if len(self._rows) < size and self._more:
            await self._refill(max(size, PREFETCH_ROWS))
        return [self._rows.popleft() for _ in range(min(size, len(self._rows)))]

    async def fetchall(self) -> list[Any]:
        rows = list(self._rows)
        self._rows.clear()
        if self._more:
            rows += await self._owner.run(self._cursor.fetchall)
            self._more = False
        return rows

    async def _refill(self, size: int) -> None:
        chunk: list[Any] = await self._owner.run(self._cursor.fetchmany, size)
        self._more = len(chunk) == size
        self._rows.extend(chunk)

    def __aiter__(self) -> Cursor:
        return self

    async def __anext__(self) -> Any:
        row = await self.fetchone()
        if row is None:
            raise StopAsyncIteration
        return row

    async def close(self) -> None:
        self._rows.clear()
        self._more = False
        # Frees the statement; on the writer's thread, queued after anything still running
        # there (a cancelled caller's statement), but not waited for.
        self._owner.run_soon(self._cursor.close)


def _execute(
    cursor: sqlite3.Cursor, begin: str | None, sql: str, parameters: Any
) -> tuple[list[Any], bool]:
    if begin is not None:
        cursor.execute(begin)
    cursor.execute(sql, parameters)
    if cursor.description is None:
        return [], False
    rows = cursor.fetchmany(PREFETCH_ROWS)
    return rows, len(rows) == PREFETCH_ROWS


def _executemany(cursor: sqlite3.Cursor, begin: str | None, sql: str, parameters: Any) -> None:
    if begin is not None:
        cursor.execute(begin)
    cursor.executemany(sql, parameters)


class Connection:
    """The subset of aiosqlite's connection that SQLAlchemy's adapter calls.

    With ``threaded`` every call that may touch the database file runs on the connection's
    own thread, one at a time; otherwise it runs at once on the caller's (the loop's) thread.
    """

    def __init__(self, raw: sqlite3.Connection, *, threaded: bool) -> None:
        self._connection: sqlite3.Connection | None = raw  # SQLAlchemy reads this name
        self._raw = raw
        self._begin: str | None = None
        self._thread = CallThread() if threaded else None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._thread is None:
            return fn(*args)
        return await self._thread.run(fn, *args)

    def run_soon(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` in turn, without waiting for it (nothing comes back)."""
        if self._thread is None:
            fn()
        else:
            self._thread.call(fn)

    def begin_before_next_statement(self, sql: str) -> None:
        """Open the transaction with ``sql`` together with its first statement.

        The engine's ``begin`` event calls this instead of executing BEGIN on its own, which
        cost a full SQLAlchemy execution and, for the writer, a round trip. SQLite takes no
        snapshot or lock before the first statement anyway, so nothing changes but the cost.
        """
        self._begin = sql

    def take_begin(self) -> str | None:
        begin, self._begin = self._begin, None
        return begin

    def cursor(self) -> Cursor:
        return Cursor(self, self._raw.cursor())

    @property
    def isolation_level(self) -> str | None:
        return self._raw.isolation_level

    @property
    def in_transaction(self) -> bool:
        return self._raw.in_transaction

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._raw.create_function(*args, **kwargs)

    async def commit(self) -> None:
        self._begin = None
        if self._raw.in_transaction:
            await self.run(self._raw.commit)

    async def rollback(self) -> None:
        # The pool rolls back every connection it gets back; after a commit there is nothing
        # to roll back, and asking the thread would cost a round trip.
        self._begin = None
        if self._raw.in_transaction:
            await self.run(self._raw.rollback)

    async def close(self) -> None:
        if self._connection is None:
            return
        self._connection = None
        try:
            await self.run(self._raw.close)
        finally:
            if self._thread is not None:
                self._thread.stop()

    def stop(self) -> None:
        """Close at once, without the loop (SQLAlchemy's forced terminate)."""
        self._connection = None
        if self._thread is not None:
            self._thread.call_and_stop(self._raw.close)
        else:
            self._raw.close()


class CallThread:
    """A thread of its own that runs calls one at a time, in order, for the event loop.

    Leaner than ``run_in_executor``: one queue put and one ``call_soon_threadsafe`` per
    call, where a thread pool adds a concurrent future chained to an asyncio one; the
    hand-over, not SQLite, was most of what the writer's calls cost the loop.
    """

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="sqlite-writer", daemon=True)
        self._thread.start()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put(_Call(fn, args, loop, future))
        return await future

    def call(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` after the calls already queued; nothing comes back."""
        self._calls.put(_Call(fn, (), None, None))

    def call_and_stop(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` after the calls already queued, then end the thread."""
        self.call(fn)
        self.stop()

    def stop(self) -> None:
        self._calls.put(None)

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            try:
                result = call.fn(*call.args)
            except BaseException as exc:  # handed to the caller, whatever it is
                _answer(call, _fail, exc)
            else:
                _answer(call, _succeed, result)


@dataclass(frozen=True, slots=True)
class _Call:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    loop: asyncio.AbstractEventLoop | None
    future: asyncio.Future[Any] | None


def _answer(call: _Call, settle: Callable[[asyncio.Future[Any], Any], None], value: object) -> None:
    if call.loop is None or call.future is None:
        return
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        call.loop.call_soon_threadsafe(settle, call.future, value)


def _succeed(future: asyncio.Future[Any], result: object) -> None:
    if not future.cancelled():  # the caller gave up (cancelled): the result goes nowhere
        future.set_result(result)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.cancelled():
        future.set_exception(exc)


def open_file(database: str, *, uri: bool) -> sqlite3.Connection:
    """A connection in autocommit mode, usable from any thread (one at a time).

    Autocommit (``isolation_level=None``): the engine issues BEGIN itself, so that the
    writer's is BEGIN IMMEDIATE (database.py); pooled connections move between threads.
    """
    return sqlite3.connect(database, isolation_level=None, check_same_thread=False, uri=uri)


def connector(database: str, *, uri: bool, threaded: bool) -> Callable[[], Any]:
    """An ``async_creator`` for ``create_async_engine``."""

    async def connect() -> Connection:
        return Connection(open_file(database, uri=uri), threaded=threaded)

    return connect


class Probe:
    """One read-only connection for reads of a single row, made without SQLAlchemy.

    A pooled session costs some 150 microseconds of SQLAlchemy per read; the change counter
    behind every cached answer (calendar_cache) is read on each request, in a few. It is
    opened on first use, as the database file may not exist yet when the engines are made.
    """

    def __init__(self, database: str, *, uri: bool, busy_timeout_ms: int) -> None:
        self._database = database
        self._uri = uri
        self._busy_timeout_ms = busy_timeout_ms
        self._raw: sqlite3.Connection | None = None

    def scalar(self, sql: str, parameters: Sequence[Any] = ()) -> Any:
        """The first column of the first row (None if there is none), as of now."""
        if self._raw is None:
            raw = open_file(self._database, uri=self._uri)
            raw.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
            raw.execute("PRAGMA query_only=ON")
            self._raw = raw
        row = self._raw.execute(sql, parameters).fetchone()
        return None if row is None else row[0]

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None
