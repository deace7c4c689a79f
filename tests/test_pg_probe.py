"""The PostgreSQL probe (scheduler/pg_probe.py) on the machine's PostgreSQL: it reads the
change counter as last committed, by anyone, and survives losing its connection."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from scheduler.answer_cache import CALENDAR, latest_version
from scheduler.database import open_database
from tests.conftest import PG_DSN, base_settings


async def test_the_counter_is_read_as_committed_and_after_a_lost_connection(
    pg_database: str, tmp_path: Path
) -> None:
    db = open_database(base_settings(pg_database, tmp_path))
    database = pg_database.rsplit("/", 1)[1]
    other = await asyncpg.connect(f"{PG_DSN.rsplit('/', 1)[0]}/{database}")
    try:
        assert db.pg_probe is not None
        before = await latest_version(db, CALENDAR)
        await other.execute(
            "INSERT INTO change_counters (name, version) VALUES ($1, $2)"
            " ON CONFLICT (name) DO UPDATE SET version = $2",
            CALENDAR,
            before + 7,
        )
        assert await latest_version(db, CALENDAR) == before + 7  # another connection's commit
        # The server drops the probe's connection: the next read opens a new one.
        await other.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
        assert await latest_version(db, CALENDAR) == before + 7  # at once, or on a new one
        await asyncio.sleep(0.05)
        assert await latest_version(db, CALENDAR) == before + 7
        # Requests take turns on the one connection.
        versions = await asyncio.gather(*(latest_version(db, CALENDAR) for _ in range(50)))
        assert versions == [before + 7] * 50
    finally:
        await other.close()
        await db.dispose()
