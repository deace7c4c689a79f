"""Cached public answers about the calendar (events, milestones, processes).

Every flush that touches an Event, Milestone or Process bumps one database counter in the
same transaction. A reader asks for the counter (one tiny query) and reuses a finished
answer, bytes and all, while the counter has not moved. The counter lives in the database,
so the cache is exact on every node of a cluster; only anonymous answers are cached, as
organizers also see drafts.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from scheduler.models import ChangeCounter, Event, Milestone, Process

if TYPE_CHECKING:
    from scheduler.database import Database

CALENDAR = "calendar"
_TRACKED = (Event, Milestone, Process)


def bump_on_calendar_change(session: Session, _context: Any, _instances: Any) -> None:
    """``before_flush`` hook: the calendar changed, so cached answers are stale."""
    for obj in (*session.new, *session.dirty, *session.deleted):
        if isinstance(obj, _TRACKED):
            insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
            # An upsert, so a missing row (a restored or emptied table) cannot stop the count.
            session.execute(
                insert(ChangeCounter)
                .values(name=CALENDAR, version=1)
                .on_conflict_do_update(
                    index_elements=[ChangeCounter.name],
                    set_={"version": ChangeCounter.version + 1},
                )
            )
            return


# Built once: making the statement cost more than running it. Core columns, not the ORM
# entity: the ORM's compile step is not needed to read one integer.
_COUNTERS = cast(Table, ChangeCounter.__table__)
_VERSION = select(_COUNTERS.c.version).where(_COUNTERS.c.name == CALENDAR)
_VERSION_SQL = "SELECT version FROM change_counters WHERE name = ?"
_PG_VERSION_SQL = "SELECT version FROM change_counters WHERE name = $1"


async def calendar_version(session: AsyncSession) -> int:
    """The counter as the session's transaction sees it."""
    return int(await session.scalar(_VERSION) or 0)


async def latest_calendar_version(db: Database) -> int:
    """The counter as last committed, read as cheaply as the back end allows.

    A reader that finds no cached answer for this version reads the rows and the counter
    again in one transaction (``calendar_version``) and caches them under that version, so
    an answer is never filed under a newer version than its rows.
    """
    if db.probe is not None:
        return int(db.probe.scalar(_VERSION_SQL, (CALENDAR,)) or 0)
    if db.pg_probe is not None:
        return int(await db.pg_probe.scalar(_PG_VERSION_SQL, CALENDAR) or 0)
    async with db.reader_engine.connect() as conn:
        return int(await conn.scalar(_VERSION) or 0)


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

    def get(self, version: int, key: Hashable) -> Answer | None:
        answer = self._items.get((version, key))
        if answer is not None:
            self._items.move_to_end((version, key))
        return answer

    def put(self, version: int, key: Hashable, body: bytes) -> Answer:
        answer = Answer(etag(version, key), body)
        self._items[(version, key)] = answer
        self._items.move_to_end((version, key))
        while len(self._items) > self._size:
            self._items.popitem(last=False)
        return answer
