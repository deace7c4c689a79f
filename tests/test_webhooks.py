"""Webhooks end to end, on SQLite and PostgreSQL, with a real receiver on 127.0.0.1.

The receiver (tests/webhook_receiver.py) checks every signature with its own copy of the
documented algorithm and misbehaves on demand. API tests let the app's own outbox worker
deliver; tests of retries, leases and crashes drive a worker by hand with the time passed
in, as tests/test_outbox.py does for mail.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from scheduler import outbox, registrations, webhook_events, webhook_signatures, webhooks
from scheduler.database import Database, open_database
from scheduler.errors import Invalid
from scheduler.mail import make_sender
from scheduler.models import (
    AuditEntry,
    Event,
    Process,
    Registration,
    Webhook,
    WebhookAttempt,
    WebhookDelivery,
)
from scheduler.settings import Settings, load_settings
from scheduler.webhook_delivery import WebhookChannel
from scheduler.webhook_targets import Refused, address_problem, check_url
from tests.conftest import Api, base_settings
from tests.feed_server import FeedServer, pledge
from tests.webhook_receiver import Received, WebhookReceiver, verify

NOW = datetime(2030, 3, 1, 9, 0, tzinfo=UTC)
YEAR = datetime.now(UTC).year + 2
START = datetime(YEAR, 5, 12, 14, 0, tzinfo=UTC)
LOCAL = frozenset({"127.0.0.1"})


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """The receiver's address allow-listed; short timeouts; the outbox sweeps every second."""
    return base_settings(database_url, tmp_path).replace(
        webhooks_allowed_hosts="127.0.0.1",
        feeds_allowed_hosts="127.0.0.1",
        webhooks_connect_timeout_seconds=1,
        webhooks_timeout_seconds=1,
        webhooks_lease_seconds=30,
        webhooks_max_attempts=4,
        webhooks_retry_seconds=30,
        mail_sweep_seconds=1,
    )


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r


# --- Signatures and URL rules (pure) ------------------------------------------------------


def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    sig = webhook_signatures.signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    headers = webhook_signatures.headers([secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert verify(secret, headers, body, now=1614265330)
    assert not verify(secret, headers, body + b" ", now=1614265330)
    assert not verify(secret, headers, body, now=1614265330 + 3600)  # replayed an hour later


def test_new_secrets_are_random_and_in_the_standard_format() -> None:
    first, second = webhook_signatures.new_secret(), webhook_signatures.new_secret()
    assert first != second
    assert first.startswith("whsec_") and len(first) == len("whsec_") + 44


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("hooks.example.org/forum", "absolute URL"),
        ("ftp://hooks.example.org/forum", "absolute URL"),
        ("http://hooks.example.org/forum", "must use https"),
        ("https://user:pw@hooks.example.org/", "user name or password"),
        ("https://hooks.example.org/#top", "fragment"),
        ("https://10.1.2.3/hook", "a private address"),
        ("https://169.254.169.254/latest/meta-data", "a link-local address"),
        ("https://[::1]/hook", "a loopback address"),
        ("https://[::ffff:127.0.0.1]/hook", "a loopback address"),
        ("https://0.0.0.0/hook", "the unspecified address"),
        ("https://224.0.0.1/hook", "a multicast address"),
    ],
)
def test_urls_a_webhook_may_not_point_to(url: str, reason: str) -> None:
    with pytest.raises(Refused) as refused:
        check_url(url, frozenset())
    assert reason in refused.value.reason


def test_allow_listed_hosts_may_be_plain_http_and_internal() -> None:
    assert check_url("http://127.0.0.1:8080/hook", LOCAL).allow_listed
    assert not check_url("https://93.184.215.14/hook", LOCAL).allow_listed
    assert check_url("https://hooks.example.org/forum", frozenset()).port == 443
    assert address_problem("93.184.215.14") is None
    assert address_problem("100.64.0.1") == "not a public address"  # carrier-grade NAT


def test_retry_delay_backs_off_with_jitter_within_bounds() -> None:
    cap = timedelta(hours=1)
    assert outbox.retry_delay(1, 30, cap, jitter=0.0) == timedelta(seconds=30)
    assert outbox.retry_delay(3, 30, cap, jitter=1.0) == timedelta(seconds=90)  # 120 - 25 %
    assert outbox.retry_delay(20, 30, cap, jitter=0.0) == cap
    assert timedelta(minutes=45) <= outbox.retry_delay(20, 30, cap, jitter=0.5) < cap


# --- A worker driven by hand --------------------------------------------------------------


