"""Liveness and readiness in one answer: is the database reachable, is the clock running."""

from __future__ import annotations

import msgspec
from litestar import Response, get
from litestar.di import NamedDependency
from sqlalchemy import text

from scheduler import __version__
from scheduler.clock import Clock
from scheduler.database import Database

_PING = text("SELECT 1")  # built once, like every statement run on each request


class Health(msgspec.Struct):
    status: str
    database: str
    scheduler: str
    version: str


@get("/health", tags=["health"], summary="Database and scheduler status", cache=False)
async def health(
    db: NamedDependency[Database], clock: NamedDependency[Clock | None]
) -> Response[Health]:
    try:
        async with db.reader_engine.connect() as conn:
            await conn.execute(_PING)
        database = "up"
    except Exception:  # any failure means "down"; the reason is in the log
        database = "down"
    if clock is None:
        scheduler = "disabled"
    else:
        scheduler = "up" if clock.running else "down"
    ok = database == "up" and scheduler != "down"
    body = Health("ok" if ok else "degraded", database, scheduler, __version__)
    return Response(body, status_code=200 if ok else 503)
