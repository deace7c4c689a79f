"""Shared fixtures: a real SQLite file and the machine's real PostgreSQL, both migrated.

Every API test runs on both back ends. SQLite gets a fresh copy of a migrated file per
test; PostgreSQL gets one fresh database per run, emptied before each test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import hypothesis
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from scheduler.app import create_app
from scheduler.database import open_database
from scheduler.models import Base
from scheduler.organizers import create_organizer
from scheduler.permissions import Role
from scheduler.schema import migrate
from scheduler.settings import Settings

# Property tests draw the same examples on every run, so CI cannot turn red by chance;
# explore new examples locally with `pytest --hypothesis-seed=<n>`.
hypothesis.settings.register_profile("repeatable", derandomize=True)
hypothesis.settings.load_profile("repeatable")

# The real SMTP server fixture (`mail_server`) for every test module.
pytest_plugins = ["tests.mail_server"]

PG_DSN = os.environ.get("SCHEDULER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def base_settings(database_url: str, data_dir: Path) -> Settings:
    """Settings for one test: its own database, data folder and mail folder."""
    return Settings().replace(
        database_url=database_url, data_dir=data_dir, mail_maildir=data_dir / "mail"
    )


async def _migrate_url(url: str, data_dir: Path) -> None:
    db = open_database(base_settings(url, data_dir))
    try:
        await migrate(db.writer_engine)
    finally:
        await db.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sqlite-template")
    path = folder / "template.db"
    asyncio.run(_migrate_url(f"sqlite+aiosqlite:///{path}", folder))
    return path


@pytest.fixture(scope="session")
def pg_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh PostgreSQL database for this run, dropped at the end."""
    name = f"fs_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    base = PG_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    url = f"{base}/{name}"
    asyncio.run(_migrate_url(url, tmp_path_factory.mktemp("pg")))
    yield url
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _empty_pg(url: str, data_dir: Path) -> None:
    db = open_database(base_settings(url, data_dir))
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    try:
        async with db.writer.begin() as session:
            # The audit trail refuses TRUNCATE (a trigger); a superuser may skip triggers.
            await session.execute(text("SET LOCAL session_replication_role = replica"))
            await session.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    finally:
        await db.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "scheduler.db"
        shutil.copy(template, path)
        return f"sqlite+aiosqlite:///{path}"
    url: str = request.getfixturevalue("pg_database")
    asyncio.run(_empty_pg(url, tmp_path))
    return url


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return base_settings(database_url, tmp_path)


@dataclass
class Api:
    """A client on the running app, plus an organizer token for writes."""

    client: AsyncTestClient  # type: ignore[type-arg]
    token: str
    settings: Settings

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def new_token(
        self, name: str = "Other secretariat", slugs: list[str] | None = None
    ) -> str:
        _, token = await self.new_organizer(name, slugs)
        return token

    async def new_organizer(
        self,
        name: str,
        slugs: list[str] | None = None,
        role: Role = "organizer",
        email: str = "",
    ) -> tuple[int, str]:
        """A new organizer with ``role`` in each process named: their id and first token."""
        db = open_database(self.settings)
        try:
            async with db.writer.begin() as session:
                organizer, token = await create_organizer(
                    session, name, slugs or [], role=role, email=email
                )
        finally:
            await db.dispose()
        return organizer.id, token


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    app = create_app(settings)
    async with AsyncTestClient(app=app, base_url="http://127.0.0.1:8000") as client:
        api = Api(client=client, token="", settings=settings)
        api.token = await api.new_token("Secretariat")
        yield api
