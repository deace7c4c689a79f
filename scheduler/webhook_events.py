"""What webhooks announce, and planning their deliveries in the caller's transaction.

Each change that webhooks announce plans its deliveries as rows in the same transaction as
the change itself: a rollback plans nothing, a crash after the commit loses nothing (the
outbox worker delivers them, scheduler/webhook_delivery.py). One query finds the webhooks
of a whole batch of events, one INSERT plans all their deliveries.

Payloads carry ids, statuses, times and the public fields of events, never personal data
(no registrant's name, email, organisation or answers): a webhook URL, its logs and the
systems behind it are not places to copy personal data to, and an erased person must not
live on in them. Receivers fetch what they need through the API with their token.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

import msgspec
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler.models import (
    Event,
    FeedRun,
    Milestone,
    Notification,
    Registration,
    Subscription,
    Webhook,
    WebhookDelivery,
)
from scheduler.reminders import note_planned

EventType = Literal[
    "registration.created",
    "registration.cancelled",
    "registration.promoted",
    "event.moved",
    "event.cancelled",
    "reminder.failed",
    "feed.run_finished",
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
# Sent by POST /api/webhooks/{id}/test, whatever the webhook subscribed to.
PING = "ping"

_REGISTRATION_FIELDS = (
    "id",
    "event_id",
    "status",
    "hold_expires_at",
    "confirmed_at",
    "promoted_at",
    "cancelled_at",
    "created_at",
)
_ADDRESS = re.compile(r"[^\s<>\"'@,;:]+@[^\s<>\"'@,;:]+")


@dataclass(frozen=True, slots=True)
class Emission:
    """One thing that happened in a process, to be announced to its webhooks."""

    process_id: int
    type: str
    data: dict[str, Any]


def new_message_id() -> str:
    return "msg_" + uuid.uuid4().hex


def envelope(emission: Emission, message_id: str, now: datetime) -> str:
    """The JSON body every webhook subscribed to the event gets, on every attempt."""
    body = {
        "id": message_id,
        "type": emission.type,
        "created_at": now,
        "process_id": emission.process_id,
        "data": emission.data,
    }
    return msgspec.json.encode(body).decode("utf-8")


def delivery_row(
    webhook_id: int, message_id: str, event_type: str, payload: str, now: datetime
) -> dict[str, Any]:
    """The columns of a planned delivery, for a multi-row INSERT."""
    return {
        "webhook_id": webhook_id,
        "message_id": message_id,
        "event_type": event_type,
        "payload": payload,
        "status": "planned",
        "due_at": now,
        "attempts": 0,
        "last_error": "",
        "created_at": now,
    }


async def emit(session: AsyncSession, emissions: Sequence[Emission], now: datetime) -> int:
    """Plan a delivery of each emission to each active webhook of its process that wants
    its type, in the caller's transaction; the number planned. Without webhooks this
    costs one indexed query.

    On PostgreSQL the webhooks found are share-locked (FOR KEY SHARE) until the commit, so
    that one deleted meanwhile cannot make the whole change fail on the deliveries'
    foreign key: the deletion waits, then takes the new deliveries with it.
    """
    if not emissions:
        return 0
    hooks = (
        await session.execute(
            select(Webhook.id, Webhook.process_id, Webhook.event_types)
            .where(
                Webhook.process_id.in_({e.process_id for e in emissions}),
                Webhook.active.is_(True),
            )
            .with_for_update(read=True, key_share=True)
        )
    ).all()
    if not hooks:
        return 0
    rows: list[dict[str, Any]] = []
    for emission in emissions:
        wanted = [
            h.id
            for h in hooks
            if h.process_id == emission.process_id and emission.type in h.event_types
        ]
        if not wanted:
            continue
        message_id = new_message_id()
        payload = envelope(emission, message_id, now)
        rows += [delivery_row(hook, message_id, emission.type, payload, now) for hook in wanted]
    if rows:
        await session.execute(insert(WebhookDelivery), rows)
        note_planned(session, now)  # the caller's worker.arm() then wakes the sender
    return len(rows)


# --- Payloads ------------------------------------------------------------------------------


def registration_data(
    reg: Registration | Mapping[str, Any], position: int | None = None
) -> dict[str, Any]:
    """A registration without its person: ids, status and times only."""
    if isinstance(reg, Registration):
        values = {name: getattr(reg, name) for name in _REGISTRATION_FIELDS}
    else:
        values = {name: reg.get(name) for name in _REGISTRATION_FIELDS}
    values["waiting_list_position"] = position
    return {"registration": values}


def registration_event(reg: Registration, event_type: str) -> Emission:
    return Emission(reg.process_id, event_type, registration_data(reg))


def event_data(event: Event) -> dict[str, Any]:
    """An event's public fields, as GET /api/events/{id} shows them."""
    return {
        "id": event.id,
        "uid": event.uid,
        "parent_id": event.parent_id,
        "kind": event.kind,
        "title": event.title,
        "status": event.status,
        "time_zone": event.time_zone,
        "start": event.starts_at,
        "end": event.ends_at,
        "venue": event.venue,
        "online_url": event.online_url,
        "sequence": event.sequence,
        "url": f"/api/events/{event.id}",
    }