@dataclass
class Env:
    settings: Settings
    db: Database
    worker: outbox.OutboxWorker
    receiver: WebhookReceiver
    process_id: int
    event_id: int
    registration_id: int
    webhook_id: int
    secret: str

    async def ping(self) -> int:
        async with self.db.writer.begin() as session:
            hook = await session.get_one(Webhook, self.webhook_id)
            return (await webhooks.plan_ping(session, hook, NOW)).id

    async def delivery(self, delivery_id: int) -> WebhookDelivery:
        async with self.db.reader() as session:
            return await session.get_one(WebhookDelivery, delivery_id)

    async def attempts(self, delivery_id: int) -> list[WebhookAttempt]:
        async with self.db.reader() as session:
            return (await webhooks.attempt_log(session, [delivery_id]))[delivery_id]

    async def webhook(self) -> Webhook:
        async with self.db.reader() as session:
            return await session.get_one(Webhook, self.webhook_id)

    async def deliveries(self) -> int:
        async with self.db.reader() as session:
            count = await session.scalar(select(func.count()).select_from(WebhookDelivery))
            return int(count or 0)


def new_worker(settings: Settings, db: Database) -> outbox.OutboxWorker:
    return outbox.OutboxWorker(
        db,
        make_sender(settings),
        settings,
        b"secret",
        "https://forum.example.org",
        WebhookChannel(db, settings),
    )


async def seed(db: Database, url: str, event_types: list[str]) -> tuple[int, int, int, int, str]:
    """A process, a published event with one confirmed registration, and a webhook."""
    async with db.writer.begin() as session:
        process = Process(slug="gcm", name="GCM review", time_zone="UTC")
        session.add(process)
        await session.flush()
        event = Event(
            process_id=process.id,
            kind="stakeholder_hearing",
            title="Hearing",
            time_zone="UTC",
            starts_at=START,
            ends_at=START + timedelta(hours=8),
            series_ends_at=START + timedelta(hours=8),
            status="published",
            capacity=10,
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
            time_zone="UTC",
            status="confirmed",
            token_nonce="n",
        )
        session.add(reg)
        data = webhooks.WebhookCreate(url=url, event_types=event_types)
        hook, secret = await webhooks.create_webhook(session, process.id, data, url, None, NOW)
        return process.id, event.id, reg.id, hook.id, secret


@pytest.fixture
async def env(settings: Settings, receiver: WebhookReceiver) -> AsyncIterator[Env]:
    db = open_database(settings)
    ids = await seed(db, receiver.url(), list(webhook_events.EVENT_TYPES))
    receiver.trust(ids[-1])
    worker = new_worker(settings, db)
    try:
        yield Env(settings, db, worker, receiver, *ids)
    finally:
        await worker.stop()
        await db.dispose()


async def test_a_change_plans_a_signed_delivery_sent_once(env: Env) -> None:
    async with env.db.writer.begin() as session:
        reg = await session.get_one(Registration, env.registration_id)
        await registrations.cancel(session, reg, NOW, timedelta(hours=1))
    assert await env.worker.run_once(NOW) == 2  # the person's mail, and the webhook
    assert await env.worker.run_once(NOW + timedelta(minutes=5)) == 0
    (got,) = env.receiver.received
    assert got.valid_with == [env.secret]
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"].startswith("ForumScheduler/")
    body = got.json
    assert body["type"] == "registration.cancelled"
    assert body["id"] == got.headers["webhook-id"]
    assert body["process_id"] == env.process_id
    assert set(body) == {"id", "type", "created_at", "process_id", "data"}
    registration = body["data"]["registration"]
    assert registration["id"] == env.registration_id
    assert registration["status"] == "cancelled"
    assert b"amina" not in got.body.lower() and b"diallo" not in got.body.lower()


async def test_a_failing_receiver_is_retried_with_backoff_until_it_answers(env: Env) -> None:
    env.receiver.fault(status=500, times=2)
    delivery_id = await env.ping()

    assert await env.worker.run_once(NOW) == 0
    row = await env.delivery(delivery_id)
    assert (row.status, row.attempts, row.last_error) == ("planned", 1, "HTTP 500")
    # 30 s doubling, less up to a quarter of jitter.
    assert NOW + timedelta(seconds=22.5) <= row.due_at <= NOW + timedelta(seconds=30)
    assert await env.worker.run_once(row.due_at - timedelta(seconds=1)) == 0  # not yet due
    assert len(env.receiver.received) == 1

    second = row.due_at
    assert await env.worker.run_once(second) == 0
    row = await env.delivery(delivery_id)
    assert second + timedelta(seconds=45) <= row.due_at <= second + timedelta(seconds=60)

    assert await env.worker.run_once(row.due_at) == 1
    row = await env.delivery(delivery_id)
    assert (row.status, row.attempts, row.last_error) == ("sent", 3, "")
    log = await env.attempts(delivery_id)
    assert [a.http_status for a in log] == [500, 500, 200]
    assert [a.error for a in log] == ["HTTP 500", "HTTP 500", ""]
    assert log[0].attempted_at < log[1].attempted_at < log[2].attempted_at
    assert log[0].response_excerpt == "not now" and "ok" in log[2].response_excerpt
    # The same webhook-id and body each time, a valid signature on each.
    got = env.receiver.received
    assert len({r.headers["webhook-id"] for r in got}) == 1
    assert len({r.body for r in got}) == 1
    assert all(r.valid_with == [env.secret] for r in got)
    assert (await env.webhook()).failing_since is None  # the success ended the streak


