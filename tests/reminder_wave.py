"""A reminder wave for the kill test and the bench: many people, one reminder each, due soon.

Planned through the services in one transaction, as the bulk registration path does (a
multi-row INSERT of registrations, then ``reminders.registration_rows`` for their reminder
rows), without the confirmation mails: only reminders go out. Each person has exactly one
reminder, so no digest folds them together.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert

from scheduler import manage_links, reminders
from scheduler.database import open_database
from scheduler.models import Event, Notification, Process, Registration, utc_now
from scheduler.settings import Settings

OFFSET_MINUTES = 60  # each event's one reminder: an hour before its start
LANGUAGES = ("en", "fr", "es", "ar")
TIME_ZONES = ("Europe/Zurich", "America/New_York", "Africa/Nairobi", "Asia/Bangkok")
_INSERT_CHUNK = 2000


@dataclass(frozen=True)
class Wave:
    emails: list[str]
    due: dict[str, datetime]  # email -> when its reminder is due


def email_of(i: int) -> str:
    return f"person{i}@example.org"


async def seed_wave(
    database_url: str,
    count: int,
    *,
    first_due: datetime | None = None,
    spread: timedelta = timedelta(0),
    events: int = 1,
) -> Wave:
    """``count`` confirmed registrations over ``events`` events whose reminders fall due
    between ``first_due`` (default: now) and ``first_due + spread``, evenly."""
    now = utc_now()
    first = first_due or now
    settings = Settings().replace(database_url=database_url)
    db = open_database(settings)
    emails: list[str] = []
    due: dict[str, datetime] = {}
    try:
        async with db.writer.begin() as session:
            process = Process(slug="wave", name="Wave review", time_zone="UTC")
            session.add(process)
            await session.flush()
            step = spread / max(events - 1, 1)
            planned: list[Event] = []
            for e in range(events):
                start = first + step * e + timedelta(minutes=OFFSET_MINUTES)
                event = Event(
                    process_id=process.id,
                    kind="dialogue_meeting",
                    title=f"Dialogue {e + 1}",
                    time_zone="Europe/Zurich",
                    starts_at=start,
                    ends_at=start + timedelta(hours=3),
                    series_ends_at=start + timedelta(hours=3),
                    status="published",
                    venue="Palais des Nations, Geneva",
                    confirmation_required=False,
                    reminder_offsets=[OFFSET_MINUTES],
                )
                session.add(event)
                planned.append(event)
            await session.flush()
            policies = await reminders.policies_for_events(session, planned)
            for lo in range(0, count, _INSERT_CHUNK):
                rows: list[dict[str, Any]] = []
                owners: list[Event] = []
                for i in range(lo, min(lo + _INSERT_CHUNK, count)):
                    event = planned[i % events]
                    rows.append(_registration(i, event, now))
                    owners.append(event)
                ids = await session.scalars(
                    insert(Registration).returning(Registration.id, sort_by_parameter_order=True),
                    rows,
                )
                notes: list[dict[str, Any]] = []
                for reg_id, row, event in zip(ids, rows, owners, strict=True):
                    mine = reminders.registration_rows(event, policies[event.id], reg_id, row, now)
                    assert len(mine) == 1, "the reminder must still be ahead"
                    notes += mine
                    emails.append(row["email"])
                    due[row["email"]] = mine[0]["due_at"]
                await session.execute(insert(Notification), notes)
    finally:
        await db.dispose()
    return Wave(emails, due)


def _registration(i: int, event: Event, now: datetime) -> dict[str, Any]:
    return {
        "event_id": event.id,
        "process_id": event.process_id,
        "name": f"Person {i}",
        "email": email_of(i),
        "organisation": "",
        "constituency": "civil_society",
        "country": "CHE",
        "region": "",
        "language": LANGUAGES[i % len(LANGUAGES)],
        "time_zone": TIME_ZONES[i % len(TIME_ZONES)],
        "answers": {},
        "status": "confirmed",
        "token_nonce": manage_links.new_nonce(),
        "confirmed_at": now,
        "created_at": now,
        "updated_at": now,
    }


def as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
