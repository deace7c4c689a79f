"""HTTP routes for the pledge dashboards: list with filters, counts, CSV export.

Pledges come from public registries, so reading them is public. Every route takes the same
filters; withdrawn pledges (gone from their source) are left out unless ``state`` asks.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, QueryParameter
from litestar.response import Stream
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler import pledges as svc
from scheduler.answer_cache import PLEDGES, AnswerCache, cached_answer, cached_response
from scheduler.database import Database
from scheduler.errors import NotFound, documented
from scheduler.gc_pause import collector_paused
from scheduler.models import Pledge

PledgeType = Literal["single", "common", "partnership", "matching"]
_CSV_BATCH = 1000


class PledgeOut(msgspec.Struct):
    id: int
    feed_id: int
    process_id: int
    source_id: str
    title: str
    pledger_name: str
    pledger_type: str
    country: str | None
    region: str
    pledge_type: str
    matches_source_id: str | None
    form: str
    objectives: list[int]
    status: str
    submitted_at: datetime | None
    source_updated_at: datetime | None
    source_url: str
    withdrawn: bool
    withdrawn_at: Annotated[
        datetime | None,
        msgspec.Meta(description="When a sync found it gone from the source (else null)"),
    ]
    first_seen_at: Annotated[
        datetime, msgspec.Meta(description="When a sync first wrote this pledge")
    ]
    last_seen_at: Annotated[
        datetime,
        msgspec.Meta(
            description="When a sync last wrote it: new, changed, or back after a "
            "withdrawal. Syncs leave unchanged pledges as they are, so this may be older "
            "than the feed's latest successful run, which had every active pledge (a run "
            "with records whose id cannot be read withdraws nothing, and says so)."
        ),
    ]


class PledgePage(msgspec.Struct):
    items: list[PledgeOut]
    total: int
    limit: int
    offset: int


def _stats_answer(
    flt: svc.PledgeFilter, interval: str
) -> tuple[Hashable, Callable[[AsyncSession], Awaitable[bytes]]]:
    """The cache key of the counts for ``flt``, and how to build them."""

    async def build(session: AsyncSession) -> bytes:
        return msgspec.json.encode(await svc.stats(session, flt, interval))

    return ("pledge-stats", flt, interval), build


async def cached_stats(
    db: Database, cache: AnswerCache, flt: svc.PledgeFilter, interval: str = "month"
) -> svc.Stats:
    """The counts the API answers with, from the same cache (for the dashboard page)."""
    key, build = _stats_answer(flt, interval)
    answer = await cached_answer(db, cache, PLEDGES, key, build)
    return msgspec.json.decode(answer.body, type=svc.Stats)


def pledge_out(p: Pledge) -> PledgeOut:
    return PledgeOut(
        id=p.id,
        feed_id=p.feed_id,
        process_id=p.process_id,
        source_id=p.source_id,
        title=p.title,
        pledger_name=p.pledger_name,
        pledger_type=p.pledger_type,
        country=p.country,
        region=p.region,
        pledge_type=p.pledge_type,
        matches_source_id=p.matches_source_id,
        form=p.form,
        objectives=list(p.objectives or []),
        status=p.status,
        submitted_at=p.submitted_at,
        source_updated_at=p.source_updated_at,
        source_url=p.source_url,
        withdrawn=p.withdrawn_at is not None,
        withdrawn_at=p.withdrawn_at,
        first_seen_at=p.first_seen_at,
        last_seen_at=p.last_seen_at,
    )


def pledge_filter(
    process_id: Annotated[int | None, QueryParameter(ge=1)] = None,
    feed_id: Annotated[int | None, QueryParameter(ge=1)] = None,
    region: Annotated[str | None, QueryParameter(max_length=100)] = None,
    country: Annotated[
        str | None, QueryParameter(pattern=r"^[A-Za-z]{3}$", description="ISO 3166-1 alpha-3")
    ] = None,
    pledger_type: Annotated[svc.PledgerType | None, QueryParameter()] = None,
    pledge_type: Annotated[PledgeType | None, QueryParameter()] = None,
    form: Annotated[svc.PledgeForm | None, QueryParameter()] = None,
    objective: Annotated[
        int | None, QueryParameter(ge=1, le=23, description="GCM objective 1-23")
    ] = None,
    status: Annotated[str | None, QueryParameter(max_length=40)] = None,
    q: Annotated[
        str | None,
        QueryParameter(max_length=200, description="Text in the title or the pledger's name"),
    ] = None,
    state_: Annotated[
        svc.PledgeState,
        QueryParameter(
            name="state",
            description="active (default), withdrawn (gone from the source), or all",
        ),
    ] = "active",
) -> svc.PledgeFilter:
    return svc.PledgeFilter(
        process_id=process_id,
        feed_id=feed_id,
        region=region,
        country=country,
        pledger_type=pledger_type,
        pledge_type=pledge_type,
        form=form,
        objective=objective,
        status=status,
        text=q.strip() if q and q.strip() else None,
        state=state_,
    )


class PledgeController(Controller):
    path = "/api/pledges"
    tags = ["pledges"]
    dependencies = {"flt": Provide(pledge_filter, sync_to_thread=False)}

    @get(
        "/",
        summary="List pledges",
        description="Filter by process, feed, region, country, pledger type, pledge type, "
        "form, GCM objective, status and text (`q`); in the order they were first seen.",
        responses=documented(400),
    )
    async def list_pledges(
        self,
        db: NamedDependency[Database],
        flt: NamedDependency[svc.PledgeFilter],
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        offset: Annotated[int, QueryParameter(ge=0)] = 0,
    ) -> PledgePage:
        async with db.reader() as session:
            total = await svc.count(session, flt)
            rows = await session.scalars(svc.list_query(flt).limit(limit).offset(offset))
            return PledgePage([pledge_out(p) for p in rows], total, limit, offset)

    @get(
        "/stats",
        summary="Pledge counts for dashboards",
        description="For the pledges the filters keep: counts by region, country, pledger "
        "type, form, status and GCM objective (a pledge counts once for each of its "
        "objectives), and by month or year of submission (UTC). The answer carries an ETag "
        "and stays the same until a feed sync changes pledges: send it back in "
        "If-None-Match for a 304.",
        responses={
            200: ResponseSpec(data_container=svc.Stats, description="The counts"),
            **documented(400),
        },
    )
    async def stats(
        self,
        request: Request[Any, Any, Any],
        db: NamedDependency[Database],
        answer_cache: NamedDependency[AnswerCache],
        flt: NamedDependency[svc.PledgeFilter],
        interval: Annotated[Literal["month", "year"], QueryParameter()] = "month",
    ) -> Response[bytes]:
        key, build = _stats_answer(flt, interval)
        return await cached_response(request, db, answer_cache, PLEDGES, key, build)

    @get(
        "/export.csv",
        summary="Export pledges as CSV",
        description="Every pledge the filters keep, streamed; objectives are separated by "
        "semicolons. Cells that a spreadsheet would run as a formula start with a quote.",
        media_type="text/csv; charset=utf-8",
        responses=documented(400),
    )
    async def export_csv(
        self, db: NamedDependency[Database], flt: NamedDependency[svc.PledgeFilter]
    ) -> Stream:
        async def rows() -> AsyncIterator[bytes]:
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            writer.writerow(svc.CSV_COLUMNS)
            async with db.reader() as session:
                query = svc.csv_query(flt, db.writer_engine.dialect.name)
                result = await session.stream(query.execution_options(yield_per=_CSV_BATCH))
                async for batch in result.partitions(_CSV_BATCH):
                    with collector_paused():  # the batch's cells: many lists, soon let go
                        writer.writerows(map(svc.csv_cells, batch))
                        del batch
                    yield buffer.getvalue().encode()
                    buffer.seek(0)
                    buffer.truncate()
            if buffer.tell():
                yield buffer.getvalue().encode()

        return Stream(
            rows(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="pledges.csv"'},
        )

    @get("/{pledge_id:int}", summary="Read one pledge", responses=documented(404))
    async def get_pledge(
        self, db: NamedDependency[Database], pledge_id: FromPath[int]
    ) -> PledgeOut:
        async with db.reader() as session:
            pledge = await session.get(Pledge, pledge_id)
            if pledge is None:
                raise NotFound(f"no pledge {pledge_id}")
            return pledge_out(pledge)