async def test_gone_is_retried_like_any_refusal_then_fails_with_the_reason(env: Env) -> None:
    env.receiver.fault(status=410, times=10)
    delivery_id = await env.ping()
    when = NOW
    for _ in range(env.settings.webhooks_max_attempts):
        await env.worker.run_once(when)
        when = (await env.delivery(delivery_id)).due_at
    row = await env.delivery(delivery_id)
    assert row.status == "failed"
    assert row.last_error == "gave up after 4 attempts: HTTP 410"
    assert [a.http_status for a in await env.attempts(delivery_id)] == [410] * 4
    assert len(env.receiver.received) == 4
    hook = await env.webhook()
    assert hook.active and hook.failing_since is not None  # failing, not yet for long


async def test_too_many_requests_waits_for_retry_after(env: Env) -> None:
    env.receiver.fault(status=429, retry_after="600")
    delivery_id = await env.ping()
    await env.worker.run_once(NOW)
    row = await env.delivery(delivery_id)
    assert row.status == "planned"
    assert row.last_error == "HTTP 429 (Retry-After 600 s)"
    assert row.due_at == NOW + timedelta(seconds=600)  # not the 30 s backoff
    assert await env.worker.run_once(NOW + timedelta(seconds=599)) == 0
    assert await env.worker.run_once(NOW + timedelta(seconds=600)) == 1


async def test_a_slow_receiver_times_out_and_is_retried(env: Env) -> None:
    env.receiver.fault(status=200, seconds=3)  # beyond webhooks_timeout_seconds (1 s)
    delivery_id = await env.ping()
    assert await env.worker.run_once(NOW) == 0
    row = await env.delivery(delivery_id)
    assert row.status == "planned"
    assert row.last_error.startswith("timed out after 1 s")
    (attempt,) = await env.attempts(delivery_id)
    assert attempt.http_status is None and attempt.error == row.last_error
    assert await env.worker.run_once(row.due_at) == 1


async def test_redirects_are_not_followed(env: Env) -> None:
    env.receiver.fault(status=307, location="http://127.0.0.1:9/elsewhere")
    delivery_id = await env.ping()
    await env.worker.run_once(NOW)
    row = await env.delivery(delivery_id)
    assert row.last_error == "HTTP 307 (redirects are not followed)"
    assert [r.path for r in env.receiver.received] == ["/hook"]


async def test_a_closed_port_is_a_connection_error_retried_later(
    settings: Settings, receiver: WebhookReceiver
) -> None:
    db = open_database(settings)
    with WebhookReceiver() as gone:
        url = gone.url()
    ids = await seed(db, url, ["registration.cancelled"])
    worker = new_worker(settings, db)
    try:
        e = Env(settings, db, worker, receiver, *ids)
        delivery_id = await e.ping()
        assert await worker.run_once(NOW) == 0
        row = await e.delivery(delivery_id)
        assert row.status == "planned"
        assert row.last_error.startswith("cannot reach 127.0.0.1 (127.0.0.1)")
    finally:
        await worker.stop()
        await db.dispose()


async def test_an_address_refusing_connections_gives_way_to_the_next(env: Env) -> None:
    """A host with an IPv6 address nobody listens on (here ::1) and an IPv4 one that works."""
    channel = env.worker.webhooks
    assert channel is not None
    url = check_url(env.receiver.url(), LOCAL).url
    reply = await channel._post(url, ["::1", "127.0.0.1"], {"webhook-id": "msg_1"}, b"{}")
    assert reply.status == 200
    assert [r.headers["webhook-id"] for r in env.receiver.received] == ["msg_1"]
    assert env.receiver.received[0].headers["host"] == f"127.0.0.1:{env.receiver.port}"
    # The request goes to the address checked, under the host's own name.
    named = check_url(f"http://localhost:{env.receiver.port}/hook", frozenset({"localhost"}))
    await channel._post(named.url, ["127.0.0.1"], {"webhook-id": "msg_2"}, b"{}")
    assert env.receiver.received[1].headers["host"] == f"localhost:{env.receiver.port}"


async def test_a_rolled_back_change_plans_nothing(env: Env) -> None:
    with pytest.raises(RuntimeError):
        async with env.db.writer.begin() as session:
            reg = await session.get_one(Registration, env.registration_id)
            await registrations.cancel(session, reg, NOW, timedelta(hours=1))
            assert await session.scalar(select(func.count()).select_from(WebhookDelivery)) == 1
            raise RuntimeError("the request failed after the change")
    assert await env.deliveries() == 0
    assert await env.worker.run_once(NOW) == 0
    assert env.receiver.received == []


