"""HTTP routes for the audit trail: read it a page at a time, or export it as CSV or NDJSON.

Organizers only (any role), and only the entries of the processes they belong to. Every
route takes the same filters; exports stream, so a long trail never sits in memory.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, get
from litestar.di import NamedDependency, Provide
from litestar.params import QueryParameter
from litestar.response import Stream

from scheduler import audit
from scheduler.csv_safety import csv_safe
from scheduler.database import Database
from scheduler.errors import Invalid, documented
from scheduler.fields import ID_MAX, AwareDatetime, check_aware
from scheduler.permissions import Caller, authenticated, processes_where, require_role

EntityType = Literal[
    "accreditation",
    "api_token",
    "event",
    "feed",
    "membership",
    "milestone",
    "organizer",
    "process",
    "registration",
    "reminder_policy",
    "speaker_request",
    "subscription",
    "webhook",
]
CSV_COLUMNS = (
    "id",
    "at",
    "actor_kind",
    "actor_id",
    "actor_label",
    "process_id",
    "action",
    "entity_type",
    "entity_id",
    "before",
    "after",
    "request_id",
)
EXPORT_BATCH = 1000
_FILTERS = (
    "Filters: `process_id`; `actor` (organizer, system, organizer:<id> or system:<job> such "
    "as system:feed-sync); `action` (event.moved, or event.* for every event action); "
    "`entity_type` and `entity_id`; `from` (inclusive) and `to` (exclusive)."
)


class AuditEntryOut(msgspec.Struct):
    """One change: who, what (before and after: only the fields that changed), when."""

    id: int
    at: datetime
    actor_kind: str
    actor_id: int | None
    actor_label: str
    process_id: int | None
    action: str
    entity_type: str
    entity_id: int
    before: dict[str, Any]
    after: dict[str, Any]
    request_id: str | None


class AuditPage(msgspec.Struct):
    items: list[AuditEntryOut]
    limit: int
    # Pass as before_id for the next (older) page; null on the last page.
    next_before_id: int | None


def entry_out(row: Any) -> AuditEntryOut:
    """From a row of ``audit.query`` (plain columns)."""
    return AuditEntryOut(
        id=row.id,
        at=row.at,
        actor_kind=row.actor_kind,
        actor_id=row.actor_id,
        actor_label=row.actor_label,
        process_id=row.process_id,
        action=row.action,
        entity_type=row.entity_type,
        entity_id=row.entity_id,
        before=row.before or {},
        after=row.after or {},
        request_id=row.request_id,
    )


def csv_cells(entry: AuditEntryOut) -> list[str]:
    """One entry as CSV cells (before and after as JSON), none a spreadsheet would run."""
    cells = []
    for name in CSV_COLUMNS:
        value = getattr(entry, name)
        if value is None:
            text = ""
        elif isinstance(value, datetime):
            text = audit.plain(value)  # as in the JSON: 2030-05-12T14:00:00.123456Z
        elif isinstance(value, dict):
            text = msgspec.json.encode(value, order="sorted").decode()
        else:
            text = str(value)
        cells.append(csv_safe(text))
    return cells


async def export_chunks(
    db: Database, selection: audit.Selection, fmt: Literal["csv", "ndjson"]
) -> AsyncIterator[bytes]:
    """The selection, newest first, a batch at a time from one read transaction (a
    consistent snapshot on both back ends)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if fmt == "csv":
        writer.writerow(CSV_COLUMNS)
        yield buffer.getvalue().encode()
    async with db.reader() as session:
        result = await session.stream(
            audit.query(selection).execution_options(yield_per=EXPORT_BATCH)
        )
        async for batch in result.partitions(EXPORT_BATCH):
            entries = [entry_out(row) for row in batch]
            if fmt == "ndjson":
                yield b"".join(msgspec.json.encode(e) + b"\n" for e in entries)
                continue
            buffer.seek(0)
            buffer.truncate()
            writer.writerows(csv_cells(e) for e in entries)
            yield buffer.getvalue().encode()


