"""Processes (review cycles): creating them, their timeline, and building one from a template."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal

import msgspec
from msgspec import UNSET, UnsetType
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler import fields as f
from scheduler import reminders
from scheduler.cycle_templates import PlannedItem, Template, TemplateError, expand
from scheduler.errors import Conflict, Invalid, NotFound
from scheduler.events import parse_exdates
from scheduler.events import visible_clause as events_visible
from scheduler.milestones import visible_clause as milestones_visible
from scheduler.models import Event, Milestone, Process, ProcessOrganizer
from scheduler.recurrence import last_end, occurrences_between
from scheduler.timezones import UnknownTimeZone, zone


class ProcessCreate(msgspec.Struct, forbid_unknown_fields=True):
    slug: f.Slug
    name: f.Title
    time_zone: f.ZoneName
    description: f.LongText = ""
    languages: list[f.Language] = msgspec.field(default_factory=lambda: ["en"])


class ProcessPatch(msgspec.Struct, forbid_unknown_fields=True):
    name: f.Title | UnsetType = UNSET
    time_zone: f.ZoneName | UnsetType = UNSET
    description: f.LongText | UnsetType = UNSET
    languages: list[f.Language] | UnsetType = UNSET


class Instantiate(msgspec.Struct, forbid_unknown_fields=True):
    """Give the anchor's start, or just its local date (the template says the hour)."""

    template: str
    anchor_start: f.AwareDatetime | None = None
    anchor_date: date | None = None
    status: Literal["draft", "published"] = "draft"


async def get_process(session: AsyncSession, process_id: int) -> Process:
    process = await session.get(Process, process_id)
    if process is None:
        raise NotFound(f"no process {process_id}")
    return process


async def create_process(
    session: AsyncSession, data: ProcessCreate, owner_id: int | None
) -> Process:
    """A new process; ``owner_id`` (the organizer creating it) becomes its owner."""
    _check_zone(data.time_zone)
    if await session.scalar(select(Process.id).where(Process.slug == data.slug)) is not None:
        raise Conflict(f"a process with slug {data.slug!r} exists", field="slug")
    process = Process(
        slug=data.slug,
        name=data.name.strip(),
        description=data.description,
        time_zone=data.time_zone,
        languages=_languages(data.languages),
    )
    session.add(process)
    await session.flush()
    if owner_id is not None:
        session.add(ProcessOrganizer(process_id=process.id, organizer_id=owner_id, role="owner"))
        await session.flush()
    return process


async def update_process(session: AsyncSession, process: Process, patch: ProcessPatch) -> None:
    if patch.time_zone is not UNSET:
        _check_zone(patch.time_zone)
        process.time_zone = patch.time_zone
    if patch.name is not UNSET:
        process.name = patch.name.strip()
    if patch.description is not UNSET:
        process.description = patch.description
    if patch.languages is not UNSET:
        process.languages = _languages(patch.languages)
    await session.flush()


def _check_zone(name: str) -> None:
    try:
        zone(name)
    except UnknownTimeZone as exc:
        raise Invalid("time_zone", str(exc)) from None


def _languages(values: list[str]) -> list[str]:
    if not values:
        raise Invalid("languages", "name at least one language")
    return list(dict.fromkeys(values))


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    type: Literal["event", "milestone"]
    id: int
    kind: str
    title: str
    status: str
    time_zone: str
    start: datetime
    end: datetime | None
    parent_id: int | None
    relative_to_id: int | None
    pinned: bool
    recurring: bool


async def timeline(
    session: AsyncSession,
    process: Process,
    readable: set[int],
    window_start: datetime,
    window_end: datetime,
) -> list[TimelineEntry]:
    """Events (recurring ones as their occurrences) and milestones in the window, in order."""
    events = await session.scalars(
        select(Event)
        .where(Event.process_id == process.id, events_visible(readable))
        .where(Event.starts_at < window_end)
    )
    entries = [
        _entry(e, "event", e.kind, occ.start, occ.end, e.parent_id, e.rrule is not None)
        for e in events
        for occ in occurrences_between(
            e.starts_at,
            e.ends_at,
            e.time_zone,
            e.rrule,
            parse_exdates(e),
            window_start,
            window_end,
            limit=200,
        )
    ]
    milestones = await session.scalars(
        select(Milestone).where(
            Milestone.process_id == process.id,
            milestones_visible(readable),
            Milestone.due_at >= window_start,
            Milestone.due_at < window_end,
        )
    )
    entries += [
        _entry(m, "milestone", m.kind, m.due_at, None, m.event_id, False) for m in milestones
    ]
    entries.sort(key=lambda x: (x.start, 0 if x.type == "event" else 1, x.id))
    return entries