async def test_deliveries_planned_before_a_crash_are_sent_after_the_restart(
    settings: Settings, receiver: WebhookReceiver
) -> None:
    db = open_database(settings)
    ids = await seed(db, receiver.url(), ["registration.cancelled"])
    async with db.writer.begin() as session:
        reg = await session.get_one(Registration, ids[2])
        await registrations.cancel(session, reg, NOW, timedelta(hours=1))
    await db.dispose()  # the node dies here: committed, never sent

    db = open_database(settings)  # the restart
    worker = new_worker(settings, db)
    try:
        assert await worker.run_once(NOW + timedelta(minutes=3)) == 2  # mail and webhook
        (got,) = receiver.received
        assert got.type == "registration.cancelled"
    finally:
        await worker.stop()
        await db.dispose()


async def test_a_sender_that_died_is_replaced_after_its_lease(env: Env) -> None:
    delivery_id = await env.ping()
    # A first node claims the delivery, then dies before sending.
    dead = await env.worker._take(NOW, webhooks=True)
    assert [c.id for c in dead.calls] == [delivery_id]
    assert await env.worker.run_once(NOW + timedelta(seconds=10)) == 0  # still leased
    other = new_worker(env.settings, env.db)
    try:
        lease = timedelta(seconds=env.settings.webhooks_lease_seconds + 1)
        assert await other.run_once(NOW + lease) == 1
    finally:
        await other.stop()
    row = await env.delivery(delivery_id)
    assert (row.status, row.attempts) == ("sent", 2)
    # The dead node's late result, were it to come, is ignored: the row changed hands.
    assert env.worker.webhooks is not None
    await env.worker.webhooks.send(dead.calls, NOW + lease)
    assert (await env.delivery(delivery_id)).status == "sent"
    assert len(env.receiver.received) == 2
    assert len({r.headers["webhook-id"] for r in env.receiver.received}) == 1


async def test_an_address_that_became_internal_is_refused_at_delivery(
    settings: Settings, receiver: WebhookReceiver
) -> None:
    """The webhook was made while its host was public; now its name resolves to loopback."""
    db = open_database(settings)
    ids = await seed(db, f"https://localhost:{receiver.port}/hook", ["registration.cancelled"])
    worker = new_worker(settings, db)
    try:
        e = Env(settings, db, worker, receiver, *ids)
        delivery_id = await e.ping()
        assert await worker.run_once(NOW) == 0
        row = await e.delivery(delivery_id)
        assert row.status == "failed"  # at once: retrying cannot make it allowed
        assert row.last_error.startswith("refused: localhost resolves to ")
        assert "a loopback address" in row.last_error
        assert receiver.received == []
    finally:
        await worker.stop()
        await db.dispose()


async def test_a_webhook_failing_for_long_is_disabled_and_its_deliveries_cancelled(
    settings: Settings, receiver: WebhookReceiver
) -> None:
    s = settings.replace(webhooks_disable_after_hours=1)
    db = open_database(s)
    ids = await seed(db, receiver.url(), list(webhook_events.EVENT_TYPES))
    worker = new_worker(s, db)
    try:
        e = Env(s, db, worker, receiver, *ids)
        receiver.fault(status=503, times=100)
        first = await e.ping()
        await worker.run_once(NOW)
        assert (await e.webhook()).failing_since == (await e.attempts(first))[0].attempted_at
        waiting = await e.ping()
        later = NOW + timedelta(hours=2)
        async with db.writer.begin() as session:  # the first delivery's retry falls due
            row = await session.get_one(WebhookDelivery, first)
            row.due_at = later
            other = await session.get_one(WebhookDelivery, waiting)
            other.due_at = later + timedelta(hours=1)
        await worker.run_once(later)
        hook = await e.webhook()
        assert not hook.active
        assert hook.disabled_at == later
        assert hook.disabled_reason.startswith("every delivery since 2030-03-01 09:00 UTC failed")
        assert "HTTP 503" in hook.disabled_reason
        row = await e.delivery(waiting)
        assert (row.status, row.last_error) == ("cancelled", "the webhook is disabled")
        async with db.reader() as session:  # the trail says which job turned it off, and why
            entry = await session.scalar(
                select(AuditEntry).where(
                    AuditEntry.entity_type == "webhook", AuditEntry.action == "webhook.updated"
                )
            )
        assert entry is not None
        assert (entry.actor_kind, entry.actor_label) == ("system", "webhook-delivery")
        assert entry.after["active"] is False and "HTTP 503" in entry.after["disabled_reason"]
        # Nothing new is planned for a disabled webhook.
        async with db.writer.begin() as session:
            reg = await session.get_one(Registration, ids[2])
            await registrations.cancel(session, reg, later, timedelta(hours=1))
        assert await e.deliveries() == 2
    finally:
        await worker.stop()
        await db.dispose()


