"""Checks at send time: a reminder goes out only while it still tells the truth.

The outbox sender runs ``screen`` on each claimed batch, inside the claiming transaction,
with a handful of batch queries (never one per row):

- a reminder whose basis (start and sequence, plus the slot for a speaker) no longer
  matches its event or deadline, whose event is no longer published, or whose recipient no
  longer qualifies (registration cancelled, unsubscribed) is cancelled with the reason;
- one that came due too late to help (the event has begun: the service was down) is
  skipped with the reason, so nothing is ever dropped silently;
- several overdue reminders of the same thing for the same person (the 7-day and the 1-day
  reminders, after a long outage) would only repeat each other: the latest is sent and the
  others are skipped with the reason;
- several reminders for one person due within the hour go out as one digest: a new
  ``reminder_digest`` row carries them, and each points at it through ``sent_with_id``.
  They wait as ``sending`` (without a lease of their own) and follow the carrier: sent
  when it is sent, failed when it fails for good, checked again when it is retried.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler.mail_render import message_id_for
from scheduler.models import (
    Event,
    Milestone,
    Notification,
    Organizer,
    Registration,
    SpeakerRequest,
    Subscription,
)
from scheduler.reminders import (
    DIGEST_KIND,
    DIGEST_WINDOW,
    REGISTRANT_KINDS,
    REMINDER_KINDS,
    Pending,
    digest_groups,
    event_basis,
    late_reason,
    milestone_basis,
    still_useful,
)

SEND = "send"


@dataclass
class Facts:
    """The current state a batch of reminders is checked against."""

    events: dict[int, Event] = field(default_factory=dict)
    milestones: dict[int, Milestone] = field(default_factory=dict)
    registrations: dict[int, str] = field(default_factory=dict)  # id -> status
    slots: dict[int, datetime] = field(default_factory=dict)  # registration id -> slot start
    subscriptions: dict[int, str] = field(default_factory=dict)  # id -> status
    organizers: set[int] = field(default_factory=set)


def verdict(note: Notification, facts: Facts, now: datetime) -> tuple[str, str]:
    """``("send", "")``, or the status (cancelled, skipped) and reason of a reminder that
    must not go out. Pure: the facts are loaded by the caller."""
    if note.kind == "milestone_reminder":
        milestone = facts.milestones.get(note.milestone_id or 0)
        if milestone is None:
            return "cancelled", "basis changed: the deadline no longer exists"
        if milestone.status != "published":
            return "cancelled", f"basis changed: the deadline is {milestone.status}"
        current = milestone_basis(milestone.due_at, milestone.sequence)
        start = milestone.due_at
    else:
        event = facts.events.get(note.event_id or 0)
        if event is None:
            return "cancelled", "basis changed: the event no longer exists"
        if event.status != "published":
            return "cancelled", f"basis changed: the event is {event.status}"
        slot = facts.slots.get(note.registration_id or 0)
        current = event_basis(
            event.starts_at, event.sequence, slot if note.kind == "speaker_reminder" else None
        )
        start = event.starts_at
    problem = _recipient_problem(note, facts)
    if problem:
        return "cancelled", problem
    if note.basis != current:
        return "cancelled", "basis changed"
    if not still_useful(note.due_at, start, now):
        return "skipped", late_reason(note.kind)
    return SEND, ""


def _recipient_problem(note: Notification, facts: Facts) -> str:
    if note.kind in REGISTRANT_KINDS:
        status = facts.registrations.get(note.registration_id or 0)
        if status != "confirmed":
            return f"the registration is {status or 'gone'}"
    if note.subscription_id is not None:
        status = facts.subscriptions.get(note.subscription_id)
        if status != "active":
            return "unsubscribed" if status == "unsubscribed" else "the subscription is not active"
    to_organizer = note.kind == "organizer_reminder" or (
        note.kind == "milestone_reminder" and note.subscription_id is None
    )
    if to_organizer and note.organizer_id not in facts.organizers:
        return "the organizer no longer exists"
    return ""


async def load_facts(session: AsyncSession, notes: Iterable[Notification]) -> Facts:
    """Everything ``verdict`` needs for these rows, in at most six queries."""
    notes = list(notes)
    facts = Facts()
    event_ids = {n.event_id for n in notes if n.event_id is not None}
    milestone_ids = {n.milestone_id for n in notes if n.milestone_id is not None}
    registration_ids = {n.registration_id for n in notes if n.registration_id is not None}
    speaker_ids = {
        n.registration_id
        for n in notes
        if n.kind == "speaker_reminder" and n.registration_id is not None
    }
    subscription_ids = {n.subscription_id for n in notes if n.subscription_id is not None}
    organizer_ids = {n.organizer_id for n in notes if n.organizer_id is not None}
    if event_ids:
        rows = await session.scalars(select(Event).where(Event.id.in_(event_ids)))
        facts.events = {e.id: e for e in rows}
    if milestone_ids:
        rows_m = await session.scalars(select(Milestone).where(Milestone.id.in_(milestone_ids)))
        facts.milestones = {m.id: m for m in rows_m}
    if registration_ids:
        result = await session.execute(
            select(Registration.id, Registration.status).where(
                Registration.id.in_(registration_ids)
            )
        )
        facts.registrations = {i: status for i, status in result}
    if speaker_ids:
        result_s = await session.execute(
            select(SpeakerRequest.registration_id, SpeakerRequest.slot_start).where(
                SpeakerRequest.registration_id.in_(speaker_ids),
                SpeakerRequest.status == "selected",
            )
        )
        facts.slots = {r: s for r, s in result_s if s is not None}
    if subscription_ids:
        result_sub = await session.execute(
            select(Subscription.id, Subscription.status).where(
                Subscription.id.in_(subscription_ids)
            )
        )
        facts.subscriptions = {i: status for i, status in result_sub}
    if organizer_ids:
        facts.organizers = set(
            await session.scalars(select(Organizer.id).where(Organizer.id.in_(organizer_ids)))
        )
    return facts


def digest_key(note: Notification) -> str:
    """One digest per address, and per subscription: a digest's one-click unsubscribe must
    stop exactly the reminders it carries."""
    return f"{note.recipient_email.strip().lower()}|{note.subscription_id or ''}"


def digest_context(notes: Sequence[Notification]) -> dict[str, Any]:
    """What the digest lists: each reminder's title and time (the slot for a speaker)."""
    items = []
    for n in sorted(notes, key=lambda n: (str(_start_of(n)), n.id)):
        ctx = n.context or {}
        items.append(
            {
                "id": n.id,
                "kind": n.kind,
                "title": ctx.get("milestone_title") or ctx.get("event_title") or "",
                "start": ctx.get("due") or ctx.get("event_start"),
                "end": None if n.kind == "milestone_reminder" else ctx.get("event_end"),
                "slot_start": ctx.get("slot_start"),
                "slot_end": ctx.get("slot_end"),
            }
        )
    return {"items": items}


