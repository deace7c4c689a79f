"""Events: creating, changing, moving (with cascades) and finding them.

Services flush but never commit: the caller owns the transaction. Every change is followed
up in the same transaction (``follow_up``): the reminders of what it touched are re-planned
(a move re-times them and tells the registrants once, a cancellation or postponement
cancels them and tells the registrants once), and the process's webhooks are told of each
event moved (one ``event.moved`` per event a cascade moved) or cancelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType
from sqlalchemy import Select, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler import fields as f
from scheduler import reminders, webhook_events
from scheduler.cascades import CascadeError, Item, Move, cascade, keep_wall_length
from scheduler.errors import Invalid, NotFound
from scheduler.models import Event, Milestone, Notification, Process, utc_now
from scheduler.placement import Placement, PlacementError
from scheduler.questions import Question, QuestionError, check_questions
from scheduler.recurrence import BadRecurrence, check_exdates, last_end, normalize_rrule
from scheduler.registrations import lock_events, promote_waiting
from scheduler.timezones import UnknownTimeZone, to_local, wall_shift, zone

EventKind = Literal[
    "review_forum",
    "regional_review",
    "stakeholder_hearing",
    "dialogue_meeting",
    "consultation",
    "round_table",
    "policy_debate",
    "plenary",
    "other",
]
EventStatus = Literal["draft", "published", "postponed", "cancelled"]


class EventCreate(msgspec.Struct, forbid_unknown_fields=True):
    process_id: f.Id
    kind: EventKind
    title: f.Title
    time_zone: f.ZoneName
    start: f.AwareDatetime
    end: f.AwareDatetime
    description: f.LongText = ""
    parent_id: f.Id | None = None
    venue: f.ShortText = ""
    online_url: f.Url = ""
    status: EventStatus = "draft"
    rrule: f.RRuleText | None = None
    exdates: list[f.AwareDatetime] = []
    registration_opens_at: f.AwareDatetime | None = None
    registration_closes_at: f.AwareDatetime | None = None
    capacity: f.Capacity | None = None
    confirmation_required: bool = True
    accreditation_required: bool = False
    questions: list[Question] = []
    relative_to_id: f.Id | None = None
    placement: f.PlacementRule | None = None
    pinned: bool = False
    reminder_offsets: f.ReminderOffsets | None = None


class EventPatch(msgspec.Struct, forbid_unknown_fields=True):
    """Fields left out stay as they are; a new start or end moves dependents too."""

    kind: EventKind | UnsetType = UNSET
    title: f.Title | UnsetType = UNSET
    time_zone: f.ZoneName | UnsetType = UNSET
    start: f.AwareDatetime | UnsetType = UNSET
    end: f.AwareDatetime | UnsetType = UNSET
    description: f.LongText | UnsetType = UNSET
    parent_id: f.Id | None | UnsetType = UNSET
    venue: f.ShortText | UnsetType = UNSET
    online_url: f.Url | UnsetType = UNSET
    status: EventStatus | UnsetType = UNSET
    rrule: f.RRuleText | None | UnsetType = UNSET
    exdates: list[f.AwareDatetime] | UnsetType = UNSET
    registration_opens_at: f.AwareDatetime | None | UnsetType = UNSET
    registration_closes_at: f.AwareDatetime | None | UnsetType = UNSET
    capacity: f.Capacity | None | UnsetType = UNSET
    questions: list[Question] | UnsetType = UNSET
    relative_to_id: f.Id | None | UnsetType = UNSET
    placement: f.PlacementRule | None | UnsetType = UNSET
    pinned: bool | UnsetType = UNSET
    reminder_offsets: f.ReminderOffsets | None | UnsetType = UNSET


@dataclass(frozen=True, slots=True)
class EventFilter:
    process_id: int | None = None
    kind: str | None = None
    status: str | None = None
    starts_from: datetime | None = None
    starts_to: datetime | None = None
    limit: int = 500
    offset: int = 0


def visible_clause(readable: set[int]) -> Any:
    """Drafts are seen only by the members of their process (``readable``: the processes
    whose drafts the caller may read, from ``permissions.processes_where``)."""
    if not readable:
        return Event.status != "draft"
    return or_(Event.status != "draft", Event.process_id.in_(readable))


def list_query(flt: EventFilter, readable: set[int]) -> Select[Event]:
    query = select(Event).where(visible_clause(readable))
    if flt.process_id is not None:
        query = query.where(Event.process_id == flt.process_id)
    if flt.kind is not None:
        query = query.where(Event.kind == flt.kind)
    if flt.status is not None:
        query = query.where(Event.status == flt.status)
    if flt.starts_to is not None:
        query = query.where(Event.starts_at < flt.starts_to)
    if flt.starts_from is not None:
        # Whole series overlapping the window (an endless series always does).
        query = query.where(
            or_(Event.series_ends_at.is_(None), Event.series_ends_at > flt.starts_from)
        )
    return query.order_by(Event.starts_at, Event.id).limit(flt.limit).offset(flt.offset)


async def get_event(session: AsyncSession, event_id: int, readable: set[int]) -> Event:
    event = await session.get(Event, event_id)
    if event is None or (event.status == "draft" and event.process_id not in readable):
        raise NotFound(f"no event {event_id}")
    return event


async def create_event(
    session: AsyncSession, data: EventCreate, now: datetime | None = None
) -> Event:
    _check_dates(msgspec.structs.asdict(data))
    if await session.get(Process, data.process_id) is None:
        raise Invalid("process_id", f"no process {data.process_id}")
    event = Event(
        process_id=data.process_id,
        kind=data.kind,
        title=data.title.strip(),
        description=data.description,
        parent_id=data.parent_id,
        venue=data.venue,
        online_url=data.online_url,
        time_zone=data.time_zone,
        starts_at=data.start.astimezone(UTC),
        ends_at=data.end.astimezone(UTC),
        status=data.status,
        rrule=data.rrule,
        exdates=[],
        registration_opens_at=_utc(data.registration_opens_at),
        registration_closes_at=_utc(data.registration_closes_at),
        capacity=data.capacity,
        confirmation_required=data.confirmation_required,
        accreditation_required=data.accreditation_required,
        questions=_questions(data.questions),
        relative_to_id=data.relative_to_id,
        rule=data.placement,
        pinned=data.pinned,
        reminder_offsets=f.check_offsets("reminder_offsets", data.reminder_offsets),
    )
    await _check_and_normalize(session, event, data.exdates, place=True)
    session.add(event)
    await session.flush()
    if event.status == "published":  # the organizers' reminders
        await reminders.sync_event(session, event, now or utc_now())
    return event


async def update_event(
    session: AsyncSession, event: Event, patch: EventPatch, now: datetime, hold: timedelta
) -> list[Move]:
    """Apply a partial change; a new start or end is a move and cascades.

    The move happens first, then the other fields are applied and the whole event is
    checked again; any failure raises and the caller's transaction rolls everything back.
    """
    changes = {k: v for k, v in msgspec.structs.asdict(patch).items() if v is not UNSET}
    _check_dates(changes)
    if "reminder_offsets" in changes:
        changes["reminder_offsets"] = f.check_offsets(
            "reminder_offsets", changes["reminder_offsets"]
        )
    old_status, old_times = event.status, (event.starts_at, event.ends_at)
    new_start = changes.pop("start", None)
    new_end = changes.pop("end", None)
    exdates = changes.pop("exdates", None)
    moves: list[Move] = []
    if new_start is not None or new_end is not None:
        moves = await move_event(
            session,
            event,
            new_start or event.starts_at,
            new_end,
            now,
            pin="pinned" not in changes,
        )
    renames = {"placement": "rule"}
    if "questions" in changes:
        changes["questions"] = _questions(changes["questions"])
    old_capacity = event.capacity
    for key, value in changes.items():
        setattr(event, renames.get(key, key), _utc(value) if isinstance(value, datetime) else value)
    if "title" in changes:
        event.title = event.title.strip()
    replaced = "placement" in changes or "relative_to_id" in changes
    before = event.starts_at
    # No autoflush: a reference to a missing event must be refused by the check (naming
    # the field), not by the database's foreign key while the check looks it up.
    with session.no_autoflush:
        await _check_and_normalize(
            session,
            event,
            exdates if exdates is not None else parse_exdates(event),
            place=replaced and not (new_start or new_end),
        )
    if event.starts_at != before and not moves:
        # A new placement put the event elsewhere: its own dependents follow.
        moves = await move_event(session, event, event.starts_at, event.ends_at, now, pin=False)
    if "capacity" in changes and (
        event.capacity is None or (old_capacity is not None and event.capacity > old_capacity)
    ):
        # More seats: the first people waiting get them at once.
        await lock_events(session, [event.id])
        await promote_waiting(session, event, now, hold)
    event.sequence += 1
    await session.flush()
    await follow_up(session, event, moves, now, old_status=old_status, old_times=old_times)
    return moves


async def follow_up(
    session: AsyncSession,
    event: Event,
    moves: list[Move],
    now: datetime,
    *,
    old_status: str,
    old_times: tuple[datetime, datetime],
) -> None:
    """Re-plan reminders and tell webhooks after a change, once the sequences are bumped.

    The event itself: cancelled or postponed -> its unsent reminders are cancelled and the
    registrants told once; moved, or back on after a postponement -> re-timed, and one
    change notice per seat holder; anything else -> re-planned quietly (new basis and text).
    Events and milestones the cascade moved are re-planned and told the same way. Webhooks
    get ``event.moved`` for the event and each event the cascade moved, and
    ``event.cancelled``, all planned in one go.
    """
    announced: list[webhook_events.Emission] = []
    moved = (event.starts_at, event.ends_at) != old_times
    if moved:
        announced.append(webhook_events.event_moved(event, *old_times, moved_with=None))
    for move in moves:
        if not move.changed or (move.kind == "event" and move.id == event.id):
            continue
        if move.kind == "event":
            dependent = await session.get(Event, move.id)
            assert dependent is not None
            await reminders.replan_event(session, dependent, now)
            announced.append(
                webhook_events.event_moved(
                    dependent, move.old_start, move.old_end, moved_with=event.id
                )
            )
        else:
            milestone = await session.get(Milestone, move.id)
            assert milestone is not None
            await reminders.sync_milestone(session, milestone, now)
    if event.status in ("cancelled", "postponed") and event.status != old_status:
        await reminders.cancel_event_reminders(session, event, now, event.status)
        if event.status == "cancelled":
            announced.append(webhook_events.event_cancelled(event, old_status))
    elif event.status == "published" and (moved or old_status in ("cancelled", "postponed")):
        await reminders.replan_event(session, event, now)
    else:
        await reminders.sync_event(session, event, now)
    await webhook_events.emit(session, announced, now)


async def move_event(
    session: AsyncSession,
    event: Event,
    new_start: datetime,
    new_end: datetime | None,
    now: datetime,
    *,
    pin: bool = True,
    preview: bool = False,
) -> list[Move]:
    """Move an event and everything placed relative to it; only computes if ``preview``.

    An event moved by hand that was placed relative to another one is pinned, so a later
    move of its reference leaves it where the organizer put it.
    """
    f.check_range("start", new_start)
    f.check_range("end", new_end)
    items = await _process_items(session, event.process_id)
    try:
        moves = cascade(items, event.id, new_start, new_end, now)
    except CascadeError as exc:
        raise Invalid("end" if "end" in str(exc) else "start", str(exc)) from None
    if preview:
        return moves
    for move in moves:
        row: Event | Milestone | None
        if move.kind == "event":
            row = await session.get(Event, move.id)
            assert row is not None
            shift = move.new_start - move.old_start
            row.starts_at = move.new_start
            assert move.new_end is not None
            row.ends_at = move.new_end
            if row.registration_opens_at is not None:
                row.registration_opens_at += shift
            if row.registration_closes_at is not None:
                row.registration_closes_at += shift
            # Occurrences keep their local wall-clock time, so EXDATEs move by the local
            # shift (a UTC shift would miss them when the move crosses a DST change).
            wall = _wall(move.new_start, row.time_zone) - _wall(move.old_start, row.time_zone)
            tz = row.time_zone
            row.exdates = [_iso(wall_shift(_parse_utc(d), tz, wall)) for d in row.exdates]
            row.series_ends_at = _series_end(row)
        else:
            row = await session.get(Milestone, move.id)
            assert row is not None
            row.due_at = move.new_start
        if move.changed and row is not event:
            row.sequence += 1
    if pin and event.relative_to_id is not None:
        event.pinned = True
    await session.flush()
    return moves


async def delete_event(session: AsyncSession, event: Event) -> None:
    await reminders.cancel_all(session, Notification.event_id == event.id, "the event was deleted")
    # Items placed relative to the event keep their times and lose the rule (the foreign
    # key only clears relative_to_id, which would leave a placement without a reference).
    for row in [
        *await session.scalars(select(Event).where(Event.relative_to_id == event.id)),
        *await session.scalars(select(Milestone).where(Milestone.relative_to_id == event.id)),
    ]:
        row.relative_to_id = None
        row.rule = None
    await session.flush()
    await session.delete(event)
    await session.flush()


async def _process_items(session: AsyncSession, process_id: int) -> list[Item]:
    events = await session.scalars(select(Event).where(Event.process_id == process_id))
    milestones = await session.scalars(select(Milestone).where(Milestone.process_id == process_id))
    items = [
        Item(
            kind="event",
            id=e.id,
            start=e.starts_at,
            end=e.ends_at,
            time_zone=e.time_zone,
            relative_to=e.relative_to_id,
            placement=Placement.from_dict(e.rule) if e.rule else None,
            pinned=e.pinned,
        )
        for e in events
    ]
    items += [
        Item(
            kind="milestone",
            id=m.id,
            start=m.due_at,
            end=None,
            time_zone=m.time_zone,
            relative_to=m.relative_to_id,
            placement=Placement.from_dict(m.rule) if m.rule else None,
            pinned=m.pinned,
        )
        for m in milestones
    ]
    return items


async def _check_and_normalize(
    session: AsyncSession, event: Event, exdates: list[datetime], *, place: bool = False
) -> None:
    """Check every rule an event must satisfy, naming the field; normalize rrule/exdates.

    With ``place``, an event that has a placement takes its times from the rule.
    """
    if not event.title:
        raise Invalid("title", "must not be blank")
    try:
        zone(event.time_zone)
    except UnknownTimeZone as exc:
        raise Invalid("time_zone", str(exc)) from None
    if event.parent_id is not None:
        parent = await session.get(Event, event.parent_id)
        if parent is None or parent.process_id != event.process_id:
            raise Invalid("parent_id", f"no event {event.parent_id} in this process")
        if parent.id == event.id or await _reaches(session, parent.id, event.id, "parent_id"):
            raise Invalid("parent_id", "an event cannot be inside itself")
    if (event.relative_to_id is None) != (event.rule is None):
        missing = "placement" if event.rule is None else "relative_to_id"
        raise Invalid(missing, "relative_to_id and placement go together")
    if event.relative_to_id is not None and event.rule is not None:
        ref = await session.get(Event, event.relative_to_id)
        if ref is None or ref.process_id != event.process_id:
            raise Invalid("relative_to_id", f"no event {event.relative_to_id} in this process")
        if ref.id == event.id or await _reaches(session, ref.id, event.id, "relative_to_id"):
            raise Invalid(
                "relative_to_id", "events cannot be placed relative to each other in a loop"
            )
        try:
            placement = Placement.from_dict(event.rule)
        except PlacementError as exc:
            raise Invalid(f"placement.{exc.field}", exc.reason) from None
        event.rule = placement.to_dict()
        if place:
            item = Item("event", 0, event.starts_at, event.ends_at, event.time_zone)
            try:
                start = placement.start(ref.starts_at, ref.time_zone, event.time_zone)
                end = placement.end(start, event.time_zone) or keep_wall_length(item, start)
            except (ValueError, OverflowError):
                raise Invalid("placement", "puts the event out of range") from None
            f.check_range("placement", start)
            f.check_range("placement", end)
            event.starts_at, event.ends_at = start, end or event.ends_at
    if event.ends_at <= event.starts_at:
        raise Invalid("end", "must be after start")
    if event.rrule is not None:
        try:
            event.rrule = normalize_rrule(event.rrule, event.time_zone)
        except BadRecurrence as exc:
            raise Invalid("rrule", str(exc)) from None
        bad = check_exdates(event.starts_at, event.ends_at, event.time_zone, event.rrule, exdates)
        if bad is not None:
            raise Invalid(f"exdates[{bad}]", "is not the start of an occurrence of rrule")
    elif exdates:
        raise Invalid("exdates", "only a recurring event (with rrule) can have exdates")
    event.exdates = [_iso(d) for d in exdates]
    opens, closes = event.registration_opens_at, event.registration_closes_at
    if opens is not None and closes is not None and closes <= opens:
        raise Invalid("registration_closes_at", "must be after registration_opens_at")
    event.series_ends_at = _series_end(event)


async def _reaches(session: AsyncSession, start_id: int, target_id: int, link: str) -> bool:
    """Whether following ``link`` from ``start_id`` arrives at ``target_id``."""
    seen: set[int] = set()
    current: int | None = start_id
    while current is not None and current not in seen:
        if current == target_id:
            return True
        seen.add(current)
        row = await session.get(Event, current)
        current = getattr(row, link) if row is not None else None
    return False


def _series_end(event: Event) -> datetime | None:
    exdates = [_parse_utc(d) for d in event.exdates]
    return last_end(event.starts_at, event.ends_at, event.time_zone, event.rrule, exdates)


def _check_dates(values: dict[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, datetime):
            f.check_range(key, value)
    for index, value in enumerate(values.get("exdates") or []):
        f.check_range(f"exdates[{index}]", value)


def _wall(instant: datetime, tz_name: str) -> datetime:
    return to_local(instant, tz_name).replace(tzinfo=None)


def _questions(questions: list[Question]) -> list[dict[str, Any]]:
    try:
        return check_questions(questions)
    except QuestionError as exc:
        raise Invalid(exc.field, exc.reason) from None


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


def _iso(value: datetime) -> str:
    return value.astimezone(zone("UTC")).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_utc(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def parse_exdates(event: Event) -> list[datetime]:
    return [_parse_utc(d) for d in event.exdates]