async def test_a_failed_mail_is_announced_without_its_address(env: Env) -> None:
    async with env.db.writer.begin() as session:
        note = outbox.enqueue(
            session,
            kind="registration_confirmed",
            recipient_email="amina at example.org",
            recipient_name="Amina Diallo",
            language="fr",
            time_zone="UTC",
            context={"event_title": "Hearing"},
            registration_id=env.registration_id,
            event_id=env.event_id,
            due_at=NOW,
        )
        await session.flush()
        note_id = note.id
    await env.worker.run_once(NOW)  # the mail fails; its announcement is planned
    await env.worker.run_once(NOW)
    (got,) = env.receiver.received
    assert got.type == "reminder.failed"
    assert got.valid_with == [env.secret]
    message = got.json["data"]["message"]
    assert message["id"] == note_id
    assert message["kind"] == "registration_confirmed"
    assert message["event_id"] == env.event_id
    assert message["status"] == "failed"
    assert message["reason"] == "cannot render: not a usable address: '[address]'"
    assert b"amina" not in got.body.lower()


async def test_old_finished_deliveries_are_pruned_with_their_attempts(env: Env) -> None:
    env.receiver.fault(status=500)
    done, retried = await env.ping(), await env.ping()
    await env.worker.run_once(NOW)  # one is sent, the other waits for its retry
    assert {(await env.delivery(done)).status, (await env.delivery(retried)).status} == {
        "sent",
        "planned",
    }
    channel = env.worker.webhooks
    assert channel is not None
    keep = timedelta(days=env.settings.webhooks_keep_days)
    assert await channel.prune(NOW + keep - timedelta(minutes=1)) == 0
    assert await channel.prune(NOW + keep + timedelta(minutes=1)) == 1
    async with env.db.reader() as session:
        left = list(await session.scalars(select(WebhookDelivery.status)))
        attempts = await session.scalar(select(func.count()).select_from(WebhookAttempt))
    assert left == ["planned"]  # an unfinished delivery is never pruned
    assert attempts == 1  # its own failed attempt


# --- Over the API, delivered by the app's own worker --------------------------------------


async def arrived(
    receiver: WebhookReceiver, count: int, event_type: str | None = None
) -> list[Received]:
    """Wait (at most 30 s) until ``count`` requests (of that type) have arrived."""
    got: list[Received] = []
    for _ in range(600):
        got = receiver.of_type(event_type) if event_type else receiver.received
        if len(got) >= count:
            return got
        await asyncio.sleep(0.05)
    raise AssertionError(f"{len(got)} of {count} {event_type or 'deliveries'} arrived")


async def make_process(api: Api, slug: str = "gcm") -> int:
    r = await api.client.post(
        "/api/processes",
        json={"slug": slug, "name": "GCM review", "time_zone": "America/New_York"},
        headers=api.auth,
    )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


async def make_event(api: Api, process_id: int, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "process_id": process_id,
        "kind": "stakeholder_hearing",
        "title": "Informal multi-stakeholder hearing",
        "time_zone": "America/New_York",
        "start": START.isoformat(),
        "end": (START + timedelta(hours=7)).isoformat(),
        "status": "published",
    }
    body.update(changes)
    r = await api.client.post("/api/events", json=body, headers=api.auth)
    assert r.status_code == 201, r.text
    event: dict[str, Any] = r.json()
    return event


