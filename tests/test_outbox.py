"""The outbox end to end, on SQLite and PostgreSQL, through a real SMTP server or Maildir.

Rows are enqueued in a real transaction, the worker claims and delivers them, and what
arrives is parsed with the stdlib ``email`` package. Time is passed in, so retries and
leases are exercised without waiting.
"""

from __future__ import annotations

import asyncio
import mailbox
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.di import Provide
from litestar.testing import AsyncTestClient
from sqlalchemy import func, select

from scheduler import manage_links, outbox
from scheduler.api_notifications import NotificationController
from scheduler.auth import provide_caller
from scheduler.clock import Clock
from scheduler.database import Database, open_database
from scheduler.errors import EXCEPTION_HANDLERS
from scheduler.mail import MaildirSender, SmtpSender, make_sender
from scheduler.mail_render import render
from scheduler.models import Event, Notification, Process, Registration
from scheduler.organizers import create_organizer
from scheduler.settings import Settings
from tests.mail_server import MailServer, accept_login, free_port, mail_server, start_server

__all__ = ["mail_server"]  # the fixture, imported for pytest

NOW = datetime(2030, 3, 1, 9, 0, tzinfo=UTC)
SECRET = b"test-secret"
BASE = "https://forum.example.org"
FROM = "Forum Scheduler <noreply@forum.example.org>"


@dataclass
class Env:
    settings: Settings
    db: Database
    worker: outbox.OutboxWorker
    server: MailServer | None
    process_id: int
    event_id: int
    registration_id: int
    nonce: str

    async def enqueue(self, kind: str = "registration_confirmed", **changes: Any) -> int:
        async with self.db.writer.begin() as session:
            note = outbox.enqueue(session, **self.note_fields(kind, **changes))
            await session.flush()
            return note.id

    def note_fields(self, kind: str, **changes: Any) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "kind": kind,
            "recipient_email": "amina@example.org",
            "recipient_name": "Amina Diallo",
            "language": "fr",
            "time_zone": "Europe/Paris",
            "context": {
                "event_title": "Regional review",
                "event_start": "2030-05-12T14:00:00+00:00",
                "event_end": "2030-05-12T17:00:00+00:00",
                "event_time_zone": "America/New_York",
                "venue": "Conference room 4",
                "online_url": "",
                "position": None,
                "hold_expires_at": None,
                "reason": "",
            },
            "registration_id": self.registration_id,
            "event_id": self.event_id,
            "due_at": NOW,
        }
        fields.update(changes)
        return fields

    async def row(self, note_id: int) -> Notification:
        async with self.db.reader() as session:
            note = await session.get(Notification, note_id)
            assert note is not None
            return note

    async def count(self) -> int:
        async with self.db.reader() as session:
            return int(await session.scalar(select(func.count()).select_from(Notification)) or 0)

    @property
    def received(self) -> list[Any]:
        assert self.server is not None
        return self.server.messages


async def seed(db: Database, slug: str = "gcm") -> tuple[int, int, int, str]:
    """A process, a published event and one registration; their ids and the nonce."""
    nonce = manage_links.new_nonce()
    async with db.writer.begin() as session:
        process = Process(slug=slug, name="GCM review", time_zone="America/New_York")
        session.add(process)
        await session.flush()
        event = Event(
            process_id=process.id,
            kind="regional_review",
            title="Regional review",
            time_zone="America/New_York",
            starts_at=datetime(2030, 5, 12, 14, 0, tzinfo=UTC),
            ends_at=datetime(2030, 5, 12, 17, 0, tzinfo=UTC),
            series_ends_at=datetime(2030, 5, 12, 17, 0, tzinfo=UTC),
            status="published",
            venue="Conference room 4",
        )
        session.add(event)
        await session.flush()
        reg = Registration(
            event_id=event.id,
            process_id=process.id,
            name="Amina Diallo",
            email="amina@example.org",
            constituency="civil_society",
            country="SEN",
            language="fr",
            time_zone="Europe/Paris",
            status="confirmed",
            token_nonce=nonce,
        )
        session.add(reg)
        await session.flush()
        return process.id, event.id, reg.id, nonce


