"""A reminder wave survives a SIGKILL: nobody is missed, and a duplicate is only a message
that was in flight at the kill, under the Message-ID of its first delivery.

Real ``scheduler serve`` processes on SQLite and on PostgreSQL, the real SMTP server of
tests/mail_server.py (slowed down, so the wave takes a few seconds), 5,000 people with a
reminder due now (planned in one transaction, tests/reminder_wave.py). The service is killed
at a random point in the middle of the wave and started again.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from email import policy
from email.parser import BytesHeaderParser
from pathlib import Path

import pytest
from sqlalchemy import func, select

from scheduler.database import open_database
from scheduler.mail import make_sender
from scheduler.models import Notification
from scheduler.outbox import IN_FLIGHT_BATCHES, OutboxWorker
from scheduler.settings import Settings
from tests.live_server import LiveServer, cli, fresh_database, server_env
from tests.mail_server import MailServer
from tests.reminder_wave import seed_wave

WAVE = 5000
BATCH = 100  # the default mail_batch_size
HEADERS = BytesHeaderParser(policy=policy.default)


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


async def ledger(url: str) -> dict[str, int]:
    """How many reminder rows are in each status."""
    db = open_database(Settings().replace(database_url=url))
    try:
        async with db.reader() as session:
            rows = await session.execute(
                select(Notification.status, func.count()).group_by(Notification.status)
            )
            return {status: count for status, count in rows}
    finally:
        await db.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_wave_killed_in_the_middle_misses_nobody(
    tmp_path: Path, backend: str, mail_server: MailServer
) -> None:
    mail_server.recorder.delay = 0.004  # at most ~1,000 messages/s over 4 connections
    seed = random.randrange(1_000_000)
    kill_after = random.Random(seed).randint(WAVE // 5, WAVE * 3 // 5)
    with fresh_database(backend, tmp_path) as url:
        env = server_env(
            tmp_path,
            url,
            SCHEDULER_MAIL_TRANSPORT="smtp",
            SCHEDULER_SMTP_HOST="127.0.0.1",
            SCHEDULER_SMTP_PORT=str(mail_server.port),
            SCHEDULER_SMTP_POOL_SIZE="4",
            SCHEDULER_MAIL_BATCH_SIZE=str(BATCH),
            SCHEDULER_MAIL_LEASE_SECONDS="2",  # the dead sender's rows come back soon
        )
        cli(env, "migrate")
        wave = asyncio.run(seed_wave(url, WAVE))

        first = LiveServer(env)
        first.start()
        try:
            wait_for(lambda: len(mail_server.messages) >= kill_after, 120, "the wave to start")
        finally:
            first.kill()
        delivered_before = len(mail_server.messages)
        assert delivered_before < WAVE, "the wave finished before the kill"

        second = LiveServer(env)
        second.start()
        try:
            everyone = set(wave.emails)
            wait_for(
                lambda: everyone <= {m.rcpt_tos[0] for m in mail_server.messages},
                180,
                "every recipient",
            )
            # Settled: nothing left planned or on its way (a late resend would show here).
            wait_for(lambda: set(asyncio.run(ledger(url))) == {"sent"}, 60, "the ledger to settle")
        finally:
            second.stop()
        statuses = asyncio.run(ledger(url))

    received = mail_server.messages
    first_delivery: dict[str, tuple[int, str]] = {}  # recipient -> (position, Message-ID)
    duplicates = 0
    for position, message in enumerate(received):
        (recipient,) = message.rcpt_tos
        message_id = str(HEADERS.parsebytes(message.data)["Message-ID"])
        if recipient not in first_delivery:
            first_delivery[recipient] = (position, message_id)
            continue
        duplicates += 1
        earlier, first_id = first_delivery[recipient]
        assert message_id == first_id, f"{recipient} got two different messages"
        assert earlier < delivered_before, f"{recipient}'s first copy came after the kill"
    assert set(first_delivery) == set(wave.emails)  # nobody missed
    assert len({mid for _, mid in first_delivery.values()}) == WAVE  # one message each
    assert statuses == {"sent": WAVE}
    # Only rows the killed sender held under lease can go out twice.
    assert duplicates <= IN_FLIGHT_BATCHES * BATCH
    print(
        f"\n[{backend}] killed after {delivered_before}/{WAVE} (seed {seed}); "
        f"{len(received)} messages, duplicates: {duplicates}"
    )


async def test_a_wave_goes_out_in_bounded_batches_each_shape_rendered_once(
    settings: Settings, mail_server: MailServer
) -> None:
    """In process: rows are claimed a batch at a time (never the whole wave), each message's
    text is composed once per language and zone, and every row's Message-ID is the one sent."""
    count, batch = 1200, 50
    wave = await seed_wave(settings.database_url, count)
    s = settings.replace(
        mail_transport="smtp",
        smtp_host="127.0.0.1",
        smtp_port=mail_server.port,
        smtp_pool_size=4,
        mail_batch_size=batch,
        mail_sweep_seconds=3600,
    )
    db = open_database(s)
    worker = OutboxWorker(db, make_sender(s), s, b"wave-secret", "https://forum.example.org")
    most_in_flight = 0
    try:
        worker.start()
        while len(mail_server.messages) < count:
            async with db.reader() as session:
                sending = await session.scalar(
                    select(func.count()).where(Notification.status == "sending")
                )
            most_in_flight = max(most_in_flight, sending or 0)
            await asyncio.sleep(0.01)
        await worker.stop()
        async with db.reader() as session:
            rows = await session.scalars(select(Notification).where(Notification.status == "sent"))
            ids = {row.recipient_email: row.message_id for row in rows}
    finally:
        await worker.stop()
        await db.dispose()
    assert 0 < most_in_flight <= (IN_FLIGHT_BATCHES + 1) * batch
    assert worker.factory.shapes_built <= 16  # 4 languages x 4 zones (tests/reminder_wave.py)
    sent = {
        m.rcpt_tos[0]: str(HEADERS.parsebytes(m.data)["Message-ID"]) for m in mail_server.messages
    }
    assert len(mail_server.messages) == count
    assert sent == ids and set(ids) == set(wave.emails)