async def subscribe(
    api: Api, process_id: int, url: str, event_types: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    body = {"url": url, "event_types": event_types or list(webhook_events.EVENT_TYPES), **extra}
    r = await api.client.post(f"/api/processes/{process_id}/webhooks", json=body, headers=api.auth)
    assert r.status_code == 201, r.text
    hook: dict[str, Any] = r.json()
    return hook


def person(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "email": name.split()[0].lower() + "@example.org",
        "constituency": "civil_society",
        "country": "KEN",
        "language": "en",
        "time_zone": "Africa/Nairobi",
    }


def refused(r: Any, status: int = 400) -> str:
    assert r.status_code == status, r.text
    return str(r.json()["extra"][0]["key"])


async def test_every_event_type_arrives_signed_and_without_personal_data(
    api: Api, receiver: WebhookReceiver
) -> None:
    pid = await make_process(api)
    hook = await subscribe(api, pid, receiver.url())
    receiver.trust(hook["secret"])
    hearing = await make_event(api, pid, capacity=1, confirmation_required=False)
    side = await make_event(
        api,
        pid,
        title="Side event",
        kind="dialogue_meeting",
        relative_to_id=hearing["id"],
        placement={"days": 1, "at": "10:00", "duration_minutes": 90},
    )
    # Two people for one seat: the second waits, then gets the seat the first gives up.
    amina = await api.client.post(
        f"/api/events/{hearing['id']}/registrations", json=person("Amina Diallo")
    )
    bruno = await api.client.post(
        f"/api/events/{hearing['id']}/registrations", json=person("Bruno Costa")
    )
    assert (amina.json()["status"], bruno.json()["status"]) == ("confirmed", "waiting")
    r = await api.client.post(
        f"/api/events/{hearing['id']}/registrations/{amina.json()['id']}/cancel", headers=api.auth
    )
    assert r.status_code == 200, r.text
    # Moving the hearing a day later moves the side event with it.
    r = await api.client.post(
        f"/api/events/{hearing['id']}/move",
        json={"start": (START + timedelta(days=1)).isoformat()},
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    r = await api.client.patch(
        f"/api/events/{side['id']}", json={"status": "cancelled"}, headers=api.auth
    )
    assert r.status_code == 200, r.text
    with FeedServer([pledge(1), pledge(2)]) as feeds:
        r = await api.client.post(
            "/api/feeds",
            json={
                "process_id": pid,
                "name": "pledges",
                "url": feeds.url("/pledges.json"),
                "format": "json",
                "interval_seconds": 3600,
            },
            headers=api.auth,
        )
        assert r.status_code == 201, r.text
        run = await api.client.post(f"/api/feeds/{r.json()['id']}/sync", headers=api.auth)
        assert run.json()["outcome"] == "success", run.text
        feeds.fault("status", status=404)  # a run that fails is announced too
        run = await api.client.post(f"/api/feeds/{r.json()['id']}/sync", headers=api.auth)
        assert run.json()["outcome"] == "failed", run.text

    created = await arrived(receiver, 2, "registration.created")
    (cancelled,) = await arrived(receiver, 1, "registration.cancelled")
    (promoted,) = await arrived(receiver, 1, "registration.promoted")
    moved = await arrived(receiver, 2, "event.moved")
    (event_cancelled,) = await arrived(receiver, 1, "event.cancelled")
    runs = {
        r.json["data"]["run"]["outcome"]: r for r in await arrived(receiver, 2, "feed.run_finished")
    }
    finished, failed = runs["success"], runs["failed"]

    waiting = next(c for c in created if c.json["data"]["registration"]["status"] == "waiting")
    assert waiting.json["data"]["registration"]["waiting_list_position"] == 1
    assert cancelled.json["data"]["registration"]["id"] == amina.json()["id"]
    assert (
        promoted.json["data"]["registration"] | {"status": "confirmed"}
        == promoted.json["data"]["registration"]
    )
    assert promoted.json["data"]["registration"]["id"] == bruno.json()["id"]
    by_event = {m.json["data"]["event"]["id"]: m.json["data"] for m in moved}
    assert by_event[hearing["id"]]["moved_with_event_id"] is None
    assert by_event[hearing["id"]]["previous"]["start"] == START.isoformat().replace("+00:00", "Z")
    assert by_event[side["id"]]["moved_with_event_id"] == hearing["id"]
    assert event_cancelled.json["data"]["event"]["id"] == side["id"]
    assert event_cancelled.json["data"]["previous_status"] == "published"
    run_data = finished.json["data"]["run"]
    assert (run_data["outcome"], run_data["new"]) == ("success", 2)
    assert failed.json["data"]["run"]["outcome"] == "failed"
    assert "404" in failed.json["data"]["run"]["error"]

    everything = receiver.received
    assert all(r.valid_with == [hook["secret"]] for r in everything)
    assert all(r.json["process_id"] == pid for r in everything)
    assert all(r.json["id"] == r.headers["webhook-id"] for r in everything)
    assert len({r.headers["webhook-id"] for r in everything}) == len(everything)
    for r in everything:
        for word in (b"amina", b"bruno", b"diallo", b"costa", b"example.org"):
            assert word not in r.body.lower(), (r.type, r.body)

    # The log shows each delivery and its one successful attempt (once recorded: the
    # receiver may have answered a moment before the worker wrote the result down).
    page: dict[str, Any] = {}
    for _ in range(600):
        page = (await api.client.get(hook["deliveries_url"], headers=api.auth)).json()
        if {d["status"] for d in page["items"]} == {"sent"}:
            break
        await asyncio.sleep(0.05)
    assert page["total"] == len(everything)
    assert {d["status"] for d in page["items"]} == {"sent"}
    assert all(len(d["attempt_log"]) == 1 for d in page["items"])
    assert all(d["attempt_log"][0]["http_status"] == 200 for d in page["items"])


async def test_secret_is_shown_once_and_the_webhook_can_be_managed(
    api: Api, receiver: WebhookReceiver
) -> None:
    pid = await make_process(api)
    hook = await subscribe(
        api, pid, receiver.url(), ["event.moved", "event.cancelled"], description="Our CRM"
    )
    assert hook["secret"].startswith("whsec_")
    assert (hook["active"], hook["description"], hook["process_id"]) == (True, "Our CRM", pid)
    one = (await api.client.get(f"/api/webhooks/{hook['id']}", headers=api.auth)).json()
    listed = (await api.client.get(f"/api/processes/{pid}/webhooks", headers=api.auth)).json()
    assert "secret" not in one and all("secret" not in h for h in listed)
    assert [h["id"] for h in listed] == [hook["id"]]

    r = await api.client.patch(
        f"/api/webhooks/{hook['id']}",
        json={"event_types": ["registration.created"], "active": False},
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    assert r.json()["event_types"] == ["registration.created"]
    assert (r.json()["active"], r.json()["disabled_reason"]) == (
        False,
        "turned off by an organizer",
    )
    r = await api.client.patch(
        f"/api/webhooks/{hook['id']}", json={"active": True}, headers=api.auth
    )
    assert (r.json()["active"], r.json()["disabled_at"], r.json()["disabled_reason"]) == (
        True,
        None,
        "",
    )

    r = await api.client.delete(f"/api/webhooks/{hook['id']}", headers=api.auth)
    assert r.status_code == 204
    r = await api.client.get(f"/api/webhooks/{hook['id']}", headers=api.auth)
    assert r.status_code == 404


async def test_ping_rotation_and_redelivery(api: Api, receiver: WebhookReceiver) -> None:
    pid = await make_process(api)
    hook = await subscribe(api, pid, receiver.url(), ["event.moved"])
    old = hook["secret"]
    receiver.trust(old)
    r = await api.client.post(f"/api/webhooks/{hook['id']}/test", headers=api.auth)
    assert r.status_code == 202, r.text
    assert (r.json()["event_type"], r.json()["status"]) == ("ping", "planned")
    (got,) = await arrived(receiver, 1, "ping")
    assert got.valid_with == [old]
    assert got.json["data"]["webhook_id"] == hook["id"]

    r = await api.client.post(f"/api/webhooks/{hook['id']}/rotate-secret", headers=api.auth)
    assert r.status_code == 200, r.text
    new = r.json()["secret"]
    assert new.startswith("whsec_") and new != old
    assert r.json()["previous_secret_valid_until"] is not None
    receiver.trust(old, new)
    await api.client.post(f"/api/webhooks/{hook['id']}/test", headers=api.auth)
    pings = await arrived(receiver, 2, "ping")
    # During the grace period both secrets sign: receivers on either one keep working.
    assert sorted(pings[1].valid_with) == sorted([old, new])
    assert len(pings[1].headers["webhook-signature"].split(" ")) == 2

    page = (await api.client.get(hook["deliveries_url"], headers=api.auth)).json()
    first = page["items"][-1]
    r = await api.client.post(
        f"/api/webhooks/{hook['id']}/deliveries/{first['id']}/retry", headers=api.auth
    )
    assert r.status_code == 202, r.text
    assert len(r.json()["attempt_log"]) == 1  # the earlier attempt stays in the log
    again = await arrived(receiver, 3, "ping")
    assert again[2].headers["webhook-id"] == first["message_id"]
    r = await api.client.post(
        f"/api/webhooks/{hook['id']}/deliveries/999999/retry", headers=api.auth
    )
    assert r.status_code == 404


async def test_bad_input_names_the_field(api: Api, receiver: WebhookReceiver) -> None:
    pid = await make_process(api)
    path = f"/api/processes/{pid}/webhooks"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"url": "http://hooks.example.org/x", "event_types": ["event.moved"]}, "url"),
        ({"url": "not a url", "event_types": ["event.moved"]}, "url"),
        ({"url": f"https://localhost:{receiver.port}/hook", "event_types": ["event.moved"]}, "url"),
        ({"url": "https://10.0.0.7/hook", "event_types": ["event.moved"]}, "url"),
        ({"url": receiver.url(), "event_types": []}, "event_types"),
        ({"url": receiver.url(), "event_types": ["event.exploded"]}, "event_types[0]"),
        ({"url": receiver.url(), "event_types": ["event.moved", "event.moved"]}, "event_types[1]"),
        (
            {"url": receiver.url(), "event_types": ["event.moved"], "description": "x" * 501},
            "description",
        ),
        ({"event_types": ["event.moved"]}, "url"),
    ]
    # A missing or unknown field (the secret is never the client's to choose) is named
    # in the message of Litestar's own answer.
    cases.append(({"url": receiver.url(), "event_types": ["event.moved"], "secret": "x"}, "secret"))
    for body, field in cases:
        r = await api.client.post(path, json=body, headers=api.auth)
        key = refused(r)
        message = r.json()["extra"][0]["message"]
        assert key.startswith(field) or f"`{field}`" in message, (body, r.text)
    r = await api.client.post(
        path,
        json={"url": f"https://localhost:{receiver.port}/", "event_types": ["event.moved"]},
        headers=api.auth,
    )
    assert "resolves to 127.0.0.1, a loopback address" in r.json()["detail"]
    hook = await subscribe(api, pid, receiver.url(), ["event.moved"])
    r = await api.client.patch(
        f"/api/webhooks/{hook['id']}", json={"url": "https://[fe80::1]/x"}, headers=api.auth
    )
    assert refused(r) == "url"
    r = await api.client.get(f"{hook['deliveries_url']}?status=lost", headers=api.auth)
    assert refused(r) == "status"
    await only_one_webhook(api)


