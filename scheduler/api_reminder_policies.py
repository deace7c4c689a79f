"""HTTP routes for a process's reminder policies (members read them, organizers set them)."""

from __future__ import annotations

import msgspec
from litestar import Controller, get, put
from litestar.di import NamedDependency
from litestar.params import JSONBody

from scheduler import reminder_policies as svc
from scheduler.database import Database
from scheduler.errors import documented
from scheduler.fields import PathId
from scheduler.models import utc_now
from scheduler.outbox import OutboxWorker
from scheduler.permissions import Caller, authenticated, require_role
from scheduler.processes import get_process
from scheduler.reminders import earliest_planned


class PolicyOut(msgspec.Struct):
    kind: str
    offsets: list[int]
    audiences: list[str]
    source: str  # "process" (set here) or "default"


class PoliciesOut(msgspec.Struct):
    process_id: int
    policies: list[PolicyOut]


def policies_out(process_id: int, rows: list[svc.Effective]) -> PoliciesOut:
    return PoliciesOut(
        process_id,
        [
            PolicyOut(r.kind, list(r.policy.offsets), list(r.policy.audiences), r.source)
            for r in rows
        ],
    )


class ReminderPolicyController(Controller):
    path = "/api/processes/{process_id:int}/reminder-policies"
    tags = ["reminders"]

    @get(
        "/",
        summary="The process's reminder policies (members)",
        description="One per kind of event, and `milestone` for its deadlines: offsets in "
        "minutes before the start (or due time) and who is reminded. Kinds the process has "
        "not set show the defaults (10080, 1440 and 60 minutes; everyone).",
        responses=documented(401, 403, 404),
    )
    async def get_policies(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        process_id: PathId,
    ) -> PoliciesOut:
        who = authenticated(caller)
        async with db.reader() as session:
            await get_process(session, process_id)
            await require_role(session, who, process_id, "viewer")
            return policies_out(process_id, await svc.effective(session, process_id))

    @put(
        "/",
        summary="Replace the process's reminder policies (organizers)",
        description="Kinds left out go back to the defaults. Offsets are whole minutes "
        "(1 to 525600, i.e. 365 days), at most 10 per policy, each once; audiences are "
        "registrants, speakers and organizers for events, subscribers and organizers for "
        "`milestone`. Every upcoming reminder of the process is planned again; an event's "
        "or milestone's own `reminder_offsets` still win over its policy.",
        responses=documented(400, 401, 403, 404, 413),
    )
    async def put_policies(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        worker: NamedDependency[OutboxWorker],
        process_id: PathId,
        data: JSONBody[svc.PoliciesIn],
    ) -> PoliciesOut:
        who = authenticated(caller)
        async with db.writer.begin() as session:
            await get_process(session, process_id)
            await require_role(session, who, process_id, "organizer")
            out = policies_out(process_id, await svc.replace(session, process_id, data, utc_now()))
        worker.arm(earliest_planned(session))
        return out
