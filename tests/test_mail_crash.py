"""Mail is never lost: the service is SIGKILLed between commit and delivery, and mid-wave.

Real server processes, a real SMTP server, SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.live_server import LiveServer, cli, fresh_database, server_env
from tests.mail_server import MailServer


async def open_hearing(base: str, token: str) -> int:
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=auth, timeout=30) as client:
        r = await client.post(
            "/api/processes", json={"slug": "crash", "name": "Crash", "time_zone": "UTC"}
        )
        start = datetime.now(UTC) + timedelta(days=10)
        r = await client.post(
            "/api/events",
            json={
                "process_id": r.json()["id"],
                "kind": "dialogue_meeting",
                "title": "Dialogue",
                "time_zone": "Europe/Zurich",
                "start": start.isoformat(),
                "end": (start + timedelta(hours=6)).isoformat(),
                "status": "published",
                "capacity": 1000,
                "confirmation_required": False,
            },
        )
        assert r.status_code == 201, r.text
        return int(r.json()["id"])


async def register_all(base: str, event_id: int, count: int) -> list[str]:
    emails = [f"crash{i}@example.org" for i in range(count)]
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        answers = await asyncio.gather(
            *(
                client.post(
                    f"/api/events/{event_id}/registrations",
                    json={
                        "name": f"Person {i}",
                        "email": email,
                        "constituency": "trade_union",
                        "country": "CHE",
                        "language": "en",
                        "time_zone": "Europe/Zurich",
                    },
                )
                for i, email in enumerate(emails)
            )
        )
    assert all(r.status_code == 201 for r in answers), [r.text for r in answers][:3]
    return emails


def wait_for(condition: object, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def smtp_env(tmp_path: Path, url: str, server: MailServer, **extra: str) -> dict[str, str]:
    return server_env(
        tmp_path,
        url,
        SCHEDULER_MAIL_TRANSPORT="smtp",
        SCHEDULER_SMTP_HOST="127.0.0.1",
        SCHEDULER_SMTP_PORT=str(server.port),
        SCHEDULER_MAIL_LEASE_SECONDS="2",
        **extra,
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_kill_after_commit_before_sending_loses_nothing(
    tmp_path: Path, backend: str, mail_server: MailServer
) -> None:
    with fresh_database(backend, tmp_path) as url:
        env = smtp_env(tmp_path, url, mail_server)
        cli(env, "migrate")
        token = cli(env, "organizer", "create", "--name", "Crash").strip().splitlines()[-1]
        # The sender is held back, so the kill lands after the commits and before delivery.
        first = LiveServer({**env, "SCHEDULER_MAIL_ENABLED": "false"})
        first.start()
        try:
            event_id = asyncio.run(open_hearing(first.base_url, token))
            emails = asyncio.run(register_all(first.base_url, event_id, 60))
        finally:
            first.kill()
        assert mail_server.messages == []

        second = LiveServer(env)
        second.start()
        try:
            wait_for(lambda: len(mail_server.messages) >= len(emails), 60)
            time.sleep(1.0)  # anything more would be a duplicate
        finally:
            second.stop()
        received = Counter(m.rcpt_tos[0] for m in mail_server.messages)
        assert received == Counter(emails)
        ids = [m.parsed()["Message-ID"] for m in mail_server.messages]
        assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_kill_mid_wave_misses_nobody(tmp_path: Path, backend: str, mail_server: MailServer) -> None:
    mail_server.recorder.delay = 0.02
    with fresh_database(backend, tmp_path) as url:
        env = smtp_env(tmp_path, url, mail_server)
        cli(env, "migrate")
        token = cli(env, "organizer", "create", "--name", "Crash").strip().splitlines()[-1]
        first = LiveServer(env)
        first.start()
        try:
            event_id = asyncio.run(open_hearing(first.base_url, token))
            emails = asyncio.run(register_all(first.base_url, event_id, 200))
            wait_for(lambda: len(mail_server.messages) >= 20, 60)
        finally:
            first.kill()
        delivered_before = len(mail_server.messages)
        assert delivered_before < len(emails), "the wave finished before the kill"

        mail_server.recorder.delay = 0.0
        second = LiveServer(env)
        second.start()
        try:
            wait_for(lambda: set(emails) <= {m.rcpt_tos[0] for m in mail_server.messages}, 90)
            time.sleep(1.0)
        finally:
            second.stop()
        by_recipient: dict[str, set[str]] = {}
        for m in mail_server.messages:
            by_recipient.setdefault(m.rcpt_tos[0], set()).add(str(m.parsed()["Message-ID"]))
        assert set(by_recipient) == set(emails)  # nobody missed
        # A duplicate can only be a message that was in flight at the kill: same Message-ID.
        assert all(len(ids) == 1 for ids in by_recipient.values())
        duplicates = len(mail_server.messages) - len(emails)
        print(
            f"\n[{backend}] killed after {delivered_before}/{len(emails)}; duplicates: {duplicates}"
        )