async def only_one_webhook(api: Api) -> None:
    db = open_database(api.settings)
    try:
        async with db.reader() as session:
            count = await session.scalar(select(func.count()).select_from(Webhook))
            assert count == 1  # only the one made on purpose
    finally:
        await db.dispose()


async def test_only_the_process_organizers_may_use_webhooks(
    api: Api, receiver: WebhookReceiver
) -> None:
    pid = await make_process(api)
    hook = await subscribe(api, pid, receiver.url(), ["event.moved"])
    await make_process(api, "other")
    stranger = {"Authorization": f"Bearer {await api.new_token('Other', ['other'])}"}
    body = {"url": receiver.url(), "event_types": ["event.moved"]}
    routes = [
        ("post", f"/api/processes/{pid}/webhooks", body),
        ("get", f"/api/processes/{pid}/webhooks", None),
        ("get", f"/api/webhooks/{hook['id']}", None),
        ("patch", f"/api/webhooks/{hook['id']}", {"description": "mine now"}),
        ("delete", f"/api/webhooks/{hook['id']}", None),
        ("post", f"/api/webhooks/{hook['id']}/rotate-secret", None),
        ("post", f"/api/webhooks/{hook['id']}/test", None),
        ("get", f"/api/webhooks/{hook['id']}/deliveries", None),
        ("post", f"/api/webhooks/{hook['id']}/deliveries/1/retry", None),
    ]
    for method, path, json in routes:
        kwargs: dict[str, Any] = {"json": json} if json is not None else {}
        public = await getattr(api.client, method)(path, **kwargs)
        assert public.status_code == 401, (method, path, public.text)
        other = await getattr(api.client, method)(path, headers=stranger, **kwargs)
        # A webhook is for its process's members only: to anyone else it does not exist.
        hidden = path.startswith("/api/webhooks/")
        assert other.status_code == (404 if hidden else 403), (method, path, other.text)
    missing = await api.client.get("/api/webhooks/424242", headers=api.auth)
    assert missing.status_code == 404
    r = await api.client.post("/api/processes/424242/webhooks", json=body, headers=api.auth)
    assert r.status_code == 404
    one = (await api.client.get(f"/api/webhooks/{hook['id']}", headers=api.auth)).json()
    assert one["description"] == ""  # nothing changed
    assert receiver.received == []


