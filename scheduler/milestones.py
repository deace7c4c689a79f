"""Milestones: deadlines and decision points, optionally placed relative to an event.

Each change re-plans the milestone's reminders (subscribers and organizers) in the same
transaction; services flush and never commit.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType
from sqlalchemy import Select, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler import fields as f
from scheduler import reminders
from scheduler.errors import Invalid, NotFound
from scheduler.models import Event, Milestone, Notification, Process, utc_now
from scheduler.placement import Placement, PlacementError
from scheduler.timezones import UnknownTimeZone, zone

MilestoneKind = Literal[
    "report_deadline", "registration_deadline", "pledge_deadline", "decision", "other"
]
MilestoneStatus = Literal["draft", "published", "cancelled"]


class MilestoneCreate(msgspec.Struct, forbid_unknown_fields=True):
    process_id: f.Id
    kind: MilestoneKind
    title: f.Title
    due: f.AwareDatetime
    time_zone: f.ZoneName
    description: f.LongText = ""
    event_id: f.Id | None = None
    status: MilestoneStatus = "draft"
    relative_to_id: f.Id | None = None
    placement: f.PlacementRule | None = None
    pinned: bool = False
    reminder_offsets: f.ReminderOffsets | None = None


class MilestonePatch(msgspec.Struct, forbid_unknown_fields=True):
    kind: MilestoneKind | UnsetType = UNSET
    title: f.Title | UnsetType = UNSET
    due: f.AwareDatetime | UnsetType = UNSET
    time_zone: f.ZoneName | UnsetType = UNSET
    description: f.LongText | UnsetType = UNSET
    event_id: f.Id | UnsetType | None = UNSET
    status: MilestoneStatus | UnsetType = UNSET
    relative_to_id: f.Id | UnsetType | None = UNSET
    placement: f.PlacementRule | UnsetType | None = UNSET
    pinned: bool | UnsetType = UNSET
    reminder_offsets: f.ReminderOffsets | UnsetType | None = UNSET


def visible_clause(readable: set[int]) -> Any:
    """Drafts are seen only by the members of their process (see events.visible_clause)."""
    if not readable:
        return Milestone.status != "draft"
    return or_(Milestone.status != "draft", Milestone.process_id.in_(readable))


def list_query(
    readable: set[int],
    process_id: int | None = None,
    kind: str | None = None,
    due_from: datetime | None = None,
    due_to: datetime | None = None,
) -> Select[Milestone]:
    query = select(Milestone).where(visible_clause(readable))
    if process_id is not None:
        query = query.where(Milestone.process_id == process_id)
    if kind is not None:
        query = query.where(Milestone.kind == kind)
    if due_from is not None:
        query = query.where(Milestone.due_at >= due_from)
    if due_to is not None:
        query = query.where(Milestone.due_at < due_to)
    return query.order_by(Milestone.due_at, Milestone.id)


async def get_milestone(session: AsyncSession, milestone_id: int, readable: set[int]) -> Milestone:
    row = await session.get(Milestone, milestone_id)
    if row is None or (row.status == "draft" and row.process_id not in readable):
        raise NotFound(f"no milestone {milestone_id}")
    return row


async def create_milestone(
    session: AsyncSession, data: MilestoneCreate, now: datetime | None = None
) -> Milestone:
    f.check_range("due", data.due)
    if await session.get(Process, data.process_id) is None:
        raise Invalid("process_id", f"no process {data.process_id}")
    row = Milestone(
        process_id=data.process_id,
        event_id=data.event_id,
        kind=data.kind,
        title=data.title.strip(),
        description=data.description,
        due_at=data.due.astimezone(UTC),
        time_zone=data.time_zone,
        status=data.status,
        relative_to_id=data.relative_to_id,
        rule=data.placement,
        pinned=data.pinned,
        reminder_offsets=f.check_offsets("reminder_offsets", data.reminder_offsets),
    )
    await _check(session, row, place=True)
    session.add(row)
    await session.flush()
    if row.status == "published":
        await reminders.sync_milestone(session, row, now or utc_now())
    return row


async def update_milestone(
    session: AsyncSession, row: Milestone, patch: MilestonePatch, now: datetime | None = None
) -> None:
    """Apply a partial change. A new due time set by hand pins a relative milestone."""
    changes = {k: v for k, v in msgspec.structs.asdict(patch).items() if v is not UNSET}
    f.check_range("due", changes.get("due"))
    if "reminder_offsets" in changes:
        changes["reminder_offsets"] = f.check_offsets(
            "reminder_offsets", changes["reminder_offsets"]
        )
    renames = {"placement": "rule", "due": "due_at"}
    for key, value in changes.items():
        if isinstance(value, datetime):
            value = value.astimezone(UTC)
        setattr(row, renames.get(key, key), value)
    if "due" in changes and row.relative_to_id is not None and "pinned" not in changes:
        row.pinned = True
    if "title" in changes:
        row.title = row.title.strip()
    replaced = "placement" in changes or "relative_to_id" in changes
    with session.no_autoflush:  # a missing event is refused by _check, not by the FK
        await _check(session, row, place=replaced and "due" not in changes)
    row.sequence += 1
    await session.flush()
    await reminders.sync_milestone(session, row, now or utc_now())


async def delete_milestone(session: AsyncSession, row: Milestone) -> None:
    """Delete a milestone; its unsent reminders are cancelled, with the reason, first."""
    await reminders.cancel_all(
        session, Notification.milestone_id == row.id, "the milestone was deleted"
    )
    await session.delete(row)
    await session.flush()


async def _check(session: AsyncSession, row: Milestone, *, place: bool = False) -> None:
    """Check a milestone, naming the field; with ``place`` its due time comes from the rule."""
    if not row.title:
        raise Invalid("title", "must not be blank")
    try:
        zone(row.time_zone)
    except UnknownTimeZone as exc:
        raise Invalid("time_zone", str(exc)) from None
    for field, event_id in (("event_id", row.event_id), ("relative_to_id", row.relative_to_id)):
        if event_id is not None:
            event = await session.get(Event, event_id)
            if event is None or event.process_id != row.process_id:
                raise Invalid(field, f"no event {event_id} in this process")
    if (row.relative_to_id is None) != (row.rule is None):
        missing = "placement" if row.rule is None else "relative_to_id"
        raise Invalid(missing, "relative_to_id and placement go together")
    if row.rule is not None:
        try:
            placement = Placement.from_dict(row.rule)
        except PlacementError as exc:
            raise Invalid(f"placement.{exc.field}", exc.reason) from None
        if placement.sets_end:
            raise Invalid("placement", "a milestone has no end: leave out end_at and duration")
        row.rule = placement.to_dict()
        if place:
            ref = await session.get(Event, row.relative_to_id)
            assert ref is not None
            try:
                row.due_at = placement.start(ref.starts_at, ref.time_zone, row.time_zone)
            except (ValueError, OverflowError):
                raise Invalid("placement", "puts the milestone out of range") from None
            f.check_range("placement", row.due_at)
