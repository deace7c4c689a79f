"""Engines and session makers.

SQLite gets WAL, foreign keys, a busy timeout and exactly one writer connection (a pooled
writer was measured at p99 ~0.9 s against ~60 ms for one); reads use a small separate pool.
Writers begin with ``BEGIN IMMEDIATE`` so that a second process waits on the busy timeout
instead of failing on a lock upgrade. The change counter behind cached answers is read
through a probe (sqlite_probe). PostgreSQL uses one ordinary pool for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session
from sqlalchemy.pool import AsyncAdaptedQueuePool

from scheduler import audit, pg_probe, sqlite_probe
from scheduler.answer_cache import bump_on_change
from scheduler.settings import PROJECT_ROOT, Settings


@dataclass(frozen=True, slots=True)
class Database:
    writer_engine: AsyncEngine
    reader_engine: AsyncEngine
    writer: async_sessionmaker[AsyncSession]
    reader: async_sessionmaker[AsyncSession]
    # SQLite: single-row reads on the loop's thread, without a session (answer_cache).
    probe: sqlite_probe.Probe | None = None
    # PostgreSQL: the same, through one connection of its own.
    pg_probe: pg_probe.PgProbe | None = None

    @property
    def is_sqlite(self) -> bool:
        return self.writer_engine.dialect.name == "sqlite"

    async def dispose(self) -> None:
        if self.probe is not None:
            self.probe.close()
        if self.pg_probe is not None:
            await self.pg_probe.close()
        await self.writer_engine.dispose()
        if self.reader_engine is not self.writer_engine:
            await self.reader_engine.dispose()


def resolve_url(database_url: str) -> URL:
    """Make a relative SQLite path relative to the project root, and create its folder."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        path = Path(url.database)
        if not path.is_absolute():
            path = PROJECT_ROOT / path
        path.parent.mkdir(parents=True, exist_ok=True)
        url = url.set(database=str(path))
    return url


def open_database(settings: Settings) -> Database:
    url = resolve_url(settings.database_url)
    probe = None
    counter_probe = None
    if url.get_backend_name() == "sqlite":
        writer = _sqlite_engine(url, settings, pool_size=1, writer=True)
        reader = _sqlite_engine(url, settings, pool_size=settings.database_pool_size, writer=False)
        database, uri = _sqlite_file(url)
        if database != ":memory:":  # a private memory database would be another database
            probe = sqlite_probe.Probe(
                database, uri=uri, busy_timeout_ms=settings.database_busy_timeout_ms
            )
    else:
        writer = reader = create_async_engine(
            url,
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_pool_size,
            pool_pre_ping=True,
        )
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        counter_probe = pg_probe.PgProbe(dsn)
    return Database(
        writer_engine=writer,
        reader_engine=reader,
        writer=async_sessionmaker(
            writer, expire_on_commit=False, sync_session_class=TrackedSession
        ),
        reader=async_sessionmaker(
            reader, expire_on_commit=False, sync_session_class=TrackedSession
        ),
        probe=probe,
        pg_probe=counter_probe,
    )


class TrackedSession(Session):
    """A session whose flushes keep the calendar change counter current and whose commits
    carry their audit entries (``audit``)."""


event.listen(TrackedSession, "before_flush", bump_on_change)
event.listen(TrackedSession, "after_flush", audit.collect)
event.listen(TrackedSession, "before_commit", audit.write)
event.listen(TrackedSession, "after_soft_rollback", audit.forget)


def _sqlite_file(url: URL) -> tuple[str, bool]:
    """What ``sqlite3.connect`` opens for ``url``: the file (or file URI), and whether a URI."""
    args, kwargs = SQLiteDialect_aiosqlite().create_connect_args(url)
    return str(args[0]), bool(kwargs.get("uri", False))


def _sqlite_engine(url: URL, settings: Settings, *, pool_size: int, writer: bool) -> AsyncEngine:
    engine = create_async_engine(
        url,
        poolclass=AsyncAdaptedQueuePool,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=60,
    )
    busy_ms = settings.database_busy_timeout_ms

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves (pysqlite's implicit transactions defer locking).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
        if not writer:
            cursor.execute("PRAGMA query_only=ON")
        cursor.close()

    begin = "BEGIN IMMEDIATE" if writer else "BEGIN"

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql(begin)

    return engine