async def test_webhook_changes_are_in_the_audit_trail_without_their_secrets(
    api: Api, receiver: WebhookReceiver
) -> None:
    pid = await make_process(api)
    hook = await subscribe(api, pid, receiver.url(), ["event.moved"])
    r = await api.client.post(f"/api/webhooks/{hook['id']}/rotate-secret", headers=api.auth)
    assert r.status_code == 200, r.text
    r = await api.client.get(
        "/api/audit", params={"entity_type": "webhook", "entity_id": hook["id"]}, headers=api.auth
    )
    assert r.status_code == 200, r.text
    entries = {e["action"]: e for e in r.json()["items"]}
    assert set(entries) == {"webhook.created", "webhook.updated"}
    created = entries["webhook.created"]
    assert created["actor_kind"] == "organizer" and created["process_id"] == pid
    assert created["after"]["url"] == receiver.url()
    assert created["after"]["secret"] == "[redacted]"
    rotated = entries["webhook.updated"]
    assert rotated["after"]["secret"] == "[redacted]"
    assert rotated["after"]["previous_secret"] == "[redacted]"
    assert hook["secret"] not in r.text


async def test_only_allowed_hosts_refuses_every_other_host_before_looking_it_up() -> None:
    settings = load_settings(
        environ={
            "SCHEDULER_WEBHOOKS_ALLOWED_HOSTS": "127.0.0.1",
            "SCHEDULER_WEBHOOKS_ONLY_ALLOWED_HOSTS": "true",
        }
    )
    assert settings.webhooks_only_allowed_hosts
    allowed = frozenset({"127.0.0.1"})
    assert check_url("http://127.0.0.1:8080/hook", allowed, only_allowed=True).allow_listed
    for url in ("https://receiver.example.org/hook", "https://93.184.215.14/hook"):
        with pytest.raises(Refused, match="not in webhooks_allowed_hosts"):
            check_url(url, allowed, only_allowed=True)
    # The name is never resolved: a host that cannot exist is refused for the rule, not DNS.
    with pytest.raises(Invalid) as refused:
        await webhooks.check_target("https://no-such-host.invalid/hook", allowed, only_allowed=True)
    assert refused.value.field == "url" and "not in webhooks_allowed_hosts" in str(refused.value)
