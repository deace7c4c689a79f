"""`scheduler copy-database --to URL`: from SQLite to PostgreSQL, every row, and a working app.

The demo cycle and real registrations (over HTTP, with mail queued) go into a SQLite file;
the command copies them into a new PostgreSQL database; every table then holds the same
rows, and a server on PostgreSQL carries on where the SQLite one stopped.
"""

from __future__ import annotations

import asyncio
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from scheduler.database import open_database
from scheduler.models import Base
from scheduler.settings import Settings
from tests.live_server import SCHEDULER, cli, fresh_database, running, server_env

PEOPLE = 12
SEATS = 8


async def all_rows(url: str) -> dict[str, list[dict[str, Any]]]:
    db = open_database(Settings().replace(database_url=url))
    try:
        async with db.reader() as session:
            out = {}
            for table in Base.metadata.sorted_tables:
                result = await session.execute(select(table).order_by(*table.primary_key.columns))
                out[table.name] = [dict(row._mapping) for row in result]
            return out
    finally:
        await db.dispose()


def fill(base: str, token: str) -> int:
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=auth, timeout=30) as client:
        process = client.get("/api/processes").json()
        process_id = process[0]["id"] if isinstance(process, list) else process["items"][0]["id"]
        start = datetime.now(UTC) + timedelta(days=40)
        r = client.post(
            "/api/events",
            json={
                "process_id": process_id,
                "kind": "stakeholder_hearing",
                "title": "Hearing to move",
                "time_zone": "America/New_York",
                "start": start.isoformat(),
                "end": (start + timedelta(hours=6)).isoformat(),
                "status": "published",
                "capacity": SEATS,
                "confirmation_required": True,
            },
        )
        assert r.status_code == 201, r.text
        event_id = int(r.json()["id"])
        for i in range(PEOPLE):
            r = client.post(f"/api/events/{event_id}/registrations", json=person(i))
            assert r.status_code == 201, r.text
        first = client.get(f"/api/events/{event_id}/registrations").json()["items"][0]["id"]
        r = client.post(f"/api/events/{event_id}/registrations/{first}/cancel")
        assert r.status_code == 200, r.text
    return event_id


def person(i: int) -> dict[str, str]:
    return {
        "name": f"Person {i}",
        "email": f"copy{i}@example.org",
        "constituency": "academia",
        "country": "MEX",
        "language": ("en", "es", "fr", "ar")[i % 4],
        "time_zone": "America/Mexico_City",
    }


def test_sqlite_to_postgres(tmp_path: Path) -> None:
    sqlite_dir, pg_dir = tmp_path / "sqlite", tmp_path / "pg"
    sqlite_dir.mkdir()
    pg_dir.mkdir()
    with fresh_database("sqlite", sqlite_dir) as sqlite_url:
        env = server_env(sqlite_dir, sqlite_url, SCHEDULER_MAIL_ENABLED="false")
        cli(env, "migrate")
        cli(env, "demo")
        token = cli(env, "organizer", "create", "--name", "Copy", "--process", "gcm")
        token = token.strip().splitlines()[-1]
        with running(env) as server:
            event_id = fill(server.base_url, token)
        before = asyncio.run(all_rows(sqlite_url))
        assert any(e["parent_id"] for e in before["events"]), "the demo has nested events"
        assert len(before["registrations"]) == PEOPLE
        assert before["notifications"], "registrations queued their mail"

        with fresh_database("postgres", pg_dir) as pg_url:
            out = cli(env, "copy-database", "--to", pg_url)
            assert f"registrations: {PEOPLE} rows" in out
            after = asyncio.run(all_rows(pg_url))
            assert after == before

            again = subprocess.run(
                [*SCHEDULER, "copy-database", "--to", pg_url],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert again.returncode == 2
            assert "not empty" in again.stderr

            pg_env = server_env(pg_dir, pg_url, SCHEDULER_MAIL_ENABLED="false")
            with running(pg_env) as server:
                carry_on(server.base_url, token, event_id, before)


def carry_on(base: str, token: str, event_id: int, before: dict[str, list[Any]]) -> None:
    """The copied organizer token works, counts match, and new rows get fresh ids."""
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=auth, timeout=30) as client:
        stats = client.get(f"/api/events/{event_id}/registrations/stats").json()
        assert stats["by_status"] == {"cancelled": 1, "held": SEATS, "waiting": PEOPLE - SEATS - 1}
        waiting = client.get(f"/api/events/{event_id}/waiting-list").json()
        assert [w["position"] for w in waiting] == list(range(1, PEOPLE - SEATS))
        r = client.post(f"/api/events/{event_id}/registrations", json=person(PEOPLE))
        assert r.status_code == 201, r.text
        assert r.json()["id"] == max(row["id"] for row in before["registrations"]) + 1
        r = client.post(
            "/api/events",
            json={
                "process_id": before["processes"][0]["id"],
                "kind": "consultation",
                "title": "After the move",
                "time_zone": "UTC",
                "start": "2031-03-01T10:00:00+00:00",
                "end": "2031-03-01T12:00:00+00:00",
            },
        )
        assert r.status_code == 201, r.text
        assert r.json()["id"] == max(row["id"] for row in before["events"]) + 1
