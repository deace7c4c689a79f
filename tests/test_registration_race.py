"""500 people register at once over real HTTP for 100 seats: never overbooked, a gapless
waiting list, and cancellations that promote exactly the first people waiting.

Runs against a real server process, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.live_server import cli, fresh_database, running, server_env

SEATS = 100
PEOPLE = 500


def person(i: int) -> dict[str, object]:
    return {
        "name": f"Participant {i}",
        "email": f"person{i}@example.org",
        "constituency": "civil_society",
        "country": "KEN",
        "language": "en",
        "time_zone": "Africa/Nairobi",
        "organisation": f"Org {i % 37}",
    }


async def open_event(base: str, token: str) -> int:
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=auth) as client:
        r = await client.post(
            "/api/processes",
            json={"slug": "race", "name": "Race", "time_zone": "America/New_York"},
        )
        assert r.status_code == 201, r.text
        start = datetime.now(UTC) + timedelta(days=30)
        r = await client.post(
            "/api/events",
            json={
                "process_id": r.json()["id"],
                "kind": "stakeholder_hearing",
                "title": "Informal multi-stakeholder hearing",
                "time_zone": "America/New_York",
                "start": start.isoformat(),
                "end": (start + timedelta(hours=8)).isoformat(),
                "status": "published",
                "capacity": SEATS,
                "confirmation_required": False,
            },
        )
        assert r.status_code == 201, r.text
        return int(r.json()["id"])


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_concurrent_registrations_are_exact(tmp_path: Path, backend: str) -> None:
    with fresh_database(backend, tmp_path) as url:
        env = server_env(tmp_path, url)
        cli(env, "migrate")
        token = cli(env, "organizer", "create", "--name", "Race").strip().splitlines()[-1]
        with running(env) as server:
            asyncio.run(scenario(server.base_url, token))


async def scenario(base: str, token: str) -> None:
    event_id = await open_event(base, token)
    auth = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=PEOPLE, max_keepalive_connections=PEOPLE)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        answers = await asyncio.gather(
            *(
                client.post(f"/api/events/{event_id}/registrations", json=person(i))
                for i in range(PEOPLE)
            )
        )
        assert all(r.status_code == 201 for r in answers), {r.status_code for r in answers}
        receipts = [r.json() for r in answers]
        statuses = [r["status"] for r in receipts]
        assert statuses.count("confirmed") == SEATS
        assert statuses.count("waiting") == PEOPLE - SEATS
        positions = sorted(r["waitlist_position"] for r in receipts if r["status"] == "waiting")
        assert positions == list(range(1, PEOPLE - SEATS + 1))

    # A new client: the burst's 500 connections may have idled past the server's keep-alive.
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        # The same person again is refused, not added.
        again = await client.post(f"/api/events/{event_id}/registrations", json=person(7))
        assert again.status_code == 409
        assert again.json()["extra"][0]["key"] == "email"

        waiting = (await client.get(f"/api/events/{event_id}/waiting-list", headers=auth)).json()
        assert [w["position"] for w in waiting] == list(range(1, PEOPLE - SEATS + 1))
        by_id = {r["id"]: r for r in receipts}
        assert all(by_id[w["id"]]["waitlist_position"] == w["position"] for w in waiting)
        first_ten = [w["id"] for w in waiting[:10]]

        confirmed = [r["id"] for r in receipts if r["status"] == "confirmed"][:10]
        cancels = await asyncio.gather(
            *(
                client.post(f"/api/events/{event_id}/registrations/{rid}/cancel", headers=auth)
                for rid in confirmed
            )
        )
        assert all(r.status_code == 200 for r in cancels), [r.text for r in cancels]
        assert sum(r.json()["promoted"] for r in cancels) == 10

        stats = (
            await client.get(f"/api/events/{event_id}/registrations/stats", headers=auth)
        ).json()
        assert stats["seats_taken"] == SEATS
        assert stats["by_status"] == {
            "cancelled": 10,
            "confirmed": SEATS,
            "waiting": PEOPLE - SEATS - 10,
        }
        page = (
            await client.get(
                f"/api/events/{event_id}/registrations",
                params={"status": "confirmed", "limit": 5000},
                headers=auth,
            )
        ).json()
        assert set(first_ten) <= {r["id"] for r in page["items"]}
        waiting = (await client.get(f"/api/events/{event_id}/waiting-list", headers=auth)).json()
        assert [w["position"] for w in waiting] == list(range(1, PEOPLE - SEATS - 10 + 1))
        assert not set(first_ten) & {w["id"] for w in waiting}
