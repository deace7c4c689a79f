"""HTTP routes for a process's members and their roles: members (viewers too) see them,
owners change them. The last owner stays (409)."""

from __future__ import annotations

import msgspec
from litestar import Controller, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from scheduler import members as svc
from scheduler.database import Database
from scheduler.errors import documented
from scheduler.fields import PathId
from scheduler.models import Organizer, ProcessOrganizer, utc_now
from scheduler.outbox import OutboxWorker
from scheduler.permissions import Caller, authenticated, require_role
from scheduler.processes import get_process
from scheduler.reminders import earliest_planned


class MemberOut(msgspec.Struct):
    organizer_id: int
    name: str
    email: str
    role: str


def member_out(member: ProcessOrganizer, organizer: Organizer) -> MemberOut:
    return MemberOut(organizer.id, organizer.name, organizer.email, member.role)


class MemberController(Controller):
    path = "/api/processes/{process_id:int}/members"
    tags = ["members"]

    @get(
        "/",
        summary="The process's members and their roles (members)",
        description="Roles, lowest first: `viewer` (reads what organizers read), "
        "`organizer` (also changes the process), `owner` (also manages its members).",
        responses=documented(401, 403, 404),
    )
    async def list_members(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        process_id: PathId,
    ) -> list[MemberOut]:
        who = authenticated(caller)
        async with db.reader() as session:
            await get_process(session, process_id)
            await require_role(session, who, process_id, "viewer")
            return [member_out(m, o) for m, o in await svc.members(session, process_id)]

    @post(
        "/",
        summary="Add a member (owners)",
        description="An existing organizer, by `organizer_id` or by `email` (the address "
        "they have), with a `role`. Organizers and owners with an address are reminded of "
        "the process's upcoming events and deadlines from now on; viewers are not. 409 if "
        "they are a member already.",
        responses=documented(400, 401, 403, 404, 409, 413),
    )
    async def add_member(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        worker: NamedDependency[OutboxWorker],
        process_id: PathId,
        data: JSONBody[svc.MemberAdd],
    ) -> MemberOut:
        who = authenticated(caller)
        async with db.writer.begin() as session:
            await get_process(session, process_id)
            await require_role(session, who, process_id, "owner")
            out = member_out(*await svc.add(session, process_id, data, utc_now()))
        worker.arm(earliest_planned(session))
        return out

    @patch(
        "/{organizer_id:int}",
        summary="Change a member's role (owners)",
        description="409 when it would leave the process without an owner.",
        responses=documented(400, 401, 403, 404, 409, 413),
    )
    async def change_member(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        worker: NamedDependency[OutboxWorker],
        process_id: PathId,
        organizer_id: PathId,
        data: JSONBody[svc.MemberPatch],
    ) -> MemberOut:
        who = authenticated(caller)
        async with db.writer.begin() as session:
            await get_process(session, process_id)
            await require_role(session, who, process_id, "owner")
            member = await svc.change_role(session, process_id, organizer_id, data.role, utc_now())
            out = member_out(*member)
        worker.arm(earliest_planned(session))
        return out

    @delete(
        "/{organizer_id:int}",
        summary="Remove a member (owners)",
        description="Their tokens stay but no longer reach the process; their unsent "
        "organizer reminders for it are cancelled. 409 for the last owner.",
        responses=documented(401, 403, 404, 409),
    )
    async def remove_member(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        process_id: PathId,
        organizer_id: PathId,
    ) -> None:
        who = authenticated(caller)
        async with db.writer.begin() as session:
            await get_process(session, process_id)
            await require_role(session, who, process_id, "owner")
            await svc.remove(session, process_id, organizer_id, utc_now())
