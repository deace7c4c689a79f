"""HTTP routes for processes: create, read, change, timeline, and instantiate a template."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

import msgspec
from litestar import Controller, get, patch, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, QueryParameter
from sqlalchemy import select

from scheduler import processes as svc
from scheduler.api_events import EventOut, event_out
from scheduler.api_milestones import MilestoneOut, milestone_out
from scheduler.cycle_templates import Template
from scheduler.database import Database
from scheduler.errors import Invalid, documented
from scheduler.fields import AwareDatetime, PathId, check_aware
from scheduler.models import Process, utc_now
from scheduler.permissions import (
    Caller,
    authenticated,
    processes_where,
    require_role,
    require_unscoped,
)
from scheduler.timezones import local_iso


class ProcessOut(msgspec.Struct):
    id: int
    slug: str
    name: str
    description: str
    time_zone: str
    languages: list[str]
    created_at: datetime
    updated_at: datetime
    timeline_url: str
    calendar_url: str


class TimelineItem(msgspec.Struct):
    type: str
    id: int
    kind: str
    title: str
    status: str
    time_zone: str
    start: datetime
    end: datetime | None
    start_local: str
    end_local: str | None
    parent_id: int | None
    relative_to_id: int | None
    pinned: bool
    recurring: bool


class Timeline(msgspec.Struct):
    process: ProcessOut
    window_start: datetime
    window_end: datetime
    items: list[TimelineItem]


class Instantiated(msgspec.Struct):
    template: str
    events: list[EventOut]
    milestones: list[MilestoneOut]


class TemplateOut(msgspec.Struct):
    key: str
    name: str
    description: str
    time_zone: str
    anchor: str
    events: list[str]
    milestones: list[str]


def process_out(p: Process) -> ProcessOut:
    return ProcessOut(
        id=p.id,
        slug=p.slug,
        name=p.name,
        description=p.description,
        time_zone=p.time_zone,
        languages=p.languages,
        created_at=p.created_at,
        updated_at=p.updated_at,
        timeline_url=f"/api/processes/{p.id}/timeline",
        calendar_url=f"/api/processes/{p.id}/calendar.ics",
    )


class ProcessController(Controller):
    path = "/api/processes"
    tags = ["processes"]

    @get("/", summary="List processes")
    async def list_processes(self, db: NamedDependency[Database]) -> list[ProcessOut]:
        async with db.reader() as session:
            rows = await session.scalars(select(Process).order_by(Process.name))
            return [process_out(p) for p in rows]

    @get("/{process_id:int}", summary="Read one process", responses=documented(404))
    async def get_process(self, db: NamedDependency[Database], process_id: PathId) -> ProcessOut:
        async with db.reader() as session:
            return process_out(await svc.get_process(session, process_id))

    @post(
        "/",
        summary="Create a process",
        description="The organizer who creates a process becomes its owner. A read-only "
        "token, or one scoped to a process, may not create processes (403).",
        responses=documented(400, 401, 403, 409, 413),
    )
    async def create_process(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        data: JSONBody[svc.ProcessCreate],
    ) -> ProcessOut:
        who = require_unscoped(caller, "create processes")
        async with db.writer.begin() as session:
            return process_out(await svc.create_process(session, data, who.organizer_id))

    @patch(
        "/{process_id:int}",
        summary="Change a process (organizers)",
        responses=documented(400, 401, 403, 404, 413),
    )
    async def update_process(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        process_id: PathId,
        data: JSONBody[svc.ProcessPatch],
    ) -> ProcessOut:
        who = authenticated(caller)
        async with db.writer.begin() as session:
            process = await svc.get_process(session, process_id)
            await require_role(session, who, process.id, "organizer")
            await svc.update_process(session, process, data)
            return process_out(process)

    @get(
        "/{process_id:int}/timeline",
        summary="The process's events and milestones in order",
        description="Each item has UTC and local times. Recurring events appear once per "
        "occurrence. Without `from`/`to`, the window covers every dated item.",
        responses=documented(400, 401, 404),
    )
    async def get_timeline(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        process_id: PathId,
        from_: Annotated[AwareDatetime | None, QueryParameter(name="from")] = None,
        to: Annotated[AwareDatetime | None, QueryParameter(name="to")] = None,
    ) -> Timeline:
        check_aware("from", from_)
        check_aware("to", to)
        start = from_ or datetime(1970, 1, 1, tzinfo=utc_now().tzinfo)
        end = to or utc_now() + timedelta(days=365 * 20)
        if end <= start:
            raise Invalid("to", "must be after from")
        async with db.reader() as session:
            process = await svc.get_process(session, process_id)
            visible = await processes_where(session, caller)
            entries = await svc.timeline(session, process, visible, start, end)
            items = [
                TimelineItem(
                    type=e.type,
                    id=e.id,
                    kind=e.kind,
                    title=e.title,
                    status=e.status,
                    time_zone=e.time_zone,
                    start=e.start,
                    end=e.end,
                    start_local=local_iso(e.start, e.time_zone),
                    end_local=local_iso(e.end, e.time_zone) if e.end else None,
                    parent_id=e.parent_id,
                    relative_to_id=e.relative_to_id,
                    pinned=e.pinned,
                    recurring=e.recurring,
                )
                for e in entries
            ]
            return Timeline(process_out(process), start, end, items)

    @post(
        "/{process_id:int}/instantiate",
        summary="Build a cycle from a template (organizers)",
        description="Creates the template's events and milestones around the anchor "
        "(`anchor_start`, or `anchor_date` at the template's hour). Each item stays placed "
        "relative to its reference, so moving the anchor later moves the cycle.",
        responses=documented(400, 401, 403, 404, 413),
    )
    async def instantiate(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        templates: NamedDependency[dict[str, Template]],
        process_id: PathId,
        data: JSONBody[svc.Instantiate],
    ) -> Instantiated:
        who = authenticated(caller)
        async with db.writer.begin() as session:
            process = await svc.get_process(session, process_id)
            await require_role(session, who, process.id, "organizer")
            events, milestones = await svc.instantiate(session, process, templates, data, utc_now())
            return Instantiated(
                template=data.template,
                events=[event_out(e) for e in events],
                milestones=[milestone_out(m) for m in milestones],
            )


class TemplateController(Controller):
    path = "/api/templates"
    tags = ["processes"]

    @get("/", summary="The cycle templates that can be instantiated")
    async def list_templates(
        self, templates: NamedDependency[dict[str, Template]]
    ) -> list[TemplateOut]:
        return [
            TemplateOut(
                key=t.key,
                name=t.name,
                description=t.description,
                time_zone=t.time_zone,
                anchor=t.anchor,
                events=[i.key for i in t.items if i.category == "event"],
                milestones=[i.key for i in t.items if i.category == "milestone"],
            )
            for t in templates.values()
        ]
