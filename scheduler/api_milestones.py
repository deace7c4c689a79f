"""HTTP routes for milestones (deadlines and decision points)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromQuery, JSONBody, QueryParameter

from scheduler import milestones as svc
from scheduler.database import Database
from scheduler.errors import documented
from scheduler.fields import ID_MAX, AwareDatetime, PathId, check_aware
from scheduler.models import Milestone, utc_now
from scheduler.outbox import OutboxWorker
from scheduler.permissions import Caller, authenticated, processes_where, require_role
from scheduler.reminders import earliest_planned
from scheduler.timezones import local_iso


class MilestoneOut(msgspec.Struct):
    id: int
    uid: str
    process_id: PathId
    event_id: PathId | None
    kind: str
    title: str
    description: str
    due: datetime
    due_local: str
    time_zone: str
    status: str
    relative_to_id: int | None
    placement: dict[str, Any] | None
    pinned: bool
    sequence: int
    created_at: datetime
    updated_at: datetime
    reminder_offsets: list[int] | None


def milestone_out(m: Milestone) -> MilestoneOut:
    return MilestoneOut(
        id=m.id,
        uid=m.uid,
        process_id=m.process_id,
        event_id=m.event_id,
        kind=m.kind,
        title=m.title,
        description=m.description,
        due=m.due_at,
        due_local=local_iso(m.due_at, m.time_zone),
        time_zone=m.time_zone,
        status=m.status,
        relative_to_id=m.relative_to_id,
        placement=m.rule,
        pinned=m.pinned,
        sequence=m.sequence,
        created_at=m.created_at,
        updated_at=m.updated_at,
        reminder_offsets=m.reminder_offsets,
    )


class MilestoneController(Controller):
    path = "/api/milestones"
    tags = ["milestones"]

    @get("/", summary="List milestones", responses=documented(400, 401))
    async def list_milestones(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        process_id: Annotated[int | None, QueryParameter(ge=1, le=ID_MAX)] = None,
        kind: FromQuery[svc.MilestoneKind | None] = None,
        from_: Annotated[AwareDatetime | None, QueryParameter(name="from")] = None,
        to: Annotated[AwareDatetime | None, QueryParameter(name="to")] = None,
    ) -> list[MilestoneOut]:
        check_aware("from", from_)
        check_aware("to", to)
        async with db.reader() as session:
            visible = await processes_where(session, caller)
            rows = await session.scalars(svc.list_query(visible, process_id, kind, from_, to))
            return [milestone_out(m) for m in rows]

    @get("/{milestone_id:int}", summary="Read one milestone", responses=documented(401, 404))
    async def get_milestone(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        milestone_id: PathId,
    ) -> MilestoneOut:
        async with db.reader() as session:
            visible = await processes_where(session, caller)
            return milestone_out(await svc.get_milestone(session, milestone_id, visible))

    @post(
        "/",
        summary="Create a milestone",
        description="With `relative_to_id` and `placement`, `due` is computed from the rule "
        "and follows that event when it moves.",
        responses=documented(400, 401, 403, 413),
    )
    async def create_milestone(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        worker: NamedDependency[OutboxWorker],
        data: JSONBody[svc.MilestoneCreate],
    ) -> MilestoneOut:
        who = authenticated(caller)
        async with db.writer.begin() as session:
            await require_role(session, who, data.process_id, "organizer")
            out = milestone_out(await svc.create_milestone(session, data, utc_now()))
        worker.arm(earliest_planned(session))
        return out

    @patch(
        "/{milestone_id:int}",
        summary="Change a milestone",
        description="A new `due` on a relative milestone pins it unless `pinned` is sent.",
        responses=documented(400, 401, 403, 404, 413),
    )
    async def update_milestone(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        worker: NamedDependency[OutboxWorker],
        milestone_id: PathId,
        data: JSONBody[svc.MilestonePatch],
    ) -> MilestoneOut:
        who = authenticated(caller)
        async with db.writer.begin() as session:
            row = await svc.get_milestone(
                session, milestone_id, await processes_where(session, who)
            )
            await require_role(session, who, row.process_id, "organizer")
            await svc.update_milestone(session, row, data, utc_now())
            out = milestone_out(row)
        worker.arm(earliest_planned(session))
        return out

    @delete(
        "/{milestone_id:int}", summary="Delete a milestone", responses=documented(401, 403, 404)
    )
    async def delete_milestone(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        milestone_id: PathId,
    ) -> None:
        who = authenticated(caller)
        async with db.writer.begin() as session:
            row = await svc.get_milestone(
                session, milestone_id, await processes_where(session, who)
            )
            await require_role(session, who, row.process_id, "organizer")
            await svc.delete_milestone(session, row)
