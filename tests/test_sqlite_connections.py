"""SQLite connections without aiosqlite (scheduler/sqlite_connections.py), on a real file.

The writer must still wait for another process's write lock off the event loop, take that
lock with its first statement, and stream results of any size; the probe must see every
commit at once, whoever made it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from scheduler.database import Database, open_database
from scheduler.sqlite_connections import PREFETCH_ROWS
from tests.conftest import base_settings


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = open_database(
        base_settings(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", tmp_path)
    )
    async with database.writer.begin() as session:
        await session.execute(text("CREATE TABLE scratch (n INTEGER UNIQUE)"))
    yield database
    await database.dispose()


def other_process(tmp_path: Path) -> sqlite3.Connection:
    """A connection of its own, as another process (the CLI, a second node) would have."""
    return sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None, timeout=0)


async def count(db: Database) -> int:
    async with db.reader() as session:
        return int(await session.scalar(text("SELECT count(*) FROM scratch")) or 0)


async def test_the_writer_waits_for_another_process_without_stopping_the_loop(
    db: Database, tmp_path: Path
) -> None:
    other = other_process(tmp_path)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock

    async def write() -> None:
        async with db.writer.begin() as session:
            await session.execute(text("INSERT INTO scratch VALUES (1)"))

    writing = asyncio.create_task(write())
    for _ in range(5):
        await asyncio.sleep(0.01)  # the loop keeps turning while the writer waits
    assert await count(db) == 0  # and reads go on
    assert not writing.done()
    other.execute("ROLLBACK")
    await asyncio.wait_for(writing, timeout=30)
    assert await count(db) == 1
    other.close()


async def test_the_writer_locks_with_its_first_statement_and_not_before(
    db: Database, tmp_path: Path
) -> None:
    other = other_process(tmp_path)
    async with db.writer.begin() as session:
        other.execute("BEGIN IMMEDIATE")  # nothing run yet: no lock taken
        other.execute("ROLLBACK")
        await session.execute(text("SELECT count(*) FROM scratch"))  # a read, yet it locks
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
    other.execute("BEGIN IMMEDIATE")  # committed: free again
    other.execute("ROLLBACK")
    other.close()


async def test_a_failed_write_leaves_nothing_and_the_writer_usable(db: Database) -> None:
    with pytest.raises(IntegrityError):
        async with db.writer.begin() as session:
            await session.execute(text("INSERT INTO scratch VALUES (1)"))
            await session.execute(text("INSERT INTO scratch VALUES (1)"))
    assert await count(db) == 0
    async with db.writer.begin() as session:
        await session.execute(text("INSERT INTO scratch VALUES (2)"))
    assert await count(db) == 1


async def test_results_larger_than_the_prefetch_stream_whole_and_in_order(db: Database) -> None:
    total = PREFETCH_ROWS * 2 + 345
    async with db.writer.begin() as session:
        await session.execute(
            text("INSERT INTO scratch VALUES (:n)"), [{"n": n} for n in range(total)]
        )
    query = text("SELECT n FROM scratch ORDER BY n")
    for sessions in (db.reader, db.writer):
        async with sessions() as session:
            stream = await session.stream(query.execution_options(yield_per=300))
            streamed = [row[0] async for row in stream]
            buffered = list((await session.execute(query)).scalars())
        assert streamed == list(range(total))
        assert buffered == list(range(total))


async def test_the_probe_sees_every_commit_at_once(db: Database, tmp_path: Path) -> None:
    assert db.probe is not None
    sql = "SELECT max(n) FROM scratch WHERE n >= ?"
    assert db.probe.scalar(sql, (0,)) is None
    async with db.writer.begin() as session:
        await session.execute(text("INSERT INTO scratch VALUES (5)"))
    assert db.probe.scalar(sql, (0,)) == 5
    other = other_process(tmp_path)
    other.execute("INSERT INTO scratch VALUES (9)")  # another process commits
    assert db.probe.scalar(sql, (0,)) == 9
    other.close()
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        db.probe.scalar("INSERT INTO scratch VALUES (10)")
