"""The migrations build exactly the tables the models describe, on both back ends."""

from __future__ import annotations

from scheduler.database import open_database
from scheduler.schema import pending_model_changes
from scheduler.settings import Settings


async def test_migrations_match_models(settings: Settings) -> None:
    db = open_database(settings)
    try:
        assert await pending_model_changes(db.writer_engine) == []
    finally:
        await db.dispose()
