"""Calendar feeds (ICS) for a process and for one event, readable by any calendar client."""

from __future__ import annotations

from litestar import Controller, Response, get
from litestar.di import NamedDependency
from sqlalchemy import select

from scheduler import events as event_svc
from scheduler.calendars import CalendarEntry, build_calendar
from scheduler.database import Database
from scheduler.errors import documented
from scheduler.events import parse_exdates
from scheduler.fields import PathId
from scheduler.milestones import visible_clause as milestones_visible
from scheduler.models import Event, Milestone, Process, utc_now
from scheduler.permissions import Caller, processes_where
from scheduler.processes import get_process

ICS = "text/calendar"  # Litestar adds "; charset=utf-8" to text/* types


def event_entry(e: Event, base_url: NamedDependency[str]) -> CalendarEntry:
    location = ", ".join(x for x in (e.venue, e.online_url) if x)
    return CalendarEntry(
        uid=e.uid,
        sequence=e.sequence,
        title=e.title,
        start=e.starts_at,
        end=e.ends_at,
        time_zone=e.time_zone,
        status=e.status,
        description=e.description,
        location=location,
        url=f"{base_url}/events/{e.id}",
        rrule=e.rrule,
        exdates=parse_exdates(e),
        created=e.created_at,
        last_modified=e.updated_at,
    )


def milestone_entry(m: Milestone, base_url: NamedDependency[str]) -> CalendarEntry:
    return CalendarEntry(
        uid=m.uid,
        sequence=m.sequence,
        title=m.title,
        start=m.due_at,
        end=None,
        time_zone=m.time_zone,
        status=m.status,
        description=m.description,
        url=f"{base_url}/api/milestones/{m.id}",
        created=m.created_at,
        last_modified=m.updated_at,
    )


def _ics(body: bytes, filename: str) -> Response[bytes]:
    return Response(
        body,
        media_type=ICS,
        headers={"Content-Disposition": f'inline; filename="{filename}"'},
    )


class CalendarController(Controller):
    tags = ["calendars"]

    @get(
        "/api/processes/{process_id:int}/calendar.ics",
        summary="The whole cycle as an iCalendar feed",
        description="Events and milestones with VTIMEZONE, RRULE/EXDATE, stable UIDs and "
        "SEQUENCE; cancelled items stay in the feed with STATUS:CANCELLED so that "
        "subscribed calendars remove them.",
        media_type=ICS,
        responses=documented(401, 404),
    )
    async def process_calendar(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        base_url: NamedDependency[str],
        process_id: PathId,
    ) -> Response[bytes]:
        async with db.reader() as session:
            visible = await processes_where(session, caller)
            process = await get_process(session, process_id)
            events = await session.scalars(
                select(Event)
                .where(Event.process_id == process_id, event_svc.visible_clause(visible))
                .order_by(Event.starts_at, Event.id)
            )
            milestones = await session.scalars(
                select(Milestone)
                .where(Milestone.process_id == process_id, milestones_visible(visible))
                .order_by(Milestone.due_at, Milestone.id)
            )
            entries = [event_entry(e, base_url) for e in events]
            entries += [milestone_entry(m, base_url) for m in milestones]
        body = build_calendar(process.name, process.time_zone, entries, utc_now())
        return _ics(body, f"{process.slug}.ics")

    @get(
        "/api/events/{event_id:int}/calendar.ics",
        summary="One event (with the events inside it) as an iCalendar file",
        media_type=ICS,
        responses=documented(401, 404),
    )
    async def event_calendar(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        base_url: NamedDependency[str],
        event_id: PathId,
    ) -> Response[bytes]:
        async with db.reader() as session:
            visible = await processes_where(session, caller)
            event = await event_svc.get_event(session, event_id, visible)
            process = await session.get(Process, event.process_id)
            assert process is not None
            children = await session.scalars(
                select(Event)
                .where(Event.parent_id == event.id, event_svc.visible_clause(visible))
                .order_by(Event.starts_at, Event.id)
            )
            entries = [event_entry(e, base_url) for e in [event, *children]]
        body = build_calendar(event.title, event.time_zone, entries, utc_now())
        return _ics(body, f"event-{event.id}.ics")
