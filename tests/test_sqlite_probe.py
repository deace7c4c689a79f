"""The SQLite probe (scheduler/sqlite_probe.py), on a real file: it sees every commit at once,
whoever made it, and cannot write."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text

from scheduler.database import Database, open_database
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