def smtp_settings(settings: Settings, server: MailServer, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "mail_transport": "smtp",
        "mail_from": FROM,
        "smtp_host": "127.0.0.1",
        "smtp_port": server.port,
        "smtp_pool_size": 2,
        "smtp_timeout_seconds": 5,
        "mail_retry_seconds": 30,
        "mail_max_attempts": 3,
        "mail_lease_seconds": 120,
    }
    values.update(changes)
    return settings.replace(**values)


@pytest.fixture
async def env(settings: Settings, mail_server: MailServer) -> AsyncIterator[Env]:
    async with make_env(smtp_settings(settings, mail_server), mail_server) as e:
        yield e


class make_env:  # used like a function: async with make_env(...) as env
    """An Env on the given settings; closes the sender and the database afterwards."""

    def __init__(self, settings: Settings, server: MailServer | None) -> None:
        self.settings = settings
        self.server = server
        self.db: Database | None = None
        self.worker: outbox.OutboxWorker | None = None

    async def __aenter__(self) -> Env:
        self.db = open_database(self.settings)
        ids = await seed(self.db)
        self.worker = outbox.OutboxWorker(
            self.db, make_sender(self.settings), self.settings, SECRET, BASE
        )
        return Env(self.settings, self.db, self.worker, self.server, *ids)

    async def __aexit__(self, *exc: object) -> None:
        assert self.db is not None and self.worker is not None
        await self.worker.stop()
        await self.db.dispose()


# --- Delivery -----------------------------------------------------------------------------


async def test_enqueued_mail_is_delivered_exactly_once(env: Env) -> None:
    note_id = await env.enqueue()
    assert await env.worker.run_once(NOW) == 1
    assert await env.worker.run_once(NOW + timedelta(minutes=5)) == 0
    (received,) = env.received
    assert received.rcpt_tos == ["amina@example.org"]
    assert received.mail_from == "noreply@forum.example.org"
    msg = received.parsed()
    assert msg["To"].addresses[0].addr_spec == "amina@example.org"
    assert "Regional review" in msg["Subject"]
    assert msg["Content-Language"] == "fr"

    row = await env.row(note_id)
    assert (row.status, row.attempts, row.sent_at, row.lease_until) == ("sent", 1, NOW, None)
    assert msg["Message-ID"] == row.message_id
    assert row.message_id.startswith(f"<notification-{note_id}.")
    assert row.message_id.endswith("@forum.example.org>")

    # The manage link is signed for this registration and verifies.
    text = msg.get_body(("plain",))
    assert text is not None
    body = str(text.get_content())
    token = body.split(f"{BASE}/registrations/", 1)[1].split()[0]
    assert manage_links.verify(token, env.nonce, SECRET)
    (ics,) = list(msg.iter_attachments())
    assert ics.get_content_type() == "text/calendar"


async def test_a_row_is_sent_when_it_falls_due(env: Env) -> None:
    note_id = await env.enqueue(due_at=NOW + timedelta(hours=1))
    assert await env.worker.run_once(NOW) == 0
    assert (await env.row(note_id)).status == "planned"
    assert await env.worker.run_once(NOW + timedelta(hours=1)) == 1
    assert len(env.received) == 1


async def test_temporary_refusal_is_retried_with_backoff_then_sent(env: Env) -> None:
    assert env.server is not None
    env.server.recorder.refuse_next(2, "451 4.3.0 Try again later")
    note_id = await env.enqueue()

    assert await env.worker.run_once(NOW) == 0
    row = await env.row(note_id)
    assert (row.status, row.attempts) == ("planned", 1)
    assert row.due_at == NOW + timedelta(seconds=30)
    assert "451" in row.last_error and "Try again later" in row.last_error

    assert await env.worker.run_once(NOW + timedelta(seconds=29)) == 0  # not due yet
    assert (await env.row(note_id)).attempts == 1

    t2 = NOW + timedelta(seconds=30)
    assert await env.worker.run_once(t2) == 0
    row = await env.row(note_id)
    assert (row.status, row.attempts, row.due_at) == ("planned", 2, t2 + timedelta(seconds=60))

    t3 = t2 + timedelta(seconds=60)
    assert await env.worker.run_once(t3) == 1
    row = await env.row(note_id)
    assert (row.status, row.attempts, row.sent_at, row.last_error) == ("sent", 3, t3, "")
    assert len(env.received) == 1