def event_moved(
    event: Event, old_start: datetime, old_end: datetime | None, moved_with: int | None
) -> Emission:
    """``moved_with``: the event whose move carried this one along (a cascade), if any."""
    data = {
        "event": event_data(event),
        "previous": {"start": old_start, "end": old_end},
        "moved_with_event_id": moved_with,
    }
    return Emission(event.process_id, "event.moved", data)


def event_cancelled(event: Event, previous_status: str) -> Emission:
    data = {"event": event_data(event), "previous_status": previous_status}
    return Emission(event.process_id, "event.cancelled", data)


def feed_run_finished(process_id: int, feed_name: str, run: FeedRun) -> Emission:
    data = {
        "feed": {"id": run.feed_id, "name": feed_name, "url": f"/api/feeds/{run.feed_id}"},
        "run": {
            "id": run.id,
            "outcome": run.outcome,
            "http_status": run.http_status,
            "new": run.new,
            "updated": run.updated,
            "unchanged": run.unchanged,
            "withdrawn": run.withdrawn,
            "quarantined": run.quarantined,
            "started_at": run.started_at,
            "finished_at": run.finished_at,
            "duration_ms": run.duration_ms,
            "error": run.error,
        },
    }
    return Emission(process_id, "feed.run_finished", data)


def ping(process_id: int, webhook_id: int) -> Emission:
    note = f"a test delivery, asked for with POST /api/webhooks/{webhook_id}/test"
    return Emission(process_id, PING, {"webhook_id": webhook_id, "note": note})


async def mails_failed(session: AsyncSession, notes: Sequence[Notification], now: datetime) -> int:
    """``reminder.failed`` for each message among ``notes`` that has just ended failed
    (a reminder or any other mail), to the webhooks of its process. The reason is kept
    without addresses (a mail server's refusal often quotes one)."""
    failed = [n for n in notes if n.status == "failed"]
    if not failed:
        return 0
    owners = await _processes_of(session, failed)
    emissions = []
    for note in failed:
        process_id = owners.get(note.id)
        if process_id is None:
            continue  # about no process (nothing a process's webhook could be told)
        data = {
            "message": {
                "id": note.id,
                "kind": note.kind,
                "status": note.status,
                "event_id": note.event_id,
                "milestone_id": note.milestone_id,
                "registration_id": note.registration_id,
                "subscription_id": note.subscription_id,
                "offset_minutes": note.offset_minutes,
                "due_at": note.due_at,
                "attempts": note.attempts,
                "reason": _without_addresses(note.last_error, note.recipient_email),
                "url": f"/api/notifications?event_id={note.event_id}"
                if note.event_id
                else "/api/notifications?status=failed",
            }
        }
        emissions.append(Emission(process_id, "reminder.failed", data))
    return await emit(session, emissions, now)


def _without_addresses(reason: str, recipient: str) -> str:
    if recipient:
        reason = reason.replace(recipient, "[address]")
    return _ADDRESS.sub("[address]", reason)[:500]


async def _processes_of(session: AsyncSession, notes: Sequence[Notification]) -> dict[int, int]:
    """The process each message is about: its event's, milestone's, registration's or
    subscription's (as GET /api/notifications decides who may see it)."""
    links = (
        (Event, "event_id"),
        (Milestone, "milestone_id"),
        (Registration, "registration_id"),
        (Subscription, "subscription_id"),
    )
    owners: dict[int, int] = {}
    for model, column in links:
        ids = {getattr(n, column) for n in notes if getattr(n, column) is not None}
        if not ids:
            continue
        result = await session.execute(select(model.id, model.process_id).where(model.id.in_(ids)))
        process_of: dict[int, int] = {row_id: process_id for row_id, process_id in result}
        for note in notes:
            linked = getattr(note, column)
            if note.id not in owners and linked in process_of:
                owners[note.id] = process_of[linked]
    return owners
