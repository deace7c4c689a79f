"""Requests to speak: who asks for the floor, who gets it, in what order and when.

The pure rules come first (no I/O, tested without a database): ``select_speakers`` picks
speakers in request order under per-constituency and per-region quotas, ``assign_slots``
lays slots end to end in elapsed time, ``outside_event`` says which input puts a slot
outside the event. The services below them take a session, flush and never commit.

A request is ``requested`` until the organizer selects it (``selected``, with a position
and a slot) or declines it (``declined``); the registrant may withdraw it (``withdrawn``).
Unselected requests stay ``requested``: only an explicit decline tells someone no. A
selected speaker's reminders carry the slot; they are planned again whenever it changes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import msgspec
from msgspec import Meta
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler import audit, reminders
from scheduler.errors import Conflict, Invalid, NotFound
from scheduler.models import SEAT_STATUSES, Event, Registration, SpeakerRequest, utc_now
from scheduler.registrations import Language, lock_events, notify
from scheduler.timezones import local_iso

SpeakerStatus = Literal["requested", "selected", "declined", "withdrawn"]
SPEAKER_STATUSES: tuple[SpeakerStatus, ...] = ("requested", "selected", "declined", "withdrawn")
# Requests the organizer may still place in the speaking order.
OPEN_STATUSES = ("requested", "selected")

Topic = Annotated[str, Meta(min_length=1, max_length=300, examples=["Safe and regular pathways"])]
Summary = Annotated[str, Meta(max_length=2000)]
Minutes = Annotated[int, Meta(ge=1, le=24 * 60)]
GapMinutes = Annotated[int, Meta(ge=0, le=24 * 60)]


class SpeakerRequestCreate(msgspec.Struct, forbid_unknown_fields=True):
    topic: Topic
    language: Language
    summary: Summary = ""


# --- Pure rules ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Candidate:
    """A request as the selection sees it; a list of them is in priority order."""

    id: int
    constituency: str
    region: str


def region_key(region: str) -> str:
    """Regions are typed by people: "Latin America " and "latin america" are one region."""
    return " ".join(region.split()).casefold()


def select_speakers(
    requests: Sequence[Candidate],
    *,
    count: int,
    quotas_by_constituency: Mapping[str, int] | None = None,
    quotas_by_region: Mapping[str, int] | None = None,
    already: Sequence[Candidate] = (),
) -> list[Candidate]:
    """The speaking list: ``already`` (kept as is), then ``requests`` in the order given.

    First come, first served (or the caller's priority order): a request is skipped only
    when taking it would exceed the maximum of its constituency or of its region; groups
    without a quota are unlimited. ``count`` is the length of the whole list, ``already``
    included, and ``already`` counts towards the quotas but is never dropped. The same input
    always gives the same list.
    """
    if count < 0:
        raise ValueError("count must not be negative")
    by_constituency = dict(quotas_by_constituency or {})
    by_region = {region_key(k): v for k, v in (quotas_by_region or {}).items()}
    if any(v < 0 for v in (*by_constituency.values(), *by_region.values())):
        raise ValueError("quotas must not be negative")
    chosen = list(already)
    seen = {c.id for c in chosen}
    constituencies = Counter(c.constituency for c in chosen)
    regions = Counter(region_key(c.region) for c in chosen)
    for candidate in requests:
        if len(chosen) >= count:
            break
        region = region_key(candidate.region)
        if candidate.id in seen:
            continue
        if _full(constituencies, by_constituency, candidate.constituency) or _full(
            regions, by_region, region
        ):
            continue
        chosen.append(candidate)
        seen.add(candidate.id)
        constituencies[candidate.constituency] += 1
        regions[region] += 1
    return chosen


def _full(taken: Counter[str], quotas: Mapping[str, int], key: str) -> bool:
    limit = quotas.get(key)
    return limit is not None and taken[key] >= limit


def assign_slots(
    order: Sequence[object], start: datetime, slot_minutes: int, gap_minutes: int
) -> list[tuple[datetime, datetime]]:
    """One (start, end) per speaker, in UTC, laid end to end with a gap between them.

    Counted in elapsed time, not wall-clock time: a 10-minute slot is 10 minutes long even
    when the clocks change during it (aware arithmetic in a ZoneInfo zone would not be).
    """
    if start.tzinfo is None or start.utcoffset() is None:
        raise ValueError("naive start")
    if slot_minutes < 1 or gap_minutes < 0:
        raise ValueError("slots need at least one minute and gaps cannot be negative")
    first = start.astimezone(UTC)
    slot = timedelta(minutes=slot_minutes)
    step = slot + timedelta(minutes=gap_minutes)
    return [(first + i * step, first + i * step + slot) for i in range(len(order))]


def outside_event(
    start: datetime,
    slots: Sequence[tuple[datetime, datetime]],
    event_start: datetime,
    event_end: datetime,
    time_zone: str,
) -> tuple[str, str] | None:
    """(field, reason) when the slots do not fit inside the event, else None."""
    if start < event_start or start >= event_end:
        return (
            "start",
            f"must be within the event, from {local_iso(event_start, time_zone)} "
            f"to {local_iso(event_end, time_zone)}",
        )
    if slots and slots[-1][1] > event_end:
        return (
            "slot_minutes",
            f"{len(slots)} slots from {local_iso(start, time_zone)} would end at "
            f"{local_iso(slots[-1][1], time_zone)}, after the event ends at "
            f"{local_iso(event_end, time_zone)}",
        )
    return None


# --- Services -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Slots:
    """How the organizer wants the order timed; ``start`` None means the event's start."""

    start: datetime | None
    slot_minutes: int
    gap_minutes: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """The speaking order after a change, and who was added to it."""

    order: list[tuple[SpeakerRequest, Registration]]
    added: list[int]


async def request_for(session: AsyncSession, reg: Registration) -> SpeakerRequest | None:
    return await session.scalar(
        select(SpeakerRequest).where(SpeakerRequest.registration_id == reg.id)
    )


async def request_to_speak(
    session: AsyncSession,
    reg: Registration,
    event: Event,
    data: SpeakerRequestCreate,
    now: datetime,
) -> SpeakerRequest:
    """Ask for the floor: one request per registration, and only with a seat.

    A withdrawn request may be made again; it then queues behind the requests made before.
    """
    if reg.status not in SEAT_STATUSES:
        raise Conflict(f"a {reg.status} registration cannot ask for the floor", field="status")
    if event.status != "published":
        raise Conflict(f"the event is {event.status}")
    if now >= event.ends_at:
        raise Conflict("the event is over")
    topic = " ".join(data.topic.split())
    if not topic:
        raise Invalid("topic", "must not be blank")
    existing = await request_for(session, reg)
    if existing is not None and existing.status != "withdrawn":
        raise Conflict(
            f"this registration already has a {existing.status} request to speak",
            field="speaker_request",
        )
    req = existing or SpeakerRequest(registration_id=reg.id, event_id=event.id)
    req.topic = topic
    req.summary = data.summary.strip()
    req.language = data.language
    req.status = "requested"
    req.position = None
    req.slot_start = None
    req.slot_end = None
    req.created_at = now
    req.updated_at = now
    session.add(req)
    await session.flush()
    return req


async def withdraw(session: AsyncSession, reg: Registration, now: datetime | None = None) -> None:
    """The registrant takes back their request; the speakers after them keep their slots."""
    event = (await lock_events(session, [reg.event_id]))[reg.event_id]  # no race with a decline
    req = await request_for(session, reg)
    if req is None or req.status == "withdrawn":
        raise NotFound("this registration has no request to speak")
    if req.status == "declined":
        raise Conflict("this request was declined", field="status")
    was_selected = req.status == "selected"
    _take_off(req, "withdrawn")
    await session.flush()
    await _renumber(session, req.event_id)
    if was_selected:
        await reminders.plan_for_registration(session, reg, event, now or utc_now())


async def decline(
    session: AsyncSession, event: Event, request_id: int, reason: str, now: datetime | None = None
) -> None:
    """Decline a request, selected or not, and tell the registrant."""
    await lock_events(session, [event.id])
    req = await session.get(SpeakerRequest, request_id)
    if req is None or req.event_id != event.id:
        raise NotFound(f"no speaker request {request_id} for event {event.id}")
    if req.status not in OPEN_STATUSES:
        raise Conflict(f"this request is already {req.status}", field="status")
    reg = await session.get(Registration, req.registration_id)
    assert reg is not None
    was_selected = req.status == "selected"
    _take_off(req, "declined")
    notify(session, reg, event, "speaker_declined", reason=" ".join(reason.split()))
    await session.flush()
    await _renumber(session, event.id)
    if was_selected:  # back to the plain registrant reminders
        await reminders.plan_for_registration(session, reg, event, now or utc_now())


async def select_for_event(
    session: AsyncSession,
    event: Event,
    *,
    count: int,
    quotas_by_constituency: Mapping[str, int],
    quotas_by_region: Mapping[str, int],
    slots: Slots,
) -> Outcome:
    """Fill the speaking order up to ``count`` in request order, within the quotas.

    Speakers already selected keep their place and count towards the quotas; the new ones
    follow them. Every slot is laid out again from ``slots.start``, and each speaker who is
    new or whose slot moved is mailed.
    """
    await lock_events(session, [event.id])
    pool = await _open_requests(session, event.id)
    current = [(req, reg) for req, reg in pool if req.status == "selected"]
    current.sort(key=lambda pair: (pair[0].position or 0, pair[0].created_at, pair[0].id))
    waiting = [(req, reg) for req, reg in pool if req.status == "requested"]
    chosen = select_speakers(
        [_candidate(req, reg) for req, reg in waiting],
        count=count,
        quotas_by_constituency=quotas_by_constituency,
        quotas_by_region=quotas_by_region,
        already=[_candidate(req, reg) for req, reg in current],
    )
    pairs = {req.id: (req, reg) for req, reg in pool}
    return await _place(session, event, [pairs[c.id] for c in chosen], slots)


async def set_order(
    session: AsyncSession, event: Event, order: Sequence[int], slots: Slots
) -> Outcome:
    """The organizer's own speaking order: these requests, in this order, and no other.

    A selected request left out is refused (decline it to take it off the list), so no
    one loses a slot they were told about without being told.
    """
    await lock_events(session, [event.id])
    pool = {req.id: (req, reg) for req, reg in await _open_requests(session, event.id)}
    seen: set[int] = set()
    for request_id in order:
        if request_id in seen:
            raise Invalid("order", f"request {request_id} is listed twice")
        seen.add(request_id)
        if request_id not in pool:
            req = await session.get(SpeakerRequest, request_id)
            if req is None or req.event_id != event.id:
                raise Invalid("order", f"no speaker request {request_id} for this event")
            reg = await session.get(Registration, req.registration_id)
            if reg is not None and reg.status not in SEAT_STATUSES:
                raise Invalid("order", f"request {request_id}: the registration is {reg.status}")
            raise Invalid("order", f"request {request_id} is {req.status}")
    for req, _ in pool.values():
        if req.status == "selected" and req.id not in seen:
            raise Invalid(
                "order", f"leaves out selected request {req.id}: decline it to take it off"
            )
    return await _place(session, event, [pool[i] for i in order], slots)


async def speaking_order(
    session: AsyncSession, event_id: int
) -> list[tuple[SpeakerRequest, Registration]]:
    """Selected speakers who still hold a seat, by position."""
    rows = await session.execute(
        select(SpeakerRequest, Registration)
        .join(Registration, Registration.id == SpeakerRequest.registration_id)
        .where(
            SpeakerRequest.event_id == event_id,
            SpeakerRequest.status == "selected",
            SpeakerRequest.position.is_not(None),
            Registration.status.in_(SEAT_STATUSES),
        )
        .order_by(SpeakerRequest.position, SpeakerRequest.id)
    )
    return [(req, reg) for req, reg in rows]


def _candidate(req: SpeakerRequest, reg: Registration) -> Candidate:
    return Candidate(req.id, reg.constituency, reg.region)


def _take_off(req: SpeakerRequest, status: str) -> None:
    req.status = status
    req.position = None
    req.slot_start = None
    req.slot_end = None


async def _open_requests(
    session: AsyncSession, event_id: int
) -> list[tuple[SpeakerRequest, Registration]]:
    """Requests the organizer may place, in request order; a selected speaker whose
    registration lost its seat (cancelled, expired) is taken off the order on the way."""
    rows = await session.execute(
        select(SpeakerRequest, Registration)
        .join(Registration, Registration.id == SpeakerRequest.registration_id)
        .where(SpeakerRequest.event_id == event_id, SpeakerRequest.status.in_(OPEN_STATUSES))
        .order_by(SpeakerRequest.created_at, SpeakerRequest.id)
    )
    pool = []
    for req, reg in rows:
        if reg.status in SEAT_STATUSES:
            pool.append((req, reg))
        elif req.status == "selected":
            _take_off(req, "withdrawn")
    return pool


async def _place(
    session: AsyncSession,
    event: Event,
    order: list[tuple[SpeakerRequest, Registration]],
    slots: Slots,
) -> Outcome:
    start = slots.start or event.starts_at
    times = assign_slots(order, start, slots.slot_minutes, slots.gap_minutes)
    problem = outside_event(start, times, event.starts_at, event.ends_at, event.time_zone)
    if problem is not None:
        raise Invalid(*problem)
    added = []
    changed: list[Registration] = []
    for position, ((req, reg), (slot_start, slot_end)) in enumerate(
        zip(order, times, strict=True), start=1
    ):
        new = req.status != "selected"
        moved = (req.slot_start, req.slot_end) != (slot_start, slot_end)
        req.status = "selected"
        req.position = position
        req.slot_start = slot_start
        req.slot_end = slot_end
        if new:
            added.append(req.id)
        if new or moved:
            _tell_selected(session, reg, event, req)
            changed.append(reg)
    await session.flush()
    if changed:  # speaker reminders with the new slot replace the plain ones
        await reminders.sync_registrations(session, event, changed, utc_now())
    return Outcome(order, added)


def _tell_selected(
    session: AsyncSession, reg: Registration, event: Event, req: SpeakerRequest
) -> None:
    """Queue "speaker_selected" with the slot. No position: positions close up when someone
    leaves the list, slots do not, so the slot is what the mail promises."""
    assert req.slot_start is not None and req.slot_end is not None
    notify(
        session,
        reg,
        event,
        "speaker_selected",
        extra={"slot_start": req.slot_start.isoformat(), "slot_end": req.slot_end.isoformat()},
    )


async def _renumber(session: AsyncSession, event_id: int) -> None:
    """Close the gap a speaker leaves in the positions; slots stay where they were told.
    A rule of the system's, whoever left: the trail says so."""
    async with audit.acting_as(session, audit.SPEAKER_ORDER):
        rows = await session.scalars(
            select(SpeakerRequest)
            .where(SpeakerRequest.event_id == event_id, SpeakerRequest.status == "selected")
            .order_by(SpeakerRequest.position, SpeakerRequest.id)
        )
        for position, req in enumerate(rows, start=1):
            req.position = position
