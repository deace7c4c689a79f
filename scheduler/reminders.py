"""Reminders: when they fall due, who gets them, and the ledger rows that plan them.

The pure rules come first (no I/O, ``now`` passed in, tested without a database); the
services after them take a session, flush and never commit.

Offsets are absolute durations: "1 hour before" is sixty real minutes before the start,
whatever the clocks do in between. So the 7-day reminder of a 10:00 New York event in the
week after the March change is due 7 x 24 hours earlier in UTC, which reads 09:00 on the
wall clock before the change. A wall-clock rule would make "1 hour before" last 0 or 2
hours on the night of a change.

Each reminder is one row per recipient and offset, with a stable ``dedupe_key``, its due
time and the ``basis`` it was planned against (the start and the sequence, plus the slot
for a speaker). Planning is reconciling: the rows that should exist are worked out from the
current state, and the stored ones are brought in line (inserted, re-timed, revived, or
cancelled with a reason); rows already sent (or failed, or on their way) are left alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler.mail_render import KINDS
from scheduler.models import (
    ACTIVE_STATUSES,
    EVENT_KINDS,
    SEAT_STATUSES,
    Event,
    Milestone,
    Notification,
    Organizer,
    Process,
    ProcessOrganizer,
    Registration,
    ReminderPolicy,
    SpeakerRequest,
    Subscription,
)
from scheduler.permissions import ORGANIZING_ROLES

DEFAULT_OFFSETS: tuple[int, ...] = (7 * 24 * 60, 24 * 60, 60)
MAX_OFFSETS = 10
MAX_OFFSET_MINUTES = 365 * 24 * 60
EVENT_AUDIENCES: tuple[str, ...] = ("registrants", "speakers", "organizers")
MILESTONE_AUDIENCES: tuple[str, ...] = ("subscribers", "organizers")
MILESTONE_POLICY = "milestone"  # the policy kind for a process's milestones
POLICY_KINDS: tuple[str, ...] = (*EVENT_KINDS, MILESTONE_POLICY)

EVENT_REMINDER_KINDS = ("event_reminder", "speaker_reminder", "organizer_reminder")
REGISTRANT_KINDS = ("event_reminder", "speaker_reminder")
REMINDER_KINDS = (*EVENT_REMINDER_KINDS, "milestone_reminder")
NOTICE_KINDS = ("event_changed", "event_cancelled", "event_postponed")
DIGEST_KIND = "reminder_digest"
DIGEST_WINDOW = timedelta(hours=1)
# Statuses a re-plan may bring back to planned; sent, sending and failed rows stay as they are.
REPLANNABLE = ("planned", "cancelled", "skipped")

_KIND_OF_AUDIENCE = {
    "registrants": "event_reminder",
    "speakers": "speaker_reminder",
    "organizers": "organizer_reminder",
    "subscribers": "milestone_reminder",
}
_AUDIENCE_OF_KIND = {
    "event_reminder": "registrants",
    "speaker_reminder": "speakers",
    "organizer_reminder": "organizers",
}
_CHUNK = 1000  # ids per IN list

Role = Literal["registration", "organizer", "subscription"]


# --- Pure rules ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Policy:
    """When (minutes before) and whom to remind."""

    offsets: tuple[int, ...]
    audiences: tuple[str, ...]


def default_policy(kind: str) -> Policy:
    """7 days, 1 day and 1 hour before, for everyone the kind of item has."""
    audiences = MILESTONE_AUDIENCES if kind == MILESTONE_POLICY else EVENT_AUDIENCES
    return Policy(DEFAULT_OFFSETS, audiences)


def resolve_policy(kind: str, override: Sequence[int] | None, stored: Policy | None) -> Policy:
    """The item's own offsets, else the process's policy for its kind, else the defaults.

    An override replaces the offsets only; who is reminded stays the policy's choice.
    """
    base = stored if stored is not None else default_policy(kind)
    if override is None:
        return base
    return Policy(tuple(override), base.audiences)


def plan(
    start: datetime, offsets_minutes: Iterable[int], now: datetime
) -> list[tuple[int, datetime]]:
    """(offset, due time) for each offset whose time has not passed, earliest first.

    Offsets are absolute durations, counted in UTC (see the module's docstring). A reminder
    due exactly now is kept: it goes out at once.
    """
    if start.tzinfo is None or now.tzinfo is None:
        raise ValueError("naive datetime")
    due = {
        offset: start.astimezone(UTC) - timedelta(minutes=offset)
        for offset in offsets_minutes
        if offset > 0
    }
    return sorted(((o, d) for o, d in due.items() if d >= now), key=lambda pair: pair[1])


def dedupe_key(audience: str, recipient: str, subject: str, offset: int) -> str:
    """One reminder per audience, recipient (``r12``, ``o3``, ``s5``), subject (``e4``,
    ``m9``) and offset: planning twice updates the row instead of adding one."""
    return f"reminder:{audience}:{recipient}:{subject}:{offset}"


def _stamp(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_basis(start: datetime, sequence: int, slot_start: datetime | None = None) -> str:
    """What an event reminder was planned against; a speaker's also names the slot."""
    basis = f"{_stamp(start)}#{sequence}"
    return f"{basis}|slot {_stamp(slot_start)}" if slot_start is not None else basis


def milestone_basis(due: datetime, sequence: int) -> str:
    return f"{_stamp(due)}#{sequence}"


def still_useful(due: datetime, start: datetime, now: datetime) -> bool:
    """A reminder is worth sending, however late, until what it announces has begun."""
    return due < start and now < start


def late_reason(kind: str) -> str:
    """Why a reminder that came due too late was skipped (recorded, never silent)."""
    if kind == "milestone_reminder":
        return "came due while the service was down; the deadline had passed"
    return "came due while the service was down; the event had started"


@dataclass(frozen=True, slots=True)
class Pending:
    """A reminder as the digest sees it: who gets it (grouping key) and when it is due."""

    id: int
    recipient: str
    due_at: datetime


def digest_groups(
    rows: Iterable[Pending], now: datetime, window: timedelta = DIGEST_WINDOW
) -> list[list[Pending]]:
    """Reminders per recipient in windows of ``window`` from the earliest: one mail each.

    A reminder already due counts as due ``now`` (it is going out now), so everything a
    person has due before ``now + window`` travels together. Groups come earliest first,
    each in due order.
    """
    by_recipient: dict[str, list[Pending]] = {}
    for row in sorted(rows, key=lambda r: (max(r.due_at, now), r.id)):
        by_recipient.setdefault(row.recipient, []).append(row)
    groups: list[list[Pending]] = []
    for members in by_recipient.values():
        current: list[Pending] = []
        opened: datetime | None = None
        for row in members:
            at = max(row.due_at, now)
            if opened is None or at >= opened + window:
                if current:
                    groups.append(current)
                current, opened = [], at
            current.append(row)
        if current:
            groups.append(current)
    groups.sort(key=lambda g: (max(g[0].due_at, now), g[0].id))
    return groups


@dataclass(frozen=True, slots=True)
class Person:
    """Someone a reminder goes to: a registrant, an organizer or a subscriber."""

    role: Role
    id: int
    email: str
    name: str
    language: str
    time_zone: str

    @property
    def ref(self) -> str:
        return f"{self.role[0]}{self.id}"


@dataclass(slots=True)
class Wanted:
    """A reminder row that should exist, as planning computes it."""

    key: str
    kind: str
    offset: int
    due_at: datetime
    basis: str
    person: Person
    context: dict[str, Any]
    event_id: int | None = None
    milestone_id: int | None = None

    def columns(self, now: datetime) -> dict[str, Any]:
        """Every column of a new planned row, for a multi-row INSERT."""
        p = self.person
        return planned_columns(
            kind=self.kind,
            person=p,
            context=self.context,
            due_at=self.due_at,
            now=now,
            registration_id=p.id if p.role == "registration" else None,
            event_id=self.event_id,
            milestone_id=self.milestone_id,
            subscription_id=p.id if p.role == "subscription" else None,
            organizer_id=p.id if p.role == "organizer" else None,
            offset_minutes=self.offset,
            basis=self.basis,
            dedupe_key=self.key,
        )


def planned_columns(
    *,
    kind: str,
    person: Person,
    context: dict[str, Any],
    due_at: datetime,
    now: datetime,
    registration_id: int | None = None,
    event_id: int | None = None,
    milestone_id: int | None = None,
    subscription_id: int | None = None,
    organizer_id: int | None = None,
    offset_minutes: int | None = None,
    basis: str = "",
    dedupe_key: str | None = None,
) -> dict[str, Any]:
    """The columns of a planned ledger row (the outbox's ``planned_row``, with the reminder
    columns too); one dict shape for every row, so rows go in with one multi-row INSERT."""
    if kind not in KINDS:
        raise ValueError(f"unknown notification kind {kind!r}")
    return {
        "kind": kind,
        "recipient_email": person.email,
        "recipient_name": person.name,
        "language": person.language[:8] or "en",
        "time_zone": person.time_zone or "UTC",
        "context": context,
        "registration_id": registration_id,
        "event_id": event_id,
        "milestone_id": milestone_id,
        "subscription_id": subscription_id,
        "organizer_id": organizer_id,
        "offset_minutes": offset_minutes,
        "basis": basis,
        "sent_with_id": None,
        "status": "planned",
        "reason": "",
        "due_at": due_at,
        "lease_until": None,
        "attempts": 0,
        "last_error": "",
        "message_id": "",
        "dedupe_key": dedupe_key,
        "created_at": now,
        "sent_at": None,
    }


def event_context(event: Event, process_name: str = "") -> dict[str, Any]:
    """What a reminder or notice says about its event (rendered later, by the sender)."""
    return {
        "event_title": event.title,
        "event_start": event.starts_at.isoformat(),
        "event_end": event.ends_at.isoformat(),
        "event_time_zone": event.time_zone,
        "venue": event.venue,
        "online_url": event.online_url,
        "process_name": process_name,
    }


def milestone_context(milestone: Milestone, process_name: str = "") -> dict[str, Any]:
    return {
        "milestone_title": milestone.title,
        "due": milestone.due_at.isoformat(),
        "event_time_zone": milestone.time_zone,
        "process_name": process_name,
    }


def event_reminders(
    event: Event,
    policy: Policy,
    person: Person,
    audience: str,
    now: datetime,
    *,
    slot: tuple[datetime, datetime] | None = None,
    process_name: str = "",
) -> list[Wanted]:
    """The reminders of one event for one person (none unless it is published)."""
    if event.status != "published" or audience not in policy.audiences:
        return []
    context = event_context(event, process_name)
    if slot is not None:
        context["slot_start"] = slot[0].isoformat()
        context["slot_end"] = slot[1].isoformat()
    basis = event_basis(event.starts_at, event.sequence, slot[0] if slot else None)
    return [
        Wanted(
            key=dedupe_key(audience, person.ref, f"e{event.id}", offset),
            kind=_KIND_OF_AUDIENCE[audience],
            offset=offset,
            due_at=due,
            basis=basis,
            person=person,
            context=context,
            event_id=event.id,
        )
        for offset, due in plan(event.starts_at, policy.offsets, now)
    ]


def milestone_reminders(
    milestone: Milestone,
    policy: Policy,
    person: Person,
    audience: str,
    now: datetime,
    *,
    process_name: str = "",
) -> list[Wanted]:
    if milestone.status != "published" or audience not in policy.audiences:
        return []
    context = milestone_context(milestone, process_name)
    basis = milestone_basis(milestone.due_at, milestone.sequence)
    return [
        Wanted(
            key=dedupe_key(audience, person.ref, f"m{milestone.id}", offset),
            kind="milestone_reminder",
            offset=offset,
            due_at=due,
            basis=basis,
            person=person,
            context=context,
            milestone_id=milestone.id,
        )
        for offset, due in plan(milestone.due_at, policy.offsets, now)
    ]


def registrant_audience(policy: Policy, speaking: bool) -> str | None:
    """A selected speaker gets the speaker variant (with the slot) instead of the plain one."""
    if speaking and "speakers" in policy.audiences:
        return "speakers"
    return "registrants" if "registrants" in policy.audiences else None


def person_of(row: Registration | Organizer | Subscription) -> Person:
    if isinstance(row, Registration):
        role: Role = "registration"
    elif isinstance(row, Organizer):
        role = "organizer"
    else:
        role = "subscription"
    return Person(role, row.id, row.email, row.name, row.language, row.time_zone)


# --- Services: policies -------------------------------------------------------------------


# Built once: read for every batch of registrations (registrations.register_many).
_POLICIES = select(ReminderPolicy).where(
    ReminderPolicy.process_id.in_(bindparam("process_ids", expanding=True))
)


async def stored_policies(
    session: AsyncSession, process_ids: Iterable[int]
) -> dict[tuple[int, str], Policy]:
    rows = await session.scalars(_POLICIES, {"process_ids": sorted(set(process_ids))})
    return {(p.process_id, p.kind): Policy(tuple(p.offsets), tuple(p.audiences)) for p in rows}


async def policies_for_events(session: AsyncSession, events: Iterable[Event]) -> dict[int, Policy]:
    """Each event's policy, with one query for all of them (none for no event)."""
    events = list(events)
    if not events:
        return {}
    stored = await stored_policies(session, {e.process_id for e in events})
    return {
        e.id: resolve_policy(e.kind, e.reminder_offsets, stored.get((e.process_id, e.kind)))
        for e in events
    }


async def policies_for_milestones(
    session: AsyncSession, milestones: Iterable[Milestone]
) -> dict[int, Policy]:
    milestones = list(milestones)
    stored = await stored_policies(session, {m.process_id for m in milestones})
    return {
        m.id: resolve_policy(
            MILESTONE_POLICY, m.reminder_offsets, stored.get((m.process_id, MILESTONE_POLICY))
        )
        for m in milestones
    }


# --- Services: reconciling the ledger -----------------------------------------------------

ARM_KEY = "reminders.earliest_due"


def earliest_planned(session: AsyncSession) -> datetime | None:
    """The earliest due time planned in this session's transaction (for the sender's clock)."""
    value = session.info.get(ARM_KEY)
    return value if isinstance(value, datetime) else None


def note_planned(session: AsyncSession, due: datetime) -> None:
    """Remember that this transaction planned a message due at ``due``."""
    current = earliest_planned(session)
    if current is None or due < current:
        session.info[ARM_KEY] = due


@dataclass(frozen=True, slots=True)
class Stored:
    """A reminder row as reconciling sees it."""

    id: int
    key: str
    kind: str
    status: str
    offset: int | None
    registration_id: int | None
    organizer_id: int | None
    subscription_id: int | None
    milestone_id: int | None


async def reconcile(
    session: AsyncSession,
    scope: ColumnElement[bool],
    wanted: Sequence[Wanted],
    now: datetime,
    reason: Callable[[Stored], str],
) -> None:
    """Bring the reminder rows in ``scope`` in line with ``wanted``.

    New rows go in with one multi-row INSERT; rows that are still planned (or were cancelled
    or skipped) get the new due time, basis and text; planned rows no longer wanted are
    cancelled with ``reason(row)``. Sent, failed and in-flight rows are never touched.
    """
    result = await session.execute(
        select(
            Notification.id,
            Notification.dedupe_key,
            Notification.kind,
            Notification.status,
            Notification.offset_minutes,
            Notification.registration_id,
            Notification.organizer_id,
            Notification.subscription_id,
            Notification.milestone_id,
        ).where(scope, Notification.kind.in_(REMINDER_KINDS))
    )
    existing = {
        key: Stored(id_, key, kind, status, offset, reg_id, org_id, sub_id, ms_id)
        for id_, key, kind, status, offset, reg_id, org_id, sub_id, ms_id in result
        if key is not None
    }
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    keys = set()
    for w in wanted:
        keys.add(w.key)
        row = existing.get(w.key)
        if row is None:
            inserts.append(w.columns(now))
        elif row.status in REPLANNABLE:
            p = w.person
            updates.append(
                {
                    "id": row.id,
                    "status": "planned",
                    "reason": "",
                    "due_at": w.due_at,
                    "basis": w.basis,
                    "context": w.context,
                    "recipient_email": p.email,
                    "recipient_name": p.name,
                    "language": p.language[:8] or "en",
                    "time_zone": p.time_zone or "UTC",
                    "lease_until": None,
                    "sent_with_id": None,
                    "last_error": "",
                }
            )
        else:
            continue
        note_planned(session, w.due_at)
    gone = [
        {"id": row.id, "status": "cancelled", "reason": reason(row)[:500]}
        for key, row in existing.items()
        if row.status == "planned" and key not in keys
    ]
    if inserts:
        await session.execute(insert(Notification), inserts)
    for batch in (updates, gone):
        if batch:
            await session.execute(update(Notification), batch)


def _chunks(ids: Sequence[int]) -> Iterable[list[int]]:
    for start in range(0, len(ids), _CHUNK):
        yield list(ids[start : start + _CHUNK])


async def _process_name(session: AsyncSession, process_id: int) -> str:
    name = await session.scalar(select(Process.name).where(Process.id == process_id))
    return name or ""


async def _organizers(session: AsyncSession, process_id: int) -> list[Organizer]:
    """The process's organizers and owners that have an address for reminders (viewers
    only read)."""
    rows = await session.scalars(
        select(Organizer)
        .join(ProcessOrganizer, ProcessOrganizer.organizer_id == Organizer.id)
        .where(
            ProcessOrganizer.process_id == process_id,
            ProcessOrganizer.role.in_(ORGANIZING_ROLES),
            Organizer.email != "",
        )
        .order_by(Organizer.id)
    )
    return list(rows)


async def _slots(
    session: AsyncSession, registration_ids: Sequence[int]
) -> dict[int, tuple[datetime, datetime]]:
    """Selected speakers' slots, by registration."""
    slots: dict[int, tuple[datetime, datetime]] = {}
    for chunk in _chunks(registration_ids):
        rows = await session.execute(
            select(
                SpeakerRequest.registration_id, SpeakerRequest.slot_start, SpeakerRequest.slot_end
            ).where(
                SpeakerRequest.registration_id.in_(chunk),
                SpeakerRequest.status == "selected",
                SpeakerRequest.slot_start.is_not(None),
                SpeakerRequest.slot_end.is_not(None),
            )
        )
        for registration_id, start, end in rows:
            if start is not None and end is not None:
                slots[registration_id] = (start, end)
    return slots


@dataclass
class _EventPlan:
    """Who should be reminded of one event, for reconciling and for naming reasons."""

    event: Event
    policy: Policy
    registrations: dict[int, Registration] = field(default_factory=dict)
    slots: dict[int, tuple[datetime, datetime]] = field(default_factory=dict)
    organizers: dict[int, Organizer] = field(default_factory=dict)

    def wanted(self, now: datetime, process_name: str) -> list[Wanted]:
        rows: list[Wanted] = []
        for reg in self.registrations.values():
            if reg.status != "confirmed":
                continue
            slot = self.slots.get(reg.id)
            audience = registrant_audience(self.policy, slot is not None)
            if audience is not None:
                rows += event_reminders(
                    self.event,
                    self.policy,
                    person_of(reg),
                    audience,
                    now,
                    slot=slot if audience == "speakers" else None,
                    process_name=process_name,
                )
        for organizer in self.organizers.values():
            rows += event_reminders(
                self.event,
                self.policy,
                person_of(organizer),
                "organizers",
                now,
                process_name=process_name,
            )
        return rows

    def reason(self, row: Stored) -> str:
        """Why a planned reminder of this event is no longer wanted."""
        event = self.event
        if event.status != "published":
            return f"the event is {event.status}"
        if row.registration_id is not None:
            reg = self.registrations.get(row.registration_id)
            if reg is None or reg.status != "confirmed":
                status = reg.status if reg is not None else "no longer confirmed"
                return f"the registration is {status}"
            speaking = registrant_audience(self.policy, row.registration_id in self.slots)
            if row.kind == "speaker_reminder" and speaking != "speakers":
                return "no longer speaking: the registrant reminder replaces it"
            if row.kind == "event_reminder" and speaking == "speakers":
                return "replaced by the speaker reminder"
        if row.organizer_id is not None and row.organizer_id not in self.organizers:
            return "no longer an organizer of this process with an address for reminders"
        if row.offset not in self.policy.offsets:
            return "no longer in the reminder policy"
        kind_audience = _AUDIENCE_OF_KIND.get(row.kind, "")
        if kind_audience and kind_audience not in self.policy.audiences:
            return f"{kind_audience} are not reminded under the current policy"
        return "its time had already passed when it was planned again"


async def sync_registrations(
    session: AsyncSession, event: Event, registrations: Sequence[Registration], now: datetime
) -> None:
    """Plan, re-plan or cancel the reminders of these registrations of ``event``.

    Confirmed seat holders are reminded at the event's offsets; a selected speaker gets
    the speaker variant with the slot. Anyone else's unsent reminders are cancelled with
    the reason (cancelled, expired, rejected...).
    """
    await session.flush()
    policy = (await policies_for_events(session, [event]))[event.id]
    for chunk in _chunks([r.id for r in registrations]):
        ids = set(chunk)
        regs = {r.id: r for r in registrations if r.id in ids}
        todo = _EventPlan(event, policy, regs, await _slots(session, chunk))
        await reconcile(
            session,
            Notification.registration_id.in_(chunk) & Notification.kind.in_(REGISTRANT_KINDS),
            todo.wanted(now, ""),
            now,
            todo.reason,
        )


async def plan_for_registration(
    session: AsyncSession, reg: Registration, event: Event, now: datetime
) -> None:
    """A registration's reminders after any change to it (confirm, cancel, slot...)."""
    await sync_registrations(session, event, [reg], now)


async def cancel_for_registrations(
    session: AsyncSession, registration_ids: Sequence[int], reason: str
) -> None:
    """Cancel the unsent reminders of registrations that lost their seat."""
    for chunk in _chunks(list(registration_ids)):
        await session.execute(
            update(Notification)
            .where(
                Notification.registration_id.in_(chunk),
                Notification.kind.in_(REMINDER_KINDS),
                Notification.status == "planned",
            )
            .values(status="cancelled", reason=reason[:500])
            .execution_options(synchronize_session=False)
        )


async def cancel_for_registration(session: AsyncSession, reg: Registration, reason: str) -> None:
    await cancel_for_registrations(session, [reg.id], reason)


async def sync_event(session: AsyncSession, event: Event, now: datetime) -> None:
    """Bring every reminder of an event in line: registrants, speakers and organizers.

    After any change to the event: new due times and basis for the unsent rows, and the
    rows of a cancelled, postponed or unpublished event cancelled with the reason.
    """
    await session.flush()
    policy = (await policies_for_events(session, [event]))[event.id]
    regs = {
        r.id: r
        for r in await session.scalars(
            select(Registration).where(
                Registration.event_id == event.id, Registration.status == "confirmed"
            )
        )
    }
    todo = _EventPlan(
        event,
        policy,
        regs,
        await _slots(session, list(regs)),
        {o.id: o for o in await _organizers(session, event.process_id)},
    )
    wanted = todo.wanted(now, await _process_name(session, event.process_id))
    await reconcile(
        session,
        (Notification.event_id == event.id) & Notification.kind.in_(EVENT_REMINDER_KINDS),
        wanted,
        now,
        todo.reason,
    )


async def _tell_registrants(
    session: AsyncSession, event: Event, kind: str, statuses: Sequence[str], now: datetime
) -> int:
    """One notice per registration in ``statuses``; an unsent earlier notice is superseded,
    so a person hears once about the latest state, not once per change."""
    await session.execute(
        update(Notification)
        .where(
            Notification.event_id == event.id,
            Notification.kind.in_(NOTICE_KINDS),
            Notification.status == "planned",
        )
        .values(status="cancelled", reason=f"superseded by {kind}")
        .execution_options(synchronize_session=False)
    )
    regs = await session.scalars(
        select(Registration)
        .where(Registration.event_id == event.id, Registration.status.in_(statuses))
        .order_by(Registration.id)
    )
    context = event_context(event)
    rows = [
        planned_columns(
            kind=kind,
            person=person_of(r),
            context=context,
            due_at=now,
            now=now,
            registration_id=r.id,
            event_id=event.id,
        )
        for r in regs
    ]
    if rows:
        await session.execute(insert(Notification), rows)
        note_planned(session, now)
    return len(rows)


async def replan_event(session: AsyncSession, event: Event, now: datetime) -> int:
    """After a move: re-plan every unsent reminder, and queue one change notice (with the
    updated calendar entry) per seat holder. The number of notices."""
    await sync_event(session, event, now)
    if event.status != "published":
        return 0
    return await _tell_registrants(session, event, "event_changed", SEAT_STATUSES, now)


async def cancel_event_reminders(
    session: AsyncSession, event: Event, now: datetime, status: str
) -> int:
    """The event was cancelled or postponed: unsent reminders are cancelled with the reason
    and everyone registered (waiting too) is told once. The number of notices."""
    if event.status != status:
        raise ValueError(f"the event is {event.status}, not {status}")
    await sync_event(session, event, now)
    return await _tell_registrants(session, event, f"event_{status}", ACTIVE_STATUSES, now)


async def cancel_all(session: AsyncSession, scope: ColumnElement[bool], reason: str) -> None:
    """Cancel every unsent reminder and notice in ``scope`` (before a delete, for one)."""
    await session.execute(
        update(Notification)
        .where(
            scope,
            Notification.kind.in_((*REMINDER_KINDS, *NOTICE_KINDS)),
            Notification.status == "planned",
        )
        .values(status="cancelled", reason=reason[:500])
        .execution_options(synchronize_session=False)
    )


def registration_rows(
    event: Event, policy: Policy, registration_id: int, row: dict[str, Any], now: datetime
) -> list[dict[str, Any]]:
    """The reminder rows of a brand-new registration (the bulk path's multi-row INSERT)."""
    if row["status"] != "confirmed" or "registrants" not in policy.audiences:
        return []
    person = Person(
        "registration",
        registration_id,
        row["email"],
        row["name"],
        row["language"],
        row["time_zone"],
    )
    return [w.columns(now) for w in event_reminders(event, policy, person, "registrants", now)]


# --- Services: milestones, subscribers, organizers ----------------------------------------


async def _active_subscriptions(session: AsyncSession, process_id: int) -> list[Subscription]:
    rows = await session.scalars(
        select(Subscription)
        .where(Subscription.process_id == process_id, Subscription.status == "active")
        .order_by(Subscription.id)
    )
    return list(rows)


async def sync_milestone(session: AsyncSession, milestone: Milestone, now: datetime) -> None:
    """Reminders of a deadline for the process's subscribers and organizers."""
    await session.flush()
    policy = (await policies_for_milestones(session, [milestone]))[milestone.id]
    name = await _process_name(session, milestone.process_id)
    subscribers = {s.id: s for s in await _active_subscriptions(session, milestone.process_id)}
    organizers = {o.id: o for o in await _organizers(session, milestone.process_id)}
    wanted: list[Wanted] = []
    for sub in subscribers.values():
        wanted += milestone_reminders(
            milestone, policy, person_of(sub), "subscribers", now, process_name=name
        )
    for organizer in organizers.values():
        wanted += milestone_reminders(
            milestone, policy, person_of(organizer), "organizers", now, process_name=name
        )

    def reason(row: Stored) -> str:
        if milestone.status != "published":
            return f"the milestone is {milestone.status}"
        if row.subscription_id is not None and row.subscription_id not in subscribers:
            return "no longer subscribed"
        if row.organizer_id is not None and row.organizer_id not in organizers:
            return "no longer an organizer of this process with an address for reminders"
        if row.offset not in policy.offsets:
            return "no longer in the reminder policy"
        return "its time had already passed when it was planned again"

    await reconcile(session, Notification.milestone_id == milestone.id, wanted, now, reason)


async def _upcoming_milestones(
    session: AsyncSession, process_ids: Iterable[int], now: datetime
) -> list[Milestone]:
    rows = await session.scalars(
        select(Milestone)
        .where(
            Milestone.process_id.in_(set(process_ids)),
            Milestone.status == "published",
            Milestone.due_at > now,
        )
        .order_by(Milestone.due_at, Milestone.id)
    )
    return list(rows)


async def sync_subscription(session: AsyncSession, sub: Subscription, now: datetime) -> None:
    """A subscriber's reminders: every published upcoming deadline while active, none else."""
    await session.flush()
    milestones = (
        await _upcoming_milestones(session, [sub.process_id], now) if sub.status == "active" else []
    )
    policies = await policies_for_milestones(session, milestones)
    name = await _process_name(session, sub.process_id)
    person = person_of(sub)
    wanted: list[Wanted] = []
    for m in milestones:
        wanted += milestone_reminders(
            m, policies[m.id], person, "subscribers", now, process_name=name
        )
    planned_for = {m.id for m in milestones}

    def reason(row: Stored) -> str:
        if sub.status == "unsubscribed":
            return "unsubscribed"
        if sub.status != "active":
            return f"the subscription is {sub.status}"
        if row.milestone_id not in planned_for:
            return "the deadline is no longer published and upcoming"
        return "no longer in the reminder policy"

    await reconcile(session, Notification.subscription_id == sub.id, wanted, now, reason)


async def sync_organizer(session: AsyncSession, organizer: Organizer, now: datetime) -> None:
    """An organizer's reminders for the upcoming events and deadlines of the processes they
    organize or own (none for those they only view)."""
    await session.flush()
    process_ids = set(
        await session.scalars(
            select(ProcessOrganizer.process_id).where(
                ProcessOrganizer.organizer_id == organizer.id,
                ProcessOrganizer.role.in_(ORGANIZING_ROLES),
            )
        )
    )
    events: list[Event] = []
    milestones: list[Milestone] = []
    if organizer.email and process_ids:
        events = list(
            await session.scalars(
                select(Event)
                .where(
                    Event.process_id.in_(process_ids),
                    Event.status == "published",
                    Event.starts_at > now,
                )
                .order_by(Event.starts_at, Event.id)
            )
        )
        milestones = await _upcoming_milestones(session, process_ids, now)
    names = {
        pid: name
        for pid, name in await session.execute(
            select(Process.id, Process.name).where(Process.id.in_(process_ids))
        )
    }
    event_policies = await policies_for_events(session, events)
    milestone_policies = await policies_for_milestones(session, milestones)
    person = person_of(organizer)
    wanted: list[Wanted] = []
    for e in events:
        wanted += event_reminders(
            e, event_policies[e.id], person, "organizers", now, process_name=names[e.process_id]
        )
    for m in milestones:
        wanted += milestone_reminders(
            m,
            milestone_policies[m.id],
            person,
            "organizers",
            now,
            process_name=names[m.process_id],
        )

    def reason(_: Stored) -> str:
        if not organizer.email:
            return "the organizer has no address for reminders"
        return "no longer planned for this organizer"

    await reconcile(session, Notification.organizer_id == organizer.id, wanted, now, reason)


async def sync_process(session: AsyncSession, process_id: int, now: datetime) -> None:
    """Every upcoming event and deadline of a process (after its policies changed)."""
    events = await session.scalars(
        select(Event).where(
            Event.process_id == process_id, Event.status == "published", Event.starts_at > now
        )
    )
    for event in list(events):
        await sync_event(session, event, now)
    for milestone in await _upcoming_milestones(session, [process_id], now):
        await sync_milestone(session, milestone, now)
