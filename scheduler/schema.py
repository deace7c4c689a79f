"""Applying and checking Alembic migrations from code (`scheduler migrate`, tests)."""

from __future__ import annotations

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
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Nodes starting together: one migrates, the others wait, then find nothing to do.
            await conn.execute(select(func.pg_advisory_xact_lock(lock_key("migrate"))))
        await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), revision))


async def pending_model_changes(engine: AsyncEngine) -> list[Any]:
    """Differences between the models and the migrated database (empty when in step)."""

    def compare(sync: Connection) -> list[Any]:
        context = MigrationContext.configure(sync, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with engine.connect() as conn:
        return await conn.run_sync(compare)
