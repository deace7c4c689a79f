"""Cached public answers, each behind a database counter of the rows it is built from.

Two families of rows have a counter: the calendar (events, milestones, processes) and the
pledges (bumped by feed syncs, and by deleting a feed or a process). Every flush that
touches such rows bumps the counter in the same transaction. A reader asks for the counter
(one tiny query) and reuses a finished answer, bytes and all, while the counter has not
moved. The counter lives in the database, so the cache is exact on every node of a
cluster; only answers that are the same for every caller are cached (organizers also see
drafts in the calendar).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from litestar import Request, Response
from litestar.enums import MediaType
from sqlalchemy import Table, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.sql import Executable

from scheduler.models import ChangeCounter, Event, Feed, Milestone, Pledge, Process

if TYPE_CHECKING:
    from scheduler.database import Database

CALENDAR = "calendar"
PLEDGES = "pledges"
_CALENDAR_ROWS = (Event, Milestone, Process)
_PLEDGE_HOLDERS = (Feed, Process)  # deleting one deletes its pledges


def bump_on_change(session: Session, _context: Any, _instances: Any) -> None:
    """``before_flush`` hook: bump the counter of each family this flush changes."""
    changed: set[str] = set()
    for obj in (*session.new, *session.dirty):
        if isinstance(obj, _CALENDAR_ROWS):
            changed.add(CALENDAR)
        elif isinstance(obj, Pledge):
            changed.add(PLEDGES)
    for obj in session.deleted:
        if isinstance(obj, _CALENDAR_ROWS):
            changed.add(CALENDAR)
        if isinstance(obj, (Pledge, *_PLEDGE_HOLDERS)):
            changed.add(PLEDGES)
    for name in sorted(changed):
        session.execute(_bump(name, session.get_bind().dialect.name))


async def bump(session: AsyncSession, name: str) -> None:
    """For writes that bypass the ORM's flush (a feed sync's set-based statements)."""
    await session.execute(_bump(name, session.get_bind().dialect.name))


def _bump(name: str, dialect: str) -> Executable:
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    # An upsert, so a missing row (a restored or emptied table) cannot stop the count.
    return (
        insert(ChangeCounter)
        .values(name=name, version=1)
        .on_conflict_do_update(
            index_elements=[ChangeCounter.name],
            set_={"version": ChangeCounter.version + 1},
        )
    )


# Built once: making the statement cost more than running it. Core columns, not the ORM
# entity: the ORM's compile step is not needed to read one integer.
_COUNTERS = cast(Table, ChangeCounter.__table__)
_VERSIONS = {
    name: select(_COUNTERS.c.version).where(_COUNTERS.c.name == name)
    for name in (CALENDAR, PLEDGES)
}
_VERSION_SQL = "SELECT version FROM change_counters WHERE name = ?"
_PG_VERSION_SQL = "SELECT version FROM change_counters WHERE name = $1"


async def version(session: AsyncSession, name: str) -> int:
    """The counter as the session's transaction sees it."""
    return int(await session.scalar(_VERSIONS[name]) or 0)


async def latest_version(db: Database, name: str) -> int:
    """The counter as last committed, read as cheaply as the back end allows.

    A reader that finds no cached answer for this version reads the rows and the counter
    again in one transaction (``version``) and caches them under that version, so an
    answer is never filed under a newer version than its rows.
    """
    if db.probe is not None:
        return int(db.probe.scalar(_VERSION_SQL, (name,)) or 0)
    if db.pg_probe is not None:
        return int(await db.pg_probe.scalar(_PG_VERSION_SQL, name) or 0)
    async with db.reader_engine.connect() as conn:
        return int(await conn.scalar(_VERSIONS[name]) or 0)


def etag(version: int, key: Hashable) -> str:
    digest = hashlib.blake2b(repr((version, key)).encode(), digest_size=8).hexdigest()
    return f'W/"{version}-{digest}"'


@dataclass(frozen=True, slots=True)
class Answer:
    etag: str
    body: bytes


class AnswerCache:
    """A small LRU of encoded answers and their ETags, keyed by (counter version, request)."""

    def __init__(self, size: int = 512) -> None:
        self._size = size
        self._items: OrderedDict[tuple[int, Hashable], Answer] = OrderedDict()
        self.built = 0  # answers built (each one a query the cache could not spare)

    def get(self, version: int, key: Hashable) -> Answer | None:
        answer = self._items.get((version, key))
        if answer is not None:
            self._items.move_to_end((version, key))
        return answer

    def put(self, version: int, key: Hashable, body: bytes) -> Answer:
        answer = Answer(etag(version, key), body)
        self.built += 1
        self._items[(version, key)] = answer
        self._items.move_to_end((version, key))
        while len(self._items) > self._size:
            self._items.popitem(last=False)
        return answer


async def cached_answer(
    db: Database,
    cache: AnswerCache,
    counter: str,
    key: Hashable,
    build: Callable[[AsyncSession], Awaitable[bytes]],
) -> Answer:
    """The answer for ``key``: from the cache while the counter has not moved, else built."""
    _, answer = await _cached(db, cache, counter, key)
    return answer if answer is not None else await _build(db, cache, counter, key, build)


async def cached_response(
    request: Request[Any, Any, Any],
    db: Database,
    cache: AnswerCache,
    counter: str,
    key: Hashable,
    build: Callable[[AsyncSession], Awaitable[bytes]],
) -> Response[bytes]:
    """``cached_answer`` as a JSON response with its ETag, or 304 when the client holds it
    (known without building it)."""
    latest, answer = await _cached(db, cache, counter, key)
    tag = etag(latest, key) if answer is None else answer.etag
    if request.headers.get("if-none-match") == tag:
        return Response(b"", status_code=304, headers={"ETag": tag})
    if answer is None:
        answer = await _build(db, cache, counter, key, build)
    return Response(answer.body, media_type=MediaType.JSON, headers={"ETag": answer.etag})


async def _cached(
    db: Database, cache: AnswerCache, counter: str, key: Hashable
) -> tuple[int, Answer | None]:
    """The counter as last committed, and the answer cached under it (if any)."""
    latest = await latest_version(db, counter)
    return latest, cache.get(latest, key)


async def _build(
    db: Database,
    cache: AnswerCache,
    counter: str,
    key: Hashable,
    build: Callable[[AsyncSession], Awaitable[bytes]],
) -> Answer:
    """Built and filed under the counter its rows were read with (same transaction)."""
    async with db.reader() as session:
        rows_version = await version(session, counter)
        body = await build(session)
    return cache.put(rows_version, key, body)
