"""Applying and checking Alembic migrations from code (`scheduler migrate`, tests)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import func, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from scheduler.job_locks import lock_key
from scheduler.models import Base

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    await _run(engine, lambda sync: command.upgrade(alembic_config(sync), revision))


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Back to ``revision``: an operator undoing an upgrade, and the migration tests."""
    await _run(engine, lambda sync: command.downgrade(alembic_config(sync), revision))


async def _run(engine: AsyncEngine, step: Callable[[Connection], None]) -> None:
    if engine.dialect.name == "sqlite":
        async with engine.connect() as conn:
            await conn.run_sync(_without_foreign_keys, step)
        return
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Nodes starting together: one migrates, the others wait, then find nothing to do.
            await conn.execute(select(func.pg_advisory_xact_lock(lock_key("migrate"))))
        await conn.run_sync(step)


def _without_foreign_keys(conn: Connection, step: Callable[[Connection], None]) -> None:
    """SQLite changes a table by rebuilding it (Alembic's batch mode), and dropping the old
    copy while foreign keys are enforced cascades: every row referring to it would be
    deleted or nulled. Enforcement is off for the migration (SQLite allows that only
    outside a transaction), the keys are checked before the commit, and it is on again."""
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    cursor = dbapi.cursor()
    cursor.execute("PRAGMA foreign_keys=OFF")
    try:
        with conn.begin():
            step(conn)
            broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(f"the migration left rows without their parent: {broken[:5]}")
    finally:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


async def pending_model_changes(engine: AsyncEngine) -> list[Any]:
    """Differences between the models and the migrated database (empty when in step)."""

    def compare(sync: Connection) -> list[Any]:
        context = MigrationContext.configure(sync, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with engine.connect() as conn:
        return await conn.run_sync(compare)
