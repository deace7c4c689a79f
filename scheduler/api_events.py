"""HTTP routes for events: list, read, create, change, move (with preview), delete."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

import msgspec
from litestar import Controller, MediaType, Request, Response, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromQuery, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler import events as svc
from scheduler.answer_cache import CALENDAR, AnswerCache, cached_response
from scheduler.cascades import Move
from scheduler.database import Database
from scheduler.errors import Invalid, documented
from scheduler.fields import ID_MAX, AwareDatetime, PathId, check_aware
from scheduler.models import Event, Milestone, utc_now
from scheduler.outbox import OutboxWorker
from scheduler.permissions import Caller, authenticated, processes_where, require_role
from scheduler.reminders import earliest_planned
from scheduler.settings import Settings
from scheduler.timezones import local_iso


class EventOut(msgspec.Struct):
    id: int
    uid: str
    process_id: PathId
    parent_id: int | None
    kind: str
    title: str
    description: str
    venue: str
    online_url: str
    time_zone: str
    start: datetime
    end: datetime
    start_local: str
    end_local: str
    status: str
    rrule: str | None
    exdates: list[str]
    series_end: datetime | None
    registration_opens_at: datetime | None
    registration_closes_at: datetime | None
    capacity: int | None
    confirmation_required: bool
    accreditation_required: bool
    questions: list[dict[str, Any]]
    relative_to_id: int | None
    placement: dict[str, Any] | None
    pinned: bool
    sequence: int
    created_at: datetime
    updated_at: datetime
    calendar_url: str
    reminder_offsets: list[int] | None


class EventPage(msgspec.Struct):
    items: list[EventOut]
    limit: int
    offset: int


class MoveRequest(msgspec.Struct, forbid_unknown_fields=True):
    """New start (and optionally end); the end otherwise keeps the local wall-clock length."""

    start: AwareDatetime
    end: AwareDatetime | None = None
    preview: bool = False
    pin: bool = True


class MoveOut(msgspec.Struct):
    type: str
    id: int
    title: str
    time_zone: str
    old_start: datetime
    new_start: datetime
    old_end: datetime | None
    new_end: datetime | None
    new_start_local: str
    in_past: bool


class MoveResult(msgspec.Struct):
    preview: bool
    moved: list[MoveOut]


class EventChange(msgspec.Struct):
    event: EventOut
    moved: list[MoveOut]


def event_out(e: Event) -> EventOut:
    return EventOut(
        id=e.id,
        uid=e.uid,
        process_id=e.process_id,
        parent_id=e.parent_id,
        kind=e.kind,
        title=e.title,
        description=e.description,
        venue=e.venue,
        online_url=e.online_url,
        time_zone=e.time_zone,
        start=e.starts_at,
        end=e.ends_at,
        start_local=local_iso(e.starts_at, e.time_zone),
        end_local=local_iso(e.ends_at, e.time_zone),
        status=e.status,
        rrule=e.rrule,
        exdates=e.exdates,
        series_end=e.series_ends_at,
        registration_opens_at=e.registration_opens_at,
        registration_closes_at=e.registration_closes_at,
        capacity=e.capacity,
        confirmation_required=e.confirmation_required,
        accreditation_required=e.accreditation_required,
        questions=e.questions,
        relative_to_id=e.relative_to_id,
        placement=e.rule,
        pinned=e.pinned,
        sequence=e.sequence,
        created_at=e.created_at,
        updated_at=e.updated_at,
        calendar_url=f"/api/events/{e.id}/calendar.ics",
        reminder_offsets=e.reminder_offsets,
    )


async def moves_out(db_session: AsyncSession, moves: list[Move]) -> list[MoveOut]:
    out = []
    for m in moves:
        row: Event | Milestone | None
        if m.kind == "event":
            row = await db_session.get(Event, m.id)
        else:
            row = await db_session.get(Milestone, m.id)
        assert row is not None
        out.append(
            MoveOut(
                type=m.kind,
                id=m.id,
                title=row.title,
                time_zone=row.time_zone,
                old_start=m.old_start,
                new_start=m.new_start,
                old_end=m.old_end,
                new_end=m.new_end,
                new_start_local=local_iso(m.new_start, row.time_zone),
                in_past=m.in_past,
            )
        )
    return out


class EventController(Controller):
    path = "/api/events"
    tags = ["events"]

    @get(
        "/",
        summary="List events",
        description="Published, postponed and cancelled events; members of a process (viewers "
        "too) also see its drafts. `from`/`to` keep events (or series) overlapping the window. "
        "Public answers carry an ETag; send it back in If-None-Match to get 304 while nothing "
        "changed.",
        responses={
            200: ResponseSpec(data_container=EventPage, description="A page of events"),
            **documented(400, 401),
        },
    )
    async def list_events(
        self,
        request: Request[Any, Any, Any],
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        answer_cache: NamedDependency[AnswerCache],
        process_id: Annotated[int | None, QueryParameter(ge=1, le=ID_MAX)] = None,
        kind: FromQuery[svc.EventKind | None] = None,
        status: FromQuery[svc.EventStatus | None] = None,
        from_: Annotated[AwareDatetime | None, QueryParameter(name="from")] = None,
        to: Annotated[AwareDatetime | None, QueryParameter(name="to")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 500,
        offset: Annotated[int, QueryParameter(ge=0, le=ID_MAX)] = 0,
    ) -> Response[bytes]:
        check_aware("from", from_)
        check_aware("to", to)
        if from_ is not None and to is not None and to <= from_:
            raise Invalid("to", "must be after from")
        flt = svc.EventFilter(process_id, kind, status, from_, to, limit, offset)
        if caller is not None:
            async with db.reader() as session:
                visible = await processes_where(session, caller)
                rows = await session.scalars(svc.list_query(flt, visible))
                page = EventPage(items=[event_out(e) for e in rows], limit=limit, offset=offset)
            return Response(msgspec.json.encode(page), media_type=MediaType.JSON)
        # The public answer changes only when the calendar does.

        async def build(session: AsyncSession) -> bytes:
            rows = await session.scalars(svc.list_query(flt, set()))
            page = EventPage(items=[event_out(e) for e in rows], limit=limit, offset=offset)
            return msgspec.json.encode(page)

        return await cached_response(request, db, answer_cache, CALENDAR, flt, build)

    @get("/{event_id:int}", summary="Read one event", responses=documented(401, 404))
    async def get_event(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        event_id: PathId,
    ) -> EventOut:
        async with db.reader() as session:
            visible = await processes_where(session, caller)
            return event_out(await svc.get_event(session, event_id, visible))

    @post(
        "/",
        summary="Create an event",
        description="With `relative_to_id` and `placement`, the start (and the end, if the "
        "placement sets one) are computed from the rule and follow that event when it moves.",
        responses=documented(400, 401, 403, 409, 413),
    )
    async def create_event(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        worker: NamedDependency[OutboxWorker],
        data: JSONBody[svc.EventCreate],
    ) -> EventOut:
        who = authenticated(caller)
        async with db.writer.begin() as session:
            await require_role(session, who, data.process_id, "organizer")
            out = event_out(await svc.create_event(session, data, utc_now()))
        worker.arm(earliest_planned(session))
        return out

    @patch(
        "/{event_id:int}",
        summary="Change an event",
        description="Only the fields sent change. A new `start` or `end` is a move: events "
        "and milestones placed relative to this one follow, and the answer lists them.",
        responses=documented(400, 401, 403, 404, 409, 413),
    )
    async def update_event(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        settings: NamedDependency[Settings],
        worker: NamedDependency[OutboxWorker],
        event_id: PathId,
        data: JSONBody[svc.EventPatch],
    ) -> EventChange:
        who = authenticated(caller)
        async with db.writer.begin() as session:
            event = await svc.get_event(session, event_id, await processes_where(session, who))
            await require_role(session, who, event.process_id, "organizer")
            hold = timedelta(minutes=settings.registration_hold_minutes)
            moves = await svc.update_event(session, event, data, utc_now(), hold)
            change = EventChange(event=event_out(event), moved=await moves_out(session, moves))
        worker.kick()
        worker.arm(earliest_planned(session))
        return change

    @post(
        "/{event_id:int}/move",
        summary="Move an event and what depends on it",
        description="Everything placed relative to the event moves by its own rule, except "
        "items pinned by hand. With `preview` nothing is written. An event that was itself "
        "relative to another is pinned by the move unless `pin` is false.",
        status_code=200,
        responses=documented(400, 401, 403, 404, 413),
    )
    async def move_event(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        worker: NamedDependency[OutboxWorker],
        event_id: PathId,
        data: JSONBody[MoveRequest],
    ) -> MoveResult:
        who = authenticated(caller)
        now = utc_now()
        async with db.writer.begin() as session:
            event = await svc.get_event(session, event_id, await processes_where(session, who))
            await require_role(session, who, event.process_id, "organizer")
            old_times = (event.starts_at, event.ends_at)
            moves = await svc.move_event(
                session, event, data.start, data.end, now, pin=data.pin, preview=data.preview
            )
            if not data.preview:
                event.sequence += 1
                await session.flush()
                await svc.follow_up(
                    session, event, moves, now, old_status=event.status, old_times=old_times
                )
            result = MoveResult(preview=data.preview, moved=await moves_out(session, moves))
        worker.kick()
        worker.arm(earliest_planned(session))
        return result

    @delete("/{event_id:int}", summary="Delete an event", responses=documented(401, 403, 404))
    async def delete_event(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        event_id: PathId,
    ) -> None:
        who = authenticated(caller)
        async with db.writer.begin() as session:
            event = await svc.get_event(session, event_id, await processes_where(session, who))
            await require_role(session, who, event.process_id, "organizer")
            await svc.delete_event(session, event)