def _entry(
    row: Event | Milestone,
    type_: Literal["event", "milestone"],
    kind: str,
    start: datetime,
    end: datetime | None,
    parent_id: int | None,
    recurring: bool,
) -> TimelineEntry:
    return TimelineEntry(
        type=type_,
        id=row.id,
        kind=kind,
        title=row.title,
        status=row.status,
        time_zone=row.time_zone,
        start=start,
        end=end,
        parent_id=parent_id,
        relative_to_id=row.relative_to_id,
        pinned=row.pinned,
        recurring=recurring,
    )


async def instantiate(
    session: AsyncSession,
    process: Process,
    templates: dict[str, Template],
    request: Instantiate,
    now: datetime,
) -> tuple[list[Event], list[Milestone]]:
    """Create a template's events and milestones for one anchor, linked by their rules."""
    template = templates.get(request.template)
    if template is None:
        known = ", ".join(sorted(templates)) or "none"
        raise Invalid("template", f"unknown template {request.template!r} (known: {known})")
    if (request.anchor_start is None) == (request.anchor_date is None):
        raise Invalid("anchor_start", "give exactly one of anchor_start and anchor_date")
    if request.anchor_start is not None:
        anchor_start = request.anchor_start
    else:
        assert request.anchor_date is not None
        anchor_start = template.anchor_start_on(request.anchor_date)
    try:
        planned = expand(template, anchor_start, now)
    except TemplateError as exc:
        raise Invalid(exc.field, exc.reason) from None
    events, milestones = await _create_planned(session, process, planned, request.status)
    if request.status == "published":  # organizers' and subscribers' reminders
        for event in events:
            await reminders.sync_event(session, event, now)
        for milestone in milestones:
            await reminders.sync_milestone(session, milestone, now)
    return events, milestones


async def _create_planned(
    session: AsyncSession, process: Process, planned: list[PlannedItem], status: str
) -> tuple[list[Event], list[Milestone]]:
    by_key: dict[str, Event] = {}
    events: list[Event] = []
    milestones: list[Milestone] = []
    for p in planned:
        item = p.item
        relative_to = by_key[item.relative_to].id if item.relative_to else None
        parent = by_key[item.parent].id if item.parent else None
        rule = item.placement.to_dict() if relative_to is not None else None
        if item.category == "event":
            assert p.end is not None
            event = Event(
                process_id=process.id,
                parent_id=parent,
                kind=item.kind,
                title=p.title,
                description=item.description,
                venue=item.venue,
                online_url=item.online_url,
                time_zone=item.time_zone,
                starts_at=p.start,
                ends_at=p.end,
                status=status,
                rrule=item.rrule,
                exdates=[],
                capacity=item.capacity,
                registration_opens_at=p.registration_opens_at,
                registration_closes_at=p.registration_closes_at,
                relative_to_id=relative_to,
                rule=rule,
                template_key=item.key,
            )
            event.series_ends_at = _series_end(event)
            session.add(event)
            await session.flush()
            by_key[item.key] = event
            events.append(event)
        else:
            milestone = Milestone(
                process_id=process.id,
                event_id=parent,
                kind=item.kind,
                title=p.title,
                description=item.description,
                due_at=p.start,
                time_zone=item.time_zone,
                status=status,
                relative_to_id=relative_to,
                rule=rule,
                template_key=item.key,
            )
            session.add(milestone)
            milestones.append(milestone)
    await session.flush()
    return events, milestones


def _series_end(event: Event) -> datetime | None:
    return last_end(event.starts_at, event.ends_at, event.time_zone, event.rrule, [])
