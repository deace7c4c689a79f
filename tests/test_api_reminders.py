"""Reminders end to end, on SQLite and PostgreSQL: planning through the API, the ledger, the
checks at send time and delivery through a real SMTP server.

The app's own sender is switched off (``mail_enabled=False``), so every message waits in
the ledger; the tests deliver with an OutboxWorker of their own, whose ``run_once(now)``
plays the clock: a time after the due time is "the service comes back then".
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

import pytest
from icalendar import Calendar
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler import manage_links, outbox
from scheduler.clock import Clock
from scheduler.database import open_database
from scheduler.mail import make_sender
from scheduler.models import Event, Notification, Registration, Subscription, utc_now
from scheduler.organizers import create_organizer
from scheduler.settings import Settings
from tests.conftest import Api, base_settings
from tests.mail_server import MailServer

SECRET = "reminder-tests-secret"
BASE = "https://forum.example.org"
FROM = "Forum Scheduler <noreply@forum.example.org>"
WEEK, DAY, HOUR = timedelta(days=7), timedelta(days=1), timedelta(hours=1)


@pytest.fixture
def settings(database_url: str, tmp_path: Any) -> Settings:
    """A known signing key; the app's own sender stays off (the tests deliver)."""
    return base_settings(database_url, tmp_path).replace(secret_key=SECRET, mail_enabled=False)


# --- Helpers ------------------------------------------------------------------------------


def in_days(days: float) -> datetime:
    """A whole hour about ``days`` from now, in UTC."""
    return (utc_now() + timedelta(days=days)).replace(minute=0, second=0, microsecond=0)


def iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def make_process(api: Api, slug: str = "gcm") -> int:
    r = await api.client.post(
        "/api/processes",
        json={"slug": slug, "name": "GCM review", "time_zone": "America/New_York"},
        headers=api.auth,
    )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


async def make_event(api: Api, process_id: int, start: datetime, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "process_id": process_id,
        "kind": "stakeholder_hearing",
        "title": "Informal multi-stakeholder hearing",
        "time_zone": "America/New_York",
        "start": start.isoformat(),
        "end": (start + timedelta(hours=3)).isoformat(),
        "venue": "Conference Room 4",
        "status": "published",
        "confirmation_required": False,
    }
    body.update(changes)
    r = await api.client.post("/api/events", json=body, headers=api.auth)
    assert r.status_code == 201, r.text
    event: dict[str, Any] = r.json()
    return event


def person(name: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "email": name.split()[0].lower() + "@example.org",
        "constituency": "civil_society",
        "country": "KEN",
        "language": "en",
        "time_zone": "Africa/Nairobi",
    }
    body.update(changes)
    return body


async def register(api: Api, event_id: int, body: dict[str, Any]) -> dict[str, Any]:
    r = await api.client.post(f"/api/events/{event_id}/registrations", json=body)
    assert r.status_code == 201, r.text
    receipt: dict[str, Any] = r.json()
    return receipt


async def ledger(api: Api, **params: Any) -> list[dict[str, Any]]:
    """The organizer's ledger, oldest due first (``from_`` is sent as ``from``)."""
    if "from_" in params:
        params["from"] = params.pop("from_")
    r = await api.client.get(
        "/api/notifications", params={"limit": 1000, **params}, headers=api.auth
    )
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return sorted(items, key=lambda i: (i["due_at"], i["id"]))


def stamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def plan_of(rows: list[dict[str, Any]]) -> list[tuple[int, datetime, str]]:
    return [(r["offset_minutes"], stamp(r["due_at"]), r["status"]) for r in rows]


@asynccontextmanager
async def database(api: Api) -> AsyncIterator[AsyncSession]:
    db = open_database(api.settings)
    try:
        async with db.writer.begin() as session:
            yield session
    finally:
        await db.dispose()


async def token_for(api: Api, registration_id: int) -> str:
    async with database(api) as session:
        reg = await session.get(Registration, registration_id)
        assert reg is not None
        return manage_links.sign(reg.id, reg.token_nonce, SECRET.encode())


@asynccontextmanager
async def sender(api: Api, server: MailServer) -> AsyncIterator[outbox.OutboxWorker]:
    """An outbox worker on the test's database, delivering to the real SMTP server."""
    s = api.settings.replace(
        mail_enabled=True,
        mail_transport="smtp",
        mail_from=FROM,
        smtp_host="127.0.0.1",
        smtp_port=server.port,
        smtp_pool_size=2,
        smtp_timeout_seconds=5,
        mail_sweep_seconds=3600,
    )
    db = open_database(s)
    worker = outbox.OutboxWorker(db, make_sender(s), s, SECRET.encode(), BASE)
    try:
        yield worker
    finally:
        await worker.stop()
        await db.dispose()