async def test_permanent_refusal_fails_with_the_reason(env: Env) -> None:
    assert env.server is not None
    env.server.recorder.refuse_next(1, "550 5.1.1 No such mailbox")
    note_id = await env.enqueue()
    assert await env.worker.run_once(NOW) == 0
    row = await env.row(note_id)
    assert (row.status, row.attempts, row.lease_until) == ("failed", 1, None)
    assert row.last_error == "550 5.1.1 No such mailbox"
    assert await env.worker.run_once(NOW + timedelta(days=1)) == 0
    assert env.received == []


async def test_refused_recipient(env: Env) -> None:
    assert env.server is not None
    env.server.recorder.refused_recipients.update(
        {
            "gone@example.org": "550 5.1.1 No such mailbox",
            "full@example.org": "452 4.2.2 Over quota",
        }
    )
    gone = await env.enqueue(recipient_email="gone@example.org")
    full = await env.enqueue(recipient_email="full@example.org")
    fine = await env.enqueue()
    assert await env.worker.run_once(NOW) == 1
    row = await env.row(gone)
    assert row.status == "failed"
    assert row.last_error == "recipient refused: 550 5.1.1 No such mailbox <gone@example.org>"
    row = await env.row(full)
    assert (row.status, row.due_at) == ("planned", NOW + timedelta(seconds=30))
    assert row.last_error == "recipient refused: 452 4.2.2 Over quota <full@example.org>"
    assert (await env.row(fine)).status == "sent"
    # A refusal leaves the connection usable (aiosmtplib sends RSET): no extra connections.
    assert env.server.connections <= env.settings.smtp_pool_size


async def test_gives_up_after_max_attempts(env: Env) -> None:
    assert env.server is not None
    env.server.recorder.refuse_next(10, "421 4.7.0 Too busy")
    note_id = await env.enqueue()
    when = NOW
    for _ in range(3):
        assert await env.worker.run_once(when) == 0
        when += timedelta(hours=2)
    row = await env.row(note_id)
    assert (row.status, row.attempts) == ("failed", 3)
    assert row.last_error == "gave up after 3 attempts: 421 4.7.0 Too busy"
    assert await env.worker.run_once(when) == 0
    assert (await env.row(note_id)).attempts == 3


def test_retry_delay_doubles_up_to_an_hour() -> None:
    assert [outbox.retry_delay(n, 30).total_seconds() for n in range(1, 9)] == [
        30,
        60,
        120,
        240,
        480,
        960,
        1920,
        3600,
    ]
    assert outbox.retry_delay(500, 30) == timedelta(hours=1)


async def test_a_sender_that_died_is_replaced_and_the_resend_keeps_the_message_id(env: Env) -> None:
    note_id = await env.enqueue()
    s = env.settings
    # A first sender claims the row, delivers it, and dies before recording the result.
    async with env.db.writer.begin() as session:
        (claimed,) = await outbox.claim_due(
            session,
            NOW,
            limit=10,
            lease_seconds=s.mail_lease_seconds,
            is_sqlite=env.db.is_sqlite,
            mail_from=s.mail_from,
        )
    first_sender = SmtpSender(s)
    await first_sender.send(render(claimed, event=None, links={}, mail_from=FROM, now=NOW))
    await first_sender.close()

    # While its lease runs, nobody else touches the row.
    assert await env.worker.run_once(NOW + timedelta(seconds=60)) == 0
    assert (await env.row(note_id)).status == "sending"

    # Once the lease is over, it is claimed again and sent again, under the same Message-ID.
    later = NOW + timedelta(seconds=s.mail_lease_seconds + 1)
    assert await env.worker.run_once(later) == 1
    first, second = env.received
    assert first.parsed()["Message-ID"] == second.parsed()["Message-ID"] == claimed.message_id
    row = await env.row(note_id)
    assert (row.status, row.attempts, row.sent_at) == ("sent", 2, later)