def _start_of(note: Notification) -> object:
    ctx = note.context or {}
    return ctx.get("due") or ctx.get("event_start") or ""


def _drop(note: Notification, status: str, reason: str, *, claimed: bool) -> None:
    note.status = status
    note.reason = reason[:500]
    note.lease_until = None
    note.sent_with_id = None
    if claimed:
        note.attempts = max(note.attempts - 1, 0)  # never tried: not an attempt


def _only(values: Iterable[int | None]) -> int | None:
    distinct = set(values)
    return distinct.pop() if len(distinct) == 1 else None


async def screen(
    session: AsyncSession,
    rows: list[Notification],
    now: datetime,
    *,
    lease_until: datetime,
    is_sqlite: bool,
    mail_from: str,
) -> list[Notification]:
    """Of the rows just claimed, the ones to send: stale reminders cancelled, late ones
    skipped, and each person's reminders due within the hour folded into one digest."""
    reminders = [n for n in rows if n.kind in REMINDER_KINDS]
    carriers = [n for n in rows if n.kind == DIGEST_KIND]
    send = [n for n in rows if n.kind not in REMINDER_KINDS and n.kind != DIGEST_KIND]
    if not reminders and not carriers:
        return rows
    members: dict[int, list[Notification]] = {}
    if carriers:
        for m in await session.scalars(
            select(Notification)
            .where(
                Notification.sent_with_id.in_([c.id for c in carriers]),
                Notification.status == "sending",
            )
            .order_by(Notification.due_at, Notification.id)
        ):
            members.setdefault(m.sent_with_id or 0, []).append(m)
    extras = await _due_soon(session, reminders, now, is_sqlite)
    facts = await load_facts(
        session, [*reminders, *extras, *(m for ms in members.values() for m in ms)]
    )

    claimed = {n.id for n in reminders}
    ready: list[Notification] = []
    for note in [*reminders, *extras]:
        status, reason = verdict(note, facts, now)
        if status == SEND:
            ready.append(note)
        else:
            _drop(note, status, reason, claimed=note.id in claimed)
    ready = _one_per_subject(ready, claimed, now)
    by_id = {n.id: n for n in ready}
    formed: list[tuple[Notification, list[Notification]]] = []
    groups = digest_groups([Pending(n.id, digest_key(n), n.due_at) for n in ready], now)
    for group in groups:
        notes = [by_id[p.id] for p in group]
        if not any(n.id in claimed for n in notes):
            continue  # nothing in it is due yet: it stays planned
        if len(notes) == 1:
            send.append(notes[0])
            continue
        carrier = Notification(
            kind=DIGEST_KIND,
            recipient_email=notes[0].recipient_email,
            recipient_name=notes[0].recipient_name,
            language=notes[0].language,
            time_zone=notes[0].time_zone,
            context=digest_context(notes),
            registration_id=_only(n.registration_id for n in notes),
            subscription_id=_only(n.subscription_id for n in notes),
            organizer_id=_only(n.organizer_id for n in notes),
            # Filed under its first reminder's event or deadline (the ledger lists it there).
            event_id=notes[0].event_id,
            milestone_id=notes[0].milestone_id,
            status="sending",
            reason="",
            due_at=now,
            lease_until=lease_until,
            attempts=1,
            last_error="",
            message_id="",
            basis="",
        )
        session.add(carrier)
        formed.append((carrier, notes))

    for carrier in carriers:
        live = []
        for m in members.get(carrier.id, []):
            status, reason = verdict(m, facts, now)
            if status == SEND:
                live.append(m)
            else:
                _drop(m, status, reason, claimed=False)
        if live:
            carrier.context = digest_context(live)
            send.append(carrier)
        else:
            _drop(
                carrier, "cancelled", "every reminder in it was cancelled or skipped", claimed=True
            )

    await session.flush()
    for carrier, notes in formed:
        carrier.message_id = message_id_for(carrier.id, carrier.created_at, mail_from)
        for n in notes:
            n.status = "sending"
            n.lease_until = None  # not claimable alone: it travels with the carrier
            n.sent_with_id = carrier.id
            n.reason = f"in digest {carrier.id}"
            if n.id in claimed:
                n.attempts = max(n.attempts - 1, 0)
        send.append(carrier)
    await session.flush()
    send.sort(key=lambda n: (n.due_at, n.id))
    return send