def mails(server: MailServer, to: str, subject_part: str = "") -> list[EmailMessage]:
    return [
        m.parsed()
        for m in server.messages
        if m.rcpt_tos == [to] and subject_part in " ".join(str(m.parsed()["Subject"]).split())
    ]


def text_of(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def refused_field(r: Any) -> str:
    assert r.status_code == 400, r.text
    key: str = r.json()["extra"][0]["key"]
    return key


# --- Planning -----------------------------------------------------------------------------


async def test_registering_plans_three_reminders_per_person(api: Api) -> None:
    pid = await make_process(api)
    start = in_days(10)
    event = await make_event(api, pid, start)
    assert event["reminder_offsets"] is None
    eid = event["id"]
    amina = await register(api, eid, person("Amina Diallo"))
    bola = await register(api, eid, person("Bola Ade", language="fr"))
    assert amina["status"] == bola["status"] == "confirmed"

    rows = await ledger(api, event_id=eid, kind="event_reminder")
    assert len(rows) == 6
    expected = [
        (10080, start - WEEK, "planned"),
        (1440, start - DAY, "planned"),
        (60, start - HOUR, "planned"),
    ]
    for receipt in (amina, bola):
        mine = [r for r in rows if r["registration_id"] == receipt["id"]]
        assert plan_of(mine) == expected
        assert {r["basis"] for r in mine} == {f"{iso(start)}#0"}
        assert {r["reason"] for r in mine} == {""}
    assert {r["language"] for r in rows if r["registration_id"] == bola["id"]} == {"fr"}

    # The ledger's filters.
    assert len(await ledger(api, recipient="Amina@Example.org", kind="event_reminder")) == 3
    window = await ledger(api, event_id=eid, from_=iso(start - 2 * DAY), to=iso(start))
    assert sorted(r["offset_minutes"] for r in window) == [60, 60, 1440, 1440]
    assert len(await ledger(api, status="planned", kind="event_reminder")) == 6
    assert await ledger(api, status="sent", kind="event_reminder") == []
    r = await api.client.get(
        "/api/notifications", params={"from": iso(start), "to": iso(start - DAY)}, headers=api.auth
    )
    assert refused_field(r) == "to"

    # The person sees their own reminders through the manage link.
    view = (await api.client.get(f"/api/registrations/{await token_for(api, amina['id'])}")).json()
    assert [(x["kind"], stamp(x["due_at"]), x["status"]) for x in view["reminders"]] == [
        ("event_reminder", start - WEEK, "planned"),
        ("event_reminder", start - DAY, "planned"),
        ("event_reminder", start - HOUR, "planned"),
    ]


async def test_only_the_offsets_still_ahead_are_planned(api: Api) -> None:
    pid = await make_process(api)
    start = in_days(3)  # the 7-day reminder's time has passed
    event = await make_event(api, pid, start)
    receipt = await register(api, event["id"], person("Amina Diallo"))
    rows = await ledger(api, registration_id=receipt["id"], kind="event_reminder")
    assert [r["offset_minutes"] for r in rows] == [1440, 60]


async def test_held_seats_get_reminders_once_confirmed_and_lose_them_when_cancelled(
    api: Api,
) -> None:
    pid = await make_process(api)
    start = in_days(10)
    event = await make_event(api, pid, start, confirmation_required=True, capacity=1)
    eid = event["id"]
    amina = await register(api, eid, person("Amina Diallo"))
    bola = await register(api, eid, person("Bola Ade"))
    assert (amina["status"], bola["status"]) == ("held", "waiting")
    assert await ledger(api, kind="event_reminder") == []  # nothing before the opt-in

    token = await token_for(api, amina["id"])
    assert (await api.client.post(f"/api/registrations/{token}/confirm")).status_code == 200
    assert [r["status"] for r in await ledger(api, kind="event_reminder")] == ["planned"] * 3

    # Amina cancels: her reminders are cancelled with the reason; Bola gets the seat (held,
    # so no reminders until she confirms in turn).
    r = await api.client.post(f"/api/registrations/{token}/cancel")
    assert r.json()["promoted"] == 1
    rows = await ledger(api, kind="event_reminder")
    assert [(r["status"], r["reason"]) for r in rows] == [
        ("cancelled", "the registration is cancelled")
    ] * 3
    view = (await api.client.get(f"/api/registrations/{token}")).json()
    assert {x["status"] for x in view["reminders"]} == {"cancelled"}
    bola_token = await token_for(api, bola["id"])
    assert (await api.client.post(f"/api/registrations/{bola_token}/confirm")).status_code == 200
    planned = await ledger(api, kind="event_reminder", status="planned")
    assert {r["registration_id"] for r in planned} == {bola["id"]}


# --- Moves, cancellations, postponements --------------------------------------------------


async def test_a_move_replans_every_reminder_and_tells_each_registrant_once(
    api: Api, mail_server: MailServer
) -> None:
    pid = await make_process(api)
    start = in_days(10)
    event = await make_event(api, pid, start)
    eid = event["id"]
    people = [await register(api, eid, person(n)) for n in ("Amina Diallo", "Bola Ade")]
    before = {r["id"] for r in await ledger(api, event_id=eid, kind="event_reminder")}

    new_start = start + 2 * DAY
    r = await api.client.post(
        f"/api/events/{eid}/move", json={"start": new_start.isoformat()}, headers=api.auth
    )
    assert r.status_code == 200, r.text
    rows = await ledger(api, event_id=eid, kind="event_reminder")
    assert {r["id"] for r in rows} == before  # the same rows, re-planned
    for receipt in people:
        mine = [r for r in rows if r["registration_id"] == receipt["id"]]
        assert plan_of(mine) == [
            (10080, new_start - WEEK, "planned"),
            (1440, new_start - DAY, "planned"),
            (60, new_start - HOUR, "planned"),
        ]
        assert {r["basis"] for r in mine} == {f"{iso(new_start)}#1"}
    notices = await ledger(api, event_id=eid, kind="event_changed")
    assert sorted(n["registration_id"] for n in notices) == sorted(p["id"] for p in people)

    # A second change (PATCH start) before the notices went out: still one per person.
    newer = new_start + HOUR
    r = await api.client.patch(
        f"/api/events/{eid}", json={"start": newer.isoformat()}, headers=api.auth
    )
    assert r.status_code == 200, r.text
    assert r.json()["event"]["sequence"] == 2
    notices = await ledger(api, event_id=eid, kind="event_changed")
    planned = [n for n in notices if n["status"] == "planned"]
    assert sorted(n["registration_id"] for n in planned) == sorted(p["id"] for p in people)
    assert [(n["status"], n["reason"]) for n in notices if n["status"] != "planned"] == [
        ("cancelled", "superseded by event_changed")
    ] * 2
    rows = await ledger(api, event_id=eid, kind="event_reminder")
    assert {stamp(r["due_at"]) for r in rows if r["offset_minutes"] == 60} == {newer - HOUR}

    # Delivered, the notice carries the updated calendar entry (SEQUENCE bumped).
    async with sender(api, mail_server) as worker:
        await worker.run_once(utc_now())
    (changed,) = mails(mail_server, "amina@example.org", "New date and time")
    assert "has been rescheduled" in text_of(changed)
    (ics,) = list(changed.iter_attachments())
    (vevent,) = Calendar.from_ical(ics.get_content()).walk("VEVENT")
    assert int(vevent["SEQUENCE"]) == 2
    assert vevent.decoded("DTSTART") == newer
    assert len(mails(mail_server, "bola@example.org", "New date and time")) == 1


async def test_a_cascade_move_replans_the_dependents_reminders(api: Api) -> None:
    pid = await make_process(api)
    start = in_days(10)
    forum = await make_event(api, pid, start, kind="review_forum", title="Forum")
    hearing = await make_event(
        api,
        pid,
        start - DAY,
        title="Hearing",
        relative_to_id=forum["id"],
        placement={"days": -1},
    )
    receipt = await register(api, hearing["id"], person("Amina Diallo"))
    r = await api.client.patch(
        f"/api/events/{forum['id']}", json={"start": (start + WEEK).isoformat(),
                                            "end": (start + WEEK + HOUR).isoformat()},
        headers=api.auth,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    moved = {m["id"]: m for m in r.json()["moved"]}
    assert set(moved) == {forum["id"], hearing["id"]}
    new_hearing = stamp(moved[hearing["id"]]["new_start"])
    assert new_hearing == start + WEEK - DAY
    rows = await ledger(api, registration_id=receipt["id"], kind="event_reminder")
    assert plan_of(rows)[-1] == (60, new_hearing - HOUR, "planned")
    (notice,) = await ledger(api, event_id=hearing["id"], kind="event_changed")
    assert notice["registration_id"] == receipt["id"]


async def test_cancelling_cancels_reminders_and_tells_registrants_once(
    api: Api, mail_server: MailServer
) -> None:
    pid = await make_process(api)
    start = in_days(10)
    event = await make_event(api, pid, start, capacity=1)
    eid = event["id"]
    amina = await register(api, eid, person("Amina Diallo"))
    bola = await register(api, eid, person("Bola Ade"))
    assert (amina["status"], bola["status"]) == ("confirmed", "waiting")

    r = await api.client.patch(f"/api/events/{eid}", json={"status": "cancelled"}, headers=api.auth)
    assert r.status_code == 200, r.text
    rows = await ledger(api, event_id=eid, kind="event_reminder")
    assert [(r["status"], r["reason"]) for r in rows] == [
        ("cancelled", "the event is cancelled")
    ] * 3
    # Everyone registered is told, the waiting list too; a later edit tells nobody again.
    r = await api.client.patch(f"/api/events/{eid}", json={"title": "Hearing"}, headers=api.auth)
    assert r.status_code == 200, r.text
    notices = await ledger(api, event_id=eid, kind="event_cancelled")
    assert sorted(n["registration_id"] for n in notices) == [amina["id"], bola["id"]]
    assert await ledger(api, event_id=eid, kind="event_changed") == []

    async with sender(api, mail_server) as worker:
        await worker.run_once(utc_now())
        (mail,) = mails(mail_server, "amina@example.org", "Cancelled: ")
        assert "has been cancelled" in text_of(mail)
        (vevent,) = Calendar.from_ical(next(iter(mail.iter_attachments())).get_content()).walk(
            "VEVENT"
        )
        assert str(vevent["STATUS"]) == "CANCELLED"
        # Even when the time comes, the cancelled reminders are not sent.
        await worker.run_once(start - HOUR + timedelta(minutes=1))
    assert mails(mail_server, "amina@example.org", "Reminder") == []

    # On again: the reminders come back and seat holders hear about it.
    r = await api.client.patch(f"/api/events/{eid}", json={"status": "published"}, headers=api.auth)
    assert r.status_code == 200, r.text
    rows = await ledger(api, event_id=eid, kind="event_reminder")
    assert [r["status"] for r in rows] == ["planned"] * 3
    (back,) = [n for n in await ledger(api, event_id=eid, kind="event_changed")]
    assert back["registration_id"] == amina["id"]


async def test_postponing_cancels_reminders_and_says_so(api: Api) -> None:
    pid = await make_process(api)
    event = await make_event(api, pid, in_days(10))
    eid = event["id"]
    receipt = await register(api, eid, person("Amina Diallo"))
    r = await api.client.patch(f"/api/events/{eid}", json={"status": "postponed"}, headers=api.auth)
    assert r.status_code == 200, r.text
    rows = await ledger(api, event_id=eid, kind="event_reminder")
    assert {(r["status"], r["reason"]) for r in rows} == {("cancelled", "the event is postponed")}
    (notice,) = await ledger(api, event_id=eid, kind="event_postponed")
    assert notice["registration_id"] == receipt["id"]
    view = (
        await api.client.get(f"/api/registrations/{await token_for(api, receipt['id'])}")
    ).json()
    assert [x["kind"] for x in view["reminders"]].count("event_postponed") == 1


# --- Checks at send time ------------------------------------------------------------------


async def test_a_stale_reminder_is_never_sent(api: Api, mail_server: MailServer) -> None:
    pid = await make_process(api)
    start = in_days(10)
    event = await make_event(api, pid, start)
    await register(api, event["id"], person("Amina Diallo"))
    # Behind the service's back, the event changes in the database (no re-planning).
    async with database(api) as session:
        await session.execute(
            update(Event).where(Event.id == event["id"]).values(sequence=Event.sequence + 1)
        )
    async with sender(api, mail_server) as worker:
        await worker.run_once(start - HOUR + timedelta(minutes=1))
    rows = await ledger(api, event_id=event["id"], kind="event_reminder")
    assert [(r["status"], r["reason"]) for r in rows] == [("cancelled", "basis changed")] * 3
    assert {r["sent_at"] for r in rows} == {None}
    assert mails(mail_server, "amina@example.org", "Reminder") == []
    assert len(mails(mail_server, "amina@example.org", "Your registration is confirmed")) == 1


async def test_a_reminder_due_while_down_is_sent_on_restart_if_still_useful(
    api: Api, mail_server: MailServer
) -> None:
    pid = await make_process(api)
    start = in_days(10)
    event = await make_event(api, pid, start)
    receipt = await register(api, event["id"], person("Amina Diallo"))
    async with sender(api, mail_server) as worker:
        # Down when the 7-day reminder came due; back two hours later: it goes out.
        assert await worker.run_once(start - WEEK + 2 * HOUR) >= 1
        (week,) = mails(mail_server, "amina@example.org", "Reminder: Informal")
        assert "starts in 1 week" in text_of(week)
        # Down again over the 1-day and 1-hour reminders, back 30 minutes before the start:
        # the 1-hour reminder goes out; the 1-day one would only repeat it.
        await worker.run_once(start - timedelta(minutes=30))
    rows = await ledger(api, registration_id=receipt["id"], kind="event_reminder")
    assert [(r["offset_minutes"], r["status"], r["reason"]) for r in rows] == [
        (10080, "sent", ""),
        (1440, "skipped", "a later reminder of the same item came due at the same time"),
        (60, "sent", ""),
    ]
    late = mails(mail_server, "amina@example.org", "Reminder: Informal")
    assert len(late) == 2
    assert "starts in 30 minutes" in text_of(late[1])


async def test_a_reminder_that_comes_due_after_the_start_is_skipped_with_the_reason(
    api: Api, mail_server: MailServer
) -> None:
    pid = await make_process(api)
    start = in_days(10)
    event = await make_event(api, pid, start)
    await register(api, event["id"], person("Amina Diallo"))
    async with sender(api, mail_server) as worker:
        await worker.run_once(start + timedelta(minutes=5))  # down until after the start
    rows = await ledger(api, event_id=event["id"], kind="event_reminder")
    assert {(r["status"], r["reason"]) for r in rows} == {
        ("skipped", "came due while the service was down; the event had started")
    }
    assert mails(mail_server, "amina@example.org", "Reminder") == []


async def test_reminders_due_within_the_hour_go_out_as_one_digest(
    api: Api, mail_server: MailServer
) -> None:
    pid = await make_process(api)
    start = in_days(10)
    first = await make_event(api, pid, start, title="Round table 1", reminder_offsets=[60])
    second = await make_event(
        api, pid, start + timedelta(minutes=30), title="Round table 2", reminder_offsets=[60]
    )
    assert first["reminder_offsets"] == [60]
    for event in (first, second):
        await register(api, event["id"], person("Amina Diallo"))
    await register(api, second["id"], person("Bola Ade"))

    async with sender(api, mail_server) as worker:
        await worker.run_once(start - HOUR)
        await worker.run_once(start - timedelta(minutes=30))  # nothing left for Amina
    (digest,) = mails(mail_server, "amina@example.org", "Your reminders")
    assert " ".join(str(digest["Subject"]).split()) == "Your reminders: 2 coming up"
    text = text_of(digest)
    assert "Round table 1:" in text and "Round table 2:" in text
    assert mails(mail_server, "amina@example.org", "Reminder:") == []
    # Bola has one reminder: a plain one, at its own time.
    assert len(mails(mail_server, "bola@example.org", "Reminder: Round table 2")) == 1

    (carrier,) = await ledger(api, kind="reminder_digest")
    assert (carrier["status"], carrier["recipient_email"]) == ("sent", "amina@example.org")
    assert carrier["message_id"] == str(digest["Message-ID"])
    rows = await ledger(api, recipient="amina@example.org", kind="event_reminder")
    assert [(r["status"], r["sent_with_id"]) for r in rows] == [("sent", carrier["id"])] * 2


# --- Speakers and organizers --------------------------------------------------------------


async def test_speakers_are_reminded_with_their_slot(api: Api, mail_server: MailServer) -> None:
    pid = await make_process(api)
    start = in_days(10)
    event = await make_event(api, pid, start)
    eid = event["id"]
    amina = await register(api, eid, person("Amina Diallo", time_zone="America/New_York"))
    bola = await register(api, eid, person("Bola Ade"))
    for receipt in (amina, bola):
        r = await api.client.post(
            f"/api/registrations/{await token_for(api, receipt['id'])}/speaker-request",
            json={"topic": "Safe pathways", "language": "en"},
        )
        assert r.status_code == 201, r.text
    slot = start + timedelta(minutes=20)
    r = await api.client.post(
        f"/api/events/{eid}/speakers/select",
        json={"count": 2, "slot_minutes": 10, "start": slot.isoformat()},
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    rows = await ledger(api, registration_id=amina["id"])
    speaker = [r for r in rows if r["kind"] == "speaker_reminder"]
    assert [r["status"] for r in speaker] == ["planned"] * 3
    assert {r["basis"] for r in speaker} == {f"{iso(start)}#0|slot {iso(slot)}"}
    plain = [r for r in rows if r["kind"] == "event_reminder"]
    assert {(r["status"], r["reason"]) for r in plain} == {
        ("cancelled", "replaced by the speaker reminder")
    }

    # Bola is declined after all: the plain reminders come back.
    bola_request = next(x for x in r.json()["order"] if x["registration_id"] == bola["id"])
    r = await api.client.post(
        f"/api/events/{eid}/speaker-requests/{bola_request['id']}/decline",
        json={},
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    rows = await ledger(api, registration_id=bola["id"])
    assert {r["status"] for r in rows if r["kind"] == "event_reminder"} == {"planned"}
    assert {(r["status"], r["reason"]) for r in rows if r["kind"] == "speaker_reminder"} == {
        ("cancelled", "no longer speaking: the registrant reminder replaces it")
    }

    async with sender(api, mail_server) as worker:
        await worker.run_once(start - HOUR)
    (mail,) = mails(mail_server, "amina@example.org", "you are speaking")
    text = text_of(mail)
    assert "you have the floor" in text and "Your speaking slot:" in text
    assert len(mails(mail_server, "bola@example.org", "Reminder: Informal")) == 1


async def test_organizers_with_an_address_are_reminded(api: Api, mail_server: MailServer) -> None:
    pid = await make_process(api)
    start = in_days(10)
    await make_event(api, pid, start, title="Regional review")
    async with database(api) as session:
        org, _ = await create_organizer(session, "Focal point", ["gcm"], email="Focal@Example.org")
        await create_organizer(session, "No address", ["gcm"])
        org_id = org.id
    rows = await ledger(api, kind="organizer_reminder")
    assert [(r["organizer_id"], r["recipient_email"]) for r in rows] == [
        (org_id, "focal@example.org")
    ] * 3
    assert plan_of(rows) == [
        (10080, start - WEEK, "planned"),
        (1440, start - DAY, "planned"),
        (60, start - HOUR, "planned"),
    ]
    # A new event of the process plans theirs at once.
    other = await make_event(api, pid, start + WEEK, title="Dialogue")
    assert len(await ledger(api, kind="organizer_reminder", event_id=other["id"])) == 3

    async with sender(api, mail_server) as worker:
        await worker.run_once(start - DAY)
    (mail,) = mails(mail_server, "focal@example.org", "Organizer reminder: Regional review")
    text = text_of(mail)
    assert "Regional review starts in 1 day." in text and "GCM review" in text


# --- Policies -----------------------------------------------------------------------------


async def test_reminder_policies_api(api: Api) -> None:
    pid = await make_process(api)
    start = in_days(10)
    event = await make_event(api, pid, start)
    receipt = await register(api, event["id"], person("Amina Diallo"))
    url = f"/api/processes/{pid}/reminder-policies"

    assert (await api.client.get(url)).status_code == 401
    stranger = {"Authorization": f"Bearer {await api.new_token('Other')}"}
    assert (await api.client.get(url, headers=stranger)).status_code == 403
    assert (
        await api.client.get("/api/processes/999/reminder-policies", headers=api.auth)
    ).status_code == 404
    got = (await api.client.get(url, headers=api.auth)).json()
    policies = {p["kind"]: p for p in got["policies"]}
    assert policies["stakeholder_hearing"] == {
        "kind": "stakeholder_hearing",
        "offsets": [10080, 1440, 60],
        "audiences": ["registrants", "speakers", "organizers"],
        "source": "default",
    }
    assert policies["milestone"]["audiences"] == ["subscribers", "organizers"]

    bad: list[tuple[dict[str, Any], str]] = [
        ({"kind": "stakeholder_hearing", "offsets": [0]}, "policies[0].offsets[0]"),
        ({"kind": "stakeholder_hearing", "offsets": [60, 1.5]}, "policies[0].offsets[1]"),
        ({"kind": "stakeholder_hearing", "offsets": [525601]}, "policies[0].offsets[0]"),
        ({"kind": "stakeholder_hearing", "offsets": list(range(1, 12))}, "policies[0].offsets"),
        ({"kind": "stakeholder_hearing", "offsets": [60, 30, 60]}, "policies[0].offsets[2]"),
        ({"kind": "stakeholder_hearing", "offsets": [60], "audiences": ["subscribers"]},
         "policies[0].audiences[0]"),
        ({"kind": "milestone", "offsets": [60], "audiences": ["organizers", "speakers"]},
         "policies[0].audiences[1]"),
        ({"kind": "stakeholder_hearing", "offsets": [60], "audiences": ["everyone"]},
         "policies[0].audiences[0]"),
        ({"kind": "party", "offsets": [60]}, "policies[0].kind"),
    ]  # fmt: skip
    for policy, field in bad:
        r = await api.client.put(url, json={"policies": [policy]}, headers=api.auth)
        assert refused_field(r) == field, (policy, r.text)
    twice = {"kind": "plenary", "offsets": [60]}
    r = await api.client.put(url, json={"policies": [twice, twice]}, headers=api.auth)
    assert refused_field(r) == "policies[1].kind"
    r = await api.client.put(url, json={"policies": [twice]}, headers=stranger)
    assert r.status_code == 403
    # Nothing refused changed anything.
    assert len(await ledger(api, kind="event_reminder", status="planned")) == 3

    r = await api.client.put(
        url,
        json={"policies": [{"kind": "stakeholder_hearing", "offsets": [30, 2880]}]},
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    hearing = {p["kind"]: p for p in r.json()["policies"]}["stakeholder_hearing"]
    assert (hearing["offsets"], hearing["source"]) == ([2880, 30], "process")
    rows = await ledger(api, registration_id=receipt["id"], kind="event_reminder")
    assert [(r["offset_minutes"], r["status"]) for r in rows if r["status"] == "planned"] == [
        (2880, "planned"),
        (30, "planned"),
    ]
    gone = {(r["offset_minutes"], r["reason"]) for r in rows if r["status"] == "cancelled"}
    assert gone == {
        (10080, "no longer in the reminder policy"),
        (1440, "no longer in the reminder policy"),
        (60, "no longer in the reminder policy"),
    }

    # The event's own offsets win over the policy; bad ones are refused by field.
    for offsets, field in (([5, 5], "reminder_offsets[1]"), ([0], "reminder_offsets[0]")):
        r = await api.client.patch(
            f"/api/events/{event['id']}", json={"reminder_offsets": offsets}, headers=api.auth
        )
        assert refused_field(r) == field
    r = await api.client.patch(
        f"/api/events/{event['id']}", json={"reminder_offsets": [120]}, headers=api.auth
    )
    assert r.status_code == 200 and r.json()["event"]["reminder_offsets"] == [120]
    planned = await ledger(
        api, registration_id=receipt["id"], status="planned", kind="event_reminder"
    )
    assert [r["offset_minutes"] for r in planned] == [120]
    # Back to the policy: null.
    r = await api.client.patch(
        f"/api/events/{event['id']}", json={"reminder_offsets": None}, headers=api.auth
    )
    assert r.json()["event"]["reminder_offsets"] is None
    planned = await ledger(api, registration_id=receipt["id"], status="planned")
    assert [r["offset_minutes"] for r in planned if r["kind"] == "event_reminder"] == [2880, 30]

    # Leaving a kind out of the PUT puts it back to the defaults.
    r = await api.client.put(url, json={"policies": []}, headers=api.auth)
    assert {p["source"] for p in r.json()["policies"]} == {"default"}
    planned = await ledger(api, registration_id=receipt["id"], status="planned")
    assert [r["offset_minutes"] for r in planned if r["kind"] == "event_reminder"] == [
        10080, 1440, 60,
    ]  # fmt: skip


# --- Milestones and subscriptions ---------------------------------------------------------


async def make_milestone(api: Api, pid: int, due: datetime, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "process_id": pid,
        "kind": "report_deadline",
        "title": "Submissions for the progress report",
        "due": due.isoformat(),
        "time_zone": "America/New_York",
        "status": "published",
    }
    body.update(changes)
    r = await api.client.post("/api/milestones", json=body, headers=api.auth)
    assert r.status_code == 201, r.text
    milestone: dict[str, Any] = r.json()
    return milestone


def subscription_token(msg: EmailMessage) -> str:
    (url,) = {u for u in re.findall(r"https?://\S+", text_of(msg)) if "/subscriptions/" in u}
    path = urlsplit(url).path
    assert path.startswith("/subscriptions/")
    return path.removeprefix("/subscriptions/")


async def test_subscribing_to_deadlines_with_double_opt_in_and_one_click_unsubscribe(
    api: Api, mail_server: MailServer
) -> None:
    pid = await make_process(api)
    due = in_days(20)
    report = await make_milestone(api, pid, due)
    draft = await make_milestone(api, pid, due + DAY, title="Draft deadline", status="draft")
    url = f"/api/processes/{pid}/subscriptions"
    body = {"email": "Li.Wei@Example.org", "name": "Li Wei", "language": "fr",
            "time_zone": "Europe/Paris"}  # fmt: skip

    r = await api.client.post(url, json=body)
    assert (r.status_code, r.json()["status"]) == (202, "accepted")
    again = await api.client.post(url, json=body)  # asked twice: one mail
    assert (again.status_code, again.json()) == (202, r.json())
    for bad, field in (({"email": "nope"}, "email"), ({"time_zone": "Mars/Base"}, "time_zone")):
        assert refused_field(await api.client.post(url, json={**body, **bad})) == field
    assert (await api.client.post("/api/processes/999/subscriptions", json=body)).status_code == 404
    assert await ledger(api, kind="milestone_reminder") == []  # nothing before the opt-in

    async with sender(api, mail_server) as worker:
        await worker.run_once(utc_now())
        (confirm,) = mails(mail_server, "li.wei@example.org", "GCM review")
        assert "Veuillez confirmer" in str(confirm["Subject"])
        assert confirm["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        token = subscription_token(confirm)
        # Opening the link (a GET, as a scanner does) confirms nothing.
        page = await api.client.get(f"/subscriptions/{token}")
        assert page.status_code == 200 and "Confirm my subscription" in page.text
        view = (await api.client.get(f"/api/subscriptions/{token}")).json()
        assert (view["status"], view["email"], view["reminders"]) == (
            "pending", "li.wei@example.org", [],
        )  # fmt: skip
        # A registration-style signature of the same id does not open it.
        async with database(api) as session:
            sub = await session.scalar(select(Subscription))
            assert sub is not None
            forged = manage_links.sign(sub.id, sub.token_nonce, SECRET.encode())
        assert (await api.client.get(f"/api/subscriptions/{forged}")).status_code == 404

        r = await api.client.post(f"/api/subscriptions/{token}/confirm")
        assert r.status_code == 200, r.text
        view = r.json()
        assert view["status"] == "active"
        assert [
            (x["milestone_id"], stamp(x["due_at"]), x["status"]) for x in view["reminders"]
        ] == [
            (report["id"], due - WEEK, "planned"),
            (report["id"], due - DAY, "planned"),
            (report["id"], due - HOUR, "planned"),
        ]  # the draft deadline is not announced
        assert draft["id"] not in {x["milestone_id"] for x in view["reminders"]}
        # Asking again once active mails nothing and changes nothing.
        assert (await api.client.post(url, json=body)).status_code == 202

        # The deadline moves: its reminders follow.
        later = due + 2 * DAY
        r = await api.client.patch(
            f"/api/milestones/{report['id']}", json={"due": later.isoformat()}, headers=api.auth
        )
        assert r.status_code == 200, r.text
        rows = await ledger(api, milestone_id=report["id"], kind="milestone_reminder")
        assert plan_of(rows)[0] == (10080, later - WEEK, "planned")

        await worker.run_once(later - WEEK)
        (reminder,) = mails(mail_server, "li.wei@example.org", "Rappel d\u2019échéance")
        one_click = str(reminder["List-Unsubscribe"]).strip().strip("<>")
        assert reminder["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert one_click == f"{BASE}/api/subscriptions/{token}/unsubscribe"
    assert len(mails(mail_server, "li.wei@example.org")) == 2

    # The mail program's one-click POST (RFC 8058: a form body).
    r = await api.client.post(
        urlsplit(one_click).path,
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert (r.status_code, r.json()["status"]) == (200, "unsubscribed")
    assert (await api.client.post(urlsplit(one_click).path)).status_code == 200  # twice: fine
    rows = await ledger(api, milestone_id=report["id"], kind="milestone_reminder")
    assert [(r["status"], r["reason"]) for r in rows] == [
        ("sent", ""),
        ("cancelled", "unsubscribed"),
        ("cancelled", "unsubscribed"),
    ]
    view = (await api.client.get(f"/api/subscriptions/{token}")).json()
    assert view["status"] == "unsubscribed"
    r = await api.client.post(f"/api/subscriptions/{token}/confirm")
    assert r.status_code == 409


async def test_milestone_reminders_go_to_organizers_and_stop_when_cancelled(api: Api) -> None:
    pid = await make_process(api)
    due = in_days(20)
    async with database(api) as session:
        await create_organizer(session, "Focal point", ["gcm"], email="focal@example.org")
    report = await make_milestone(api, pid, due, reminder_offsets=[1440])
    assert report["reminder_offsets"] == [1440]
    (row,) = await ledger(api, milestone_id=report["id"])
    assert (row["kind"], row["recipient_email"], stamp(row["due_at"])) == (
        "milestone_reminder", "focal@example.org", due - DAY,
    )  # fmt: skip
    r = await api.client.patch(
        f"/api/milestones/{report['id']}", json={"status": "cancelled"}, headers=api.auth
    )
    assert r.status_code == 200, r.text
    (row,) = await ledger(api, milestone_id=report["id"])
    assert (row["status"], row["reason"]) == ("cancelled", "the milestone is cancelled")


# --- The clock ----------------------------------------------------------------------------


async def test_the_clock_wakes_the_sender_at_the_next_due_time(
    api: Api, mail_server: MailServer
) -> None:
    """No kick and no sweep (an hour): the date job armed on the clock delivers the mail."""
    async with sender(api, mail_server) as worker:
        clock = Clock()
        worker.schedule(clock)
        clock.start()
        try:
            worker.start()
            await asyncio.sleep(0.2)  # the first pass finds nothing and the loop sleeps
            due = utc_now() + timedelta(seconds=1.5)
            async with worker.db.writer.begin() as session:
                outbox.enqueue(
                    session,
                    kind="manage_link",
                    recipient_email="amina@example.org",
                    recipient_name="Amina",
                    language="en",
                    time_zone="UTC",
                    context={"event_title": "Hearing"},
                    due_at=due,
                )
            worker.arm(due)
            job = clock.scheduler.get_job(outbox.NEXT_DUE_JOB)
            assert job is not None and job.next_run_time == due
            assert worker.armed_at == due
            # A later time does not push the wake back; an earlier one brings it forward.
            worker.arm(due + HOUR)
            assert worker.armed_at == due
            deadline = time.monotonic() + 10
            while not mails(mail_server, "amina@example.org"):
                assert time.monotonic() < deadline, "not woken"
                await asyncio.sleep(0.05)
            assert utc_now() >= due
        finally:
            clock.shutdown()
    async with database(api) as session:
        (note,) = await session.scalars(select(Notification))
        assert note.status == "sent"