async def test_a_row_whose_senders_keep_dying_ends_failed(env: Env) -> None:
    note_id = await env.enqueue()
    s = env.settings
    when = NOW
    for _ in range(s.mail_max_attempts):
        async with env.db.writer.begin() as session:
            assert await outbox.claim_due(
                session,
                when,
                limit=10,
                lease_seconds=s.mail_lease_seconds,
                is_sqlite=env.db.is_sqlite,
                mail_from=s.mail_from,
            )
        when += timedelta(seconds=s.mail_lease_seconds + 1)
    assert await env.worker.run_once(when) == 0
    row = await env.row(note_id)
    assert row.status == "failed"
    assert row.last_error == "gave up after 3 attempts: lease expired"
    assert env.received == []


async def test_rolled_back_transaction_sends_nothing(env: Env) -> None:
    class Abandon(Exception):
        pass

    with pytest.raises(Abandon):
        async with env.db.writer.begin() as session:
            outbox.enqueue(session, **env.note_fields("registration_confirmed"))
            await session.flush()
            raise Abandon
    assert await env.count() == 0
    assert await env.worker.run_once(NOW) == 0
    assert env.received == []


async def test_enqueue_with_a_registration_created_in_the_same_flush(env: Env) -> None:
    async with env.db.writer.begin() as session:
        reg = Registration(
            event_id=env.event_id,
            process_id=env.process_id,
            name="Li Wei",
            email="li@example.org",
            constituency="academia",
            country="CHN",
            language="es",
            time_zone="Asia/Shanghai",
            status="waiting",
            token_nonce=manage_links.new_nonce(),
        )
        session.add(reg)
        fields = env.note_fields("waitlisted", recipient_email="li@example.org")
        fields["registration_id"] = None
        note = outbox.enqueue(session, **fields)
        note.registration = reg  # the id is not known before the flush
        await session.flush()
        assert note.registration_id == reg.id
        nonce = reg.token_nonce
    assert await env.worker.run_once(NOW) == 1
    (received,) = env.received
    body = received.parsed().get_body(("plain",))
    assert body is not None
    token = str(body.get_content()).split(f"{BASE}/registrations/", 1)[1].split()[0]
    assert manage_links.verify(token, nonce, SECRET)


async def test_unknown_kind_is_refused_at_enqueue(env: Env) -> None:
    with pytest.raises(ValueError, match="unknown notification kind"):
        await env.enqueue("no_such_kind")
    assert await env.count() == 0


async def test_an_unusable_address_fails_without_retrying(env: Env) -> None:
    note_id = await env.enqueue(recipient_email="amina at example.org")
    assert await env.worker.run_once(NOW) == 0
    row = await env.row(note_id)
    assert row.status == "failed"
    assert row.last_error.startswith("cannot render: not a usable address")


async def test_mail_disabled_keeps_rows_planned(
    settings: Settings, mail_server: MailServer
) -> None:
    async with make_env(smtp_settings(settings, mail_server, mail_enabled=False), mail_server) as e:
        note_id = await e.enqueue()
        e.worker.start()
        e.worker.kick()
        assert await e.worker.run_once(NOW) == 0
        await asyncio.sleep(0.1)
        row = await e.row(note_id)
        assert (row.status, row.attempts) == ("planned", 0)
        assert mail_server.messages == []


async def test_the_loop_delivers_after_a_kick(settings: Settings, mail_server: MailServer) -> None:
    s = smtp_settings(settings, mail_server, mail_sweep_seconds=3600)
    async with make_env(s, mail_server) as e:
        e.worker.start()
        await asyncio.sleep(0.05)  # the loop's first pass finds nothing and goes to sleep
        await e.enqueue(due_at=datetime.now(UTC))
        e.worker.kick()
        for _ in range(100):
            if mail_server.messages:
                break
            await asyncio.sleep(0.05)
        assert len(mail_server.messages) == 1
        await e.worker.stop()
        assert len(mail_server.messages) == 1


async def test_the_clock_sweeps_the_outbox(env: Env) -> None:
    clock = Clock()
    env.worker.schedule(clock)
    job = clock.scheduler.get_job("outbox-sweep")
    assert job is not None
    assert job.trigger.interval == timedelta(seconds=env.settings.mail_sweep_seconds)


# --- Transports ---------------------------------------------------------------------------