def subject_key(note: Notification) -> tuple[str, str, int | None, int | None]:
    """Who is reminded of what: one person, one kind of reminder, one event or deadline."""
    return (digest_key(note), note.kind, note.event_id, note.milestone_id)


def _one_per_subject(
    ready: list[Notification], claimed: set[int], now: datetime
) -> list[Notification]:
    """Of overdue reminders of one subject keep the latest (skip the others with the reason);
    a later one not due yet waits for its own time instead of joining a digest."""
    overdue: dict[tuple[str, str, int | None, int | None], list[Notification]] = {}
    for note in sorted(ready, key=lambda n: (n.due_at, n.id)):
        if note.due_at <= now:
            overdue.setdefault(subject_key(note), []).append(note)
    dropped: set[int] = set()
    for notes in overdue.values():
        for note in notes[:-1]:
            _drop(
                note,
                "skipped",
                "a later reminder of the same item came due at the same time",
                claimed=note.id in claimed,
            )
            dropped.add(note.id)
    keep = [n for n in ready if n.id not in dropped]
    due_now = {subject_key(n) for n in keep if n.due_at <= now}
    return [n for n in keep if n.due_at <= now or subject_key(n) not in due_now]


async def _due_soon(
    session: AsyncSession, reminders: list[Notification], now: datetime, is_sqlite: bool
) -> list[Notification]:
    """Planned reminders for the same people due within the digest window."""
    emails = {n.recipient_email for n in reminders}
    if not emails:
        return []
    # Looked up by recipient: "status || ''" keeps both planners off the (status, due_at)
    # index, which in a wave would read every row due within the hour for each batch.
    stmt = (
        select(Notification)
        .where(
            Notification.recipient_email.in_(emails),
            Notification.status.concat("") == "planned",
            Notification.kind.in_(REMINDER_KINDS),
            Notification.due_at < now + DIGEST_WINDOW,
        )
        .order_by(Notification.due_at, Notification.id)
    )
    if not is_sqlite:
        stmt = stmt.with_for_update(skip_locked=True)
    return list(await session.scalars(stmt))


async def settle_digests(
    session: AsyncSession, carriers: Sequence[Notification], now: datetime
) -> None:
    """Members follow their carrier: sent with it, or failed with its error."""
    sent = [c.id for c in carriers if c.kind == DIGEST_KIND and c.status == "sent"]
    if sent:
        await session.execute(
            update(Notification)
            .where(Notification.sent_with_id.in_(sent), Notification.status == "sending")
            .values(status="sent", sent_at=now)
            .execution_options(synchronize_session=False)
        )
    for carrier in carriers:
        if carrier.kind == DIGEST_KIND and carrier.status == "failed":
            await session.execute(
                update(Notification)
                .where(Notification.sent_with_id == carrier.id, Notification.status == "sending")
                .values(status="failed", last_error=carrier.last_error)
                .execution_options(synchronize_session=False)
            )
