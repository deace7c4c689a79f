"""HTTP routes for pledge feeds: register, change, sync by hand, runs and quarantine.

Members only, and only the feeds of their own processes (others' feeds answer 404): any
member (viewers too) reads them, organizers and owners change and sync them. The
auth header is write-only: answers give its name and whether one is set, never its value.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from sqlalchemy import func, select

from scheduler import feeds as svc
from scheduler.database import Database
from scheduler.errors import Conflict, documented
from scheduler.models import Feed, FeedRun, QuarantinedRecord, utc_now
from scheduler.permissions import Caller, authenticated, processes_where, require_role
from scheduler.pledge_feed import FeedRunner
from scheduler.settings import Settings


class FeedRunOut(msgspec.Struct):
    id: int
    feed_id: int
    started_at: datetime
    finished_at: datetime | None
    outcome: str
    http_status: int | None
    new: int
    updated: int
    unchanged: int
    withdrawn: int
    quarantined: int
    duration_ms: int | None
    error: str


class FeedOut(msgspec.Struct):
    id: int
    process_id: int
    name: str
    url: str
    format: str
    interval_seconds: int | None
    cron: str | None
    field_map: dict[str, str]
    auth_header_name: str
    has_auth_header: bool
    enabled: bool
    next_run_at: datetime | None
    running: bool
    last_run: FeedRunOut | None
    created_at: datetime
    updated_at: datetime
    runs_url: str


class QuarantinedOut(msgspec.Struct):
    id: int
    run_id: int
    source_id: str
    reason: str
    record: dict[str, Any]
    created_at: datetime


def run_out(r: FeedRun) -> FeedRunOut:
    return FeedRunOut(
        id=r.id,
        feed_id=r.feed_id,
        started_at=r.started_at,
        finished_at=r.finished_at,
        outcome=r.outcome,
        http_status=r.http_status,
        new=r.new,
        updated=r.updated,
        unchanged=r.unchanged,
        withdrawn=r.withdrawn,
        quarantined=r.quarantined,
        duration_ms=r.duration_ms,
        error=r.error,
    )


def feed_out(f: Feed, last_run: FeedRun | None, now: datetime) -> FeedOut:
    return FeedOut(
        id=f.id,
        process_id=f.process_id,
        name=f.name,
        url=f.url,
        format=f.format,
        interval_seconds=f.interval_seconds,
        cron=f.cron,
        field_map=dict(f.field_map or {}),
        auth_header_name=f.auth_header_name,
        has_auth_header=bool(f.auth_header_value),
        enabled=f.enabled,
        next_run_at=f.next_run_at if f.enabled else None,
        running=f.lease_until is not None and f.lease_until > now,
        last_run=run_out(last_run) if last_run is not None else None,
        created_at=f.created_at,
        updated_at=f.updated_at,
        runs_url=f"/api/feeds/{f.id}/runs",
    )


async def _last_runs(session: Any, feed_ids: list[int]) -> dict[int, FeedRun]:
    if not feed_ids:
        return {}
    newest = (
        select(func.max(FeedRun.id))
        .where(FeedRun.feed_id.in_(feed_ids))
        .group_by(FeedRun.feed_id)
        .scalar_subquery()
    )
    rows = await session.scalars(select(FeedRun).where(FeedRun.id.in_(newest)))
    return {r.feed_id: r for r in rows}


class FeedController(Controller):
    path = "/api/feeds"
    tags = ["pledge feeds"]

    @get(
        "/",
        summary="List pledge feeds (members)",
        description="The feeds of the requester's processes, with each one's last run.",
        responses=documented(401),
    )
    async def list_feeds(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        process_id: Annotated[int | None, QueryParameter(ge=1)] = None,
    ) -> list[FeedOut]:
        who = authenticated(caller)
        async with db.reader() as session:
            mine = await processes_where(session, who)
            if process_id is not None:
                mine &= {process_id}
            rows = await svc.list_feeds(session, mine)
            last = await _last_runs(session, [f.id for f in rows])
            now = utc_now()
            return [feed_out(f, last.get(f.id), now) for f in rows]

    @post(
        "/",
        summary="Register a pledge feed (organizers)",
        description="`format` is json (pages linked by `next`, or numbered) or csv. Give "
        "`interval_seconds` or `cron` (five fields, UTC). `field_map` maps canonical fields "
        "(id, title, pledger_name, pledger_type, country, region, pledge_type, matches, form, "
        "objectives, status, submitted_at, updated_at, url) to the source's names; dotted "
        "names reach into JSON objects. The URL's host must be in `feeds_allowed_hosts`. "
        "`auth_header` is sent with each request and never shown back.",
        responses=documented(400, 401, 403, 409, 413),
    )
    async def create_feed(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        settings: NamedDependency[Settings],
        feed_runner: NamedDependency[FeedRunner],
        data: JSONBody[svc.FeedCreate],
    ) -> FeedOut:
        who = authenticated(caller)
        now = utc_now()
        async with db.writer.begin() as session:
            await require_role(session, who, data.process_id, "organizer")
            feed = await svc.create_feed(
                session,
                data,
                svc.parse_hosts(settings.feeds_allowed_hosts),
                settings.feeds_min_interval_seconds,
                now,
            )
            out = feed_out(feed, None, now)
        await feed_runner.feed_changed(out.id)
        return out

    @get("/{feed_id:int}", summary="Read one feed (members)", responses=documented(401, 404))
    async def get_feed(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        feed_id: FromPath[int],
    ) -> FeedOut:
        who = authenticated(caller)
        async with db.reader() as session:
            feed = await svc.get_feed(session, feed_id, await processes_where(session, who))
            last = await _last_runs(session, [feed.id])
            return feed_out(feed, last.get(feed.id), utc_now())

    @patch(
        "/{feed_id:int}",
        summary="Change a feed (organizers)",
        description="Only the fields sent change; `auth_header: null` removes the header. A "
        "new URL, format or field map forgets the stored ETag, so the next run reads "
        "everything.",
        responses=documented(400, 401, 403, 404, 409, 413),
    )
    async def update_feed(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        settings: NamedDependency[Settings],
        feed_runner: NamedDependency[FeedRunner],
        feed_id: FromPath[int],
        data: JSONBody[svc.FeedPatch],
    ) -> FeedOut:
        who = authenticated(caller)
        now = utc_now()
        async with db.writer.begin() as session:
            feed = await svc.get_feed(session, feed_id, await processes_where(session, who))
            await require_role(session, who, feed.process_id, "organizer")
            await svc.update_feed(
                session,
                feed,
                data,
                svc.parse_hosts(settings.feeds_allowed_hosts),
                settings.feeds_min_interval_seconds,
                now,
            )
            last = await _last_runs(session, [feed.id])
            out = feed_out(feed, last.get(feed.id), now)
        await feed_runner.feed_changed(feed_id)
        return out

    @delete(
        "/{feed_id:int}",
        summary="Delete a feed and its pledges (organizers)",
        description="Its runs and pledges go too; to keep the pledges, disable the feed.",
        responses=documented(401, 403, 404),
    )
    async def delete_feed(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        feed_runner: NamedDependency[FeedRunner],
        feed_id: FromPath[int],
    ) -> None:
        who = authenticated(caller)
        async with db.writer.begin() as session:
            feed = await svc.get_feed(session, feed_id, await processes_where(session, who))
            await require_role(session, who, feed.process_id, "organizer")
            await svc.delete_feed(session, feed)
        await feed_runner.feed_changed(feed_id)

    @post(
        "/{feed_id:int}/sync",
        summary="Sync a feed now (organizers)",
        description="Runs at once, whatever the schedule, and answers with the run (its "
        "outcome may be failed: see `error`). 409 while another run of the feed is going on.",
        status_code=200,
        responses=documented(401, 403, 404, 409),
    )
    async def sync_feed(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        feed_runner: NamedDependency[FeedRunner],
        feed_id: FromPath[int],
    ) -> FeedRunOut:
        who = authenticated(caller)
        async with db.reader() as session:
            feed = await svc.get_feed(session, feed_id, await processes_where(session, who))
            await require_role(session, who, feed.process_id, "organizer")
        try:
            run = await feed_runner.run(feed_id, manual=True)
        except svc.Busy:
            raise Conflict("a sync of this feed is already running") from None
        assert run is not None
        await feed_runner.feed_changed(feed_id)
        return run_out(run)

    @get(
        "/{feed_id:int}/runs",
        summary="A feed's runs, newest first (members)",
        description="Counts (new, updated, unchanged, withdrawn, quarantined), duration and "
        "outcome: success, not_modified (the server answered 304), failed (see `error`) or "
        "running.",
        responses=documented(400, 401, 404),
    )
    async def list_runs(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        feed_id: FromPath[int],
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        offset: Annotated[int, QueryParameter(ge=0)] = 0,
    ) -> list[FeedRunOut]:
        who = authenticated(caller)
        async with db.reader() as session:
            await svc.get_feed(session, feed_id, await processes_where(session, who))
            rows = await session.scalars(
                select(FeedRun)
                .where(FeedRun.feed_id == feed_id)
                .order_by(FeedRun.id.desc())
                .limit(limit)
                .offset(offset)
            )
            return [run_out(r) for r in rows]

    @get(
        "/{feed_id:int}/quarantine",
        summary="Records a run set aside, with the reason (members)",
        description="Of the given run, else of the latest run that read the feed.",
        responses=documented(400, 401, 404),
    )
    async def quarantine(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        feed_id: FromPath[int],
        run_id: Annotated[int | None, QueryParameter(ge=1)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        offset: Annotated[int, QueryParameter(ge=0)] = 0,
    ) -> list[QuarantinedOut]:
        who = authenticated(caller)
        async with db.reader() as session:
            await svc.get_feed(session, feed_id, await processes_where(session, who))
            if run_id is None:
                run_id = await session.scalar(
                    select(func.max(FeedRun.id)).where(
                        FeedRun.feed_id == feed_id, FeedRun.outcome == "success"
                    )
                )
            rows = await session.scalars(
                select(QuarantinedRecord)
                .where(QuarantinedRecord.feed_id == feed_id, QuarantinedRecord.run_id == run_id)
                .order_by(QuarantinedRecord.id)
                .limit(limit)
                .offset(offset)
            )
            return [
                QuarantinedOut(q.id, q.run_id, q.source_id, q.reason, q.record, q.created_at)
                for q in rows
            ]