async def test_maildir_transport_writes_a_readable_message(
    settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "mail"
    s = settings.replace(mail_transport="maildir", mail_maildir=folder, mail_from=FROM)
    async with make_env(s, None) as e:
        assert isinstance(e.worker.sender, MaildirSender)
        note_id = await e.enqueue("waitlisted", context={"event_title": "Hearing", "position": 2})
        assert await e.worker.run_once(NOW) == 1
        box = mailbox.Maildir(folder, create=False)
        (key,) = box.keys()
        raw = box.get_bytes(key)
        assert b"\r\n" not in raw  # local line endings, as mail programs expect in a Maildir
        msg = message_from_bytes(raw, policy=policy.default)
        assert msg["Message-ID"] == (await e.row(note_id)).message_id
        assert "Hearing" in msg["Subject"]
        assert (folder / "new" / key).is_file()


async def test_smtp_pool_reuses_its_connections(env: Env) -> None:
    assert env.server is not None
    for _ in range(10):
        await env.enqueue()
    assert await env.worker.run_once(NOW) == 10
    assert 1 <= env.server.connections <= env.settings.smtp_pool_size
    opened = env.server.connections
    for _ in range(6):
        await env.enqueue()
    assert await env.worker.run_once(NOW) == 6
    assert env.server.connections == opened  # the same connections again
    sender = env.worker.sender
    assert isinstance(sender, SmtpSender)
    assert sender.connections_opened == opened

    # The server drops idle clients: the pool notices and reconnects, nothing is lost.
    env.server.drop_connections()
    await asyncio.sleep(0.05)
    for _ in range(4):
        await env.enqueue()
    assert await env.worker.run_once(NOW) == 4
    assert len(env.received) == 20
    assert env.server.connections <= opened + env.settings.smtp_pool_size


async def test_unreachable_server_is_a_temporary_failure(settings: Settings) -> None:
    nobody = settings.replace(mail_transport="smtp", smtp_host="127.0.0.1", smtp_port=free_port())
    async with make_env(nobody, None) as e:
        note_id = await e.enqueue()
        assert await e.worker.run_once(NOW) == 0
        row = await e.row(note_id)
        assert (row.status, row.attempts) == ("planned", 1)
        assert row.last_error.startswith(f"cannot connect to 127.0.0.1:{nobody.smtp_port}")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def trusted(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """Clients trust the test certificate (via SSL_CERT_FILE); the server context uses it."""
    cert, key = certificate
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


@pytest.fixture
def starttls_server(trusted: ssl.SSLContext) -> Iterator[MailServer]:
    server = start_server(
        tls_context=trusted,
        require_starttls=True,
        auth_required=True,
        authenticator=accept_login("forum", "s3cret"),
    )
    try:
        yield server
    finally:
        server.stop()


async def test_starttls_and_login(settings: Settings, starttls_server: MailServer) -> None:
    s = smtp_settings(
        settings, starttls_server, smtp_starttls=True, smtp_username="forum", smtp_password="s3cret"
    )
    async with make_env(s, starttls_server) as e:
        await e.enqueue()
        assert await e.worker.run_once(NOW) == 1
    assert len(starttls_server.messages) == 1


async def test_wrong_password_is_retried_later(
    settings: Settings, starttls_server: MailServer
) -> None:
    s = smtp_settings(
        settings, starttls_server, smtp_starttls=True, smtp_username="forum", smtp_password="nope"
    )
    async with make_env(s, starttls_server) as e:
        note_id = await e.enqueue()
        assert await e.worker.run_once(NOW) == 0
        row = await e.row(note_id)
        assert row.status == "planned"  # a configuration error must not fail every message
        assert row.last_error.startswith("SMTP login refused: 535")


async def test_implicit_tls(settings: Settings, trusted: ssl.SSLContext) -> None:
    server = start_server(ssl_context=trusted)
    try:
        async with make_env(smtp_settings(settings, server, smtp_tls=True), server) as e:
            await e.enqueue()
            assert await e.worker.run_once(NOW) == 1
        assert len(server.messages) == 1
    finally:
        server.stop()


# --- GET /api/notifications ---------------------------------------------------------------


def notifications_app(settings: Settings) -> Litestar:
    """The controller with the dependencies the application provides.

    The app gets its own Database: the test client serves it from another event loop, where
    connections opened by the test's loop cannot be used.
    """
    db = open_database(settings)
    return Litestar(
        route_handlers=[NotificationController],
        dependencies={
            "db": Provide(lambda: db, sync_to_thread=False),
            "caller": Provide(provide_caller),
        },
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        on_shutdown=[db.dispose],
    )


async def test_notifications_api_lists_an_organizers_messages(env: Env) -> None:
    assert env.server is not None
    env.server.recorder.refuse_next(1, "550 5.1.1 No such mailbox")
    failed_id = await env.enqueue(recipient_email="Gone@Example.org")
    await env.worker.run_once(NOW)
    sent_id = await env.enqueue("registration_confirm")
    await env.worker.run_once(NOW)
    planned_id = await env.enqueue("cancelled", due_at=NOW + timedelta(days=1))
    # A message without an event is visible through its registration's process.
    no_event_id = await env.enqueue("cancelled", event_id=None)

    # Another process, with its own organizer and message.
    other_pid, other_event, other_reg, _ = await seed(env.db, slug="other")
    other_id = await env.enqueue(event_id=other_event, registration_id=other_reg)
    async with env.db.writer.begin() as session:
        _, token = await create_organizer(session, "Secretariat", ["gcm"])
        _, other_token = await create_organizer(session, "Other", ["other"])
        _, idle_token = await create_organizer(session, "Nobody", [])

    async with AsyncTestClient(app=notifications_app(env.settings)) as client:
        assert (await client.get("/api/notifications")).status_code == 401
        bad = await client.get("/api/notifications", headers={"Authorization": "Bearer fs_nope"})
        assert bad.status_code == 401

        auth = {"Authorization": f"Bearer {token}"}
        r = await client.get("/api/notifications", headers=auth)
        assert r.status_code == 200, r.text
        page = r.json()
        ids = [i["id"] for i in page["items"]]
        assert sorted(ids) == sorted([failed_id, sent_id, planned_id, no_event_id])
        assert other_id not in ids
        assert (page["limit"], page["offset"]) == (100, 0)

        items = {i["id"]: i for i in page["items"]}
        failed = items[failed_id]
        assert failed["status"] == "failed"
        assert failed["last_error"] == "550 5.1.1 No such mailbox"
        assert failed["attempts"] == 1
        assert failed["recipient_email"] == "Gone@Example.org"
        sent = items[sent_id]
        assert sent["status"] == "sent" and sent["sent_at"] is not None
        assert sent["kind"] == "registration_confirm"
        assert sent["message_id"].startswith(f"<notification-{sent_id}.")
        assert set(sent) == {
            "id",
            "kind",
            "recipient_email",
            "recipient_name",
            "language",
            "status",
            "reason",
            "attempts",
            "due_at",
            "created_at",
            "sent_at",
            "last_error",
            "message_id",
            "event_id",
            "registration_id",
            "milestone_id",
            "subscription_id",
            "organizer_id",
            "offset_minutes",
            "basis",
            "sent_with_id",
        }
        assert items[no_event_id]["event_id"] is None

        async def listed(**params: Any) -> list[int]:
            r = await client.get("/api/notifications", params=params, headers=auth)
            assert r.status_code == 200, r.text
            return [i["id"] for i in r.json()["items"]]

        assert await listed(status="failed") == [failed_id]
        assert await listed(status="planned", kind="cancelled") == [no_event_id, planned_id]
        assert await listed(recipient="gone@example.org") == [failed_id]
        assert await listed(event_id=env.event_id, status="planned") == [planned_id]
        assert len(await listed(limit=2)) == 2
        assert len(await listed(limit=2, offset=3)) == 1
        bad_status = await client.get("/api/notifications?status=lost", headers=auth)
        assert bad_status.status_code == 400

        other = await client.get(
            "/api/notifications", headers={"Authorization": f"Bearer {other_token}"}
        )
        assert [i["id"] for i in other.json()["items"]] == [other_id]
        idle = await client.get(
            "/api/notifications", headers={"Authorization": f"Bearer {idle_token}"}
        )
        assert idle.json()["items"] == []
    assert other_pid != env.process_id