async def audit_selection(
    db: NamedDependency[Database],
    caller: NamedDependency[Caller | None],
    process_id: Annotated[int | None, QueryParameter(ge=1, le=ID_MAX)] = None,
    actor: Annotated[
        str | None,
        QueryParameter(
            max_length=220,
            description="organizer, system, organizer:<id> or system:<job>",
        ),
    ] = None,
    action: Annotated[
        str | None,
        QueryParameter(max_length=90, description="e.g. event.moved, or event.* for all"),
    ] = None,
    entity_type: Annotated[EntityType | None, QueryParameter()] = None,
    entity_id: Annotated[int | None, QueryParameter(ge=1, le=ID_MAX)] = None,
    from_: Annotated[AwareDatetime | None, QueryParameter(name="from")] = None,
    to: Annotated[AwareDatetime | None, QueryParameter(name="to")] = None,
) -> audit.Selection:
    """The filters, checked, within the processes the organizer belongs to (401 for the
    public; 403 for a process_id of someone else's)."""
    who = authenticated(caller)
    check_aware("from", from_)
    check_aware("to", to)
    if from_ is not None and to is not None and to <= from_:
        raise Invalid("to", "must be after from")
    kind, actor_id, label = audit.parse_actor(actor) if actor is not None else (None, None, None)
    async with db.reader() as session:
        if process_id is not None:
            await require_role(session, who, process_id, "viewer")
            mine = {process_id}
        else:
            mine = await processes_where(session, who, "viewer")
    return audit.Selection(
        process_ids=frozenset(mine),
        actor_kind=kind,
        actor_id=actor_id,
        actor_label=label,
        action=audit.check_action(action) if action is not None else None,
        entity_type=entity_type,
        entity_id=entity_id,
        since=from_,
        until=to,
    )


class AuditController(Controller):
    path = "/api/audit"
    tags = ["audit"]
    dependencies = {"selection": Provide(audit_selection)}

    @get(
        "/",
        summary="The audit trail, newest first (organizers)",
        description="Every change an organizer or a system job made to the processes the "
        "caller belongs to: who (`actor_kind`, `actor_id`, `actor_label`: the organizer's "
        "name or the job's, e.g. feed-sync, reminder-sweep, retention-purge, waiting-list), "
        "what (`action`, `entity_type`, `entity_id`, and `before`/`after` holding only the "
        'fields that changed; personal data and secrets show as "[redacted]"), when (`at`, '
        f"UTC) and the request (`request_id`). {_FILTERS} Pages: pass `next_before_id` as "
        "`before_id` for the next one.",
        responses=documented(400, 401, 403),
    )
    async def list_entries(
        self,
        db: NamedDependency[Database],
        selection: NamedDependency[audit.Selection],
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        before_id: Annotated[int | None, QueryParameter(ge=1, le=ID_MAX)] = None,
    ) -> AuditPage:
        async with db.reader() as session:
            rows = (await session.execute(audit.query(selection, before_id).limit(limit + 1))).all()
        items = [entry_out(row) for row in rows[:limit]]
        more = len(rows) > limit
        return AuditPage(items, limit, items[-1].id if more else None)

    @get(
        "/export.csv",
        summary="Export the audit trail as CSV (organizers)",
        description="The entries the filters keep, newest first, streamed; `before` and "
        "`after` as JSON. Cells a spreadsheet would run as a formula start with a quote. "
        + _FILTERS,
        media_type="text/csv; charset=utf-8",
        responses=documented(400, 401, 403),
    )
    async def export_csv(
        self, db: NamedDependency[Database], selection: NamedDependency[audit.Selection]
    ) -> Stream:
        return Stream(
            export_chunks(db, selection, "csv"),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="audit.csv"'},
        )

    @get(
        "/export.ndjson",
        summary="Export the audit trail as NDJSON (organizers)",
        description="The entries the filters keep, newest first, streamed: one JSON object "
        "per line, as in the list. " + _FILTERS,
        media_type="application/x-ndjson",
        responses=documented(400, 401, 403),
    )
    async def export_ndjson(
        self, db: NamedDependency[Database], selection: NamedDependency[audit.Selection]
    ) -> Stream:
        return Stream(
            export_chunks(db, selection, "ndjson"),
            media_type="application/x-ndjson",
            headers={"Content-Disposition": 'attachment; filename="audit.ndjson"'},
        )
