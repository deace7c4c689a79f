"""How a run's records reach the database: a scratch file, then one transaction.

While a feed is fetched, validated records go to a scratch file on disk (memory stays flat,
no transaction is open); then ``apply_staged`` writes them in the run's one transaction:
new pledges inserted, changed ones updated, unchanged ones left alone (a hash compared),
the rest withdrawn. Services here take a session and never commit.
"""

from __future__ import annotations

import json
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

import msgspec
from sqlalchemy import (
    CursorResult,
    Result,
    Table,
    column,
    delete,
    exists,
    insert,
    select,
    table,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from scheduler.feeds import FeedTarget
from scheduler.models import (
    FeedRun,
    Organizer,
    Pledge,
    PledgeObjective,
    Process,
    ProcessOrganizer,
    QuarantinedRecord,
)
from scheduler.outbox import enqueue
from scheduler.permissions import ORGANIZING_ROLES
from scheduler.pledges import PledgeRecord

_MAX_QUARANTINED_JSON = 8000
_DIGEST_TITLES = 5


# --- The scratch file ---------------------------------------------------------------------


class Quarantined(msgspec.Struct, array_like=True):
    position: int
    source_id: str
    reason: str
    record: str  # the record as JSON text, shortened when large


_FRAME = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class _Mark:
    good_at: int
    bad_at: int
    good: int
    bad: int
    bad_without_id: int


class Stager:
    """Validated records on their way to the database, in a scratch file on disk.

    Good records and quarantined ones go to two files in msgpack frames of one batch each;
    a page that must be fetched again is rewound to the mark taken before it.
    """

    def __init__(self, directory: Path | None, batch_size: int) -> None:
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        # Closed by close(); deleted by the OS even if the process dies.
        self._good_file: IO[bytes] = tempfile.TemporaryFile(dir=directory, prefix="feed-")  # noqa: SIM115
        self._bad_file: IO[bytes] = tempfile.TemporaryFile(dir=directory, prefix="feed-")  # noqa: SIM115
        self._good: list[PledgeRecord] = []
        self._bad: list[Quarantined] = []
        self._batch = batch_size
        self._encoder = msgspec.msgpack.Encoder()
        self.good = 0
        self.bad = 0
        self.bad_without_id = 0

    @property
    def records(self) -> int:
        return self.good + self.bad

    def add(self, record: PledgeRecord) -> None:
        self._good.append(record)
        self.good += 1
        if len(self._good) >= self._batch:
            self._flush()

    def add_bad(self, item: Quarantined) -> None:
        self._bad.append(item)
        self.bad += 1
        if not item.source_id:
            self.bad_without_id += 1
        if len(self._bad) >= self._batch:
            self._flush()

    def mark(self) -> _Mark:
        self._flush()
        return _Mark(
            self._good_file.tell(), self._bad_file.tell(), self.good, self.bad, self.bad_without_id
        )

    def rewind(self, mark: _Mark) -> None:
        self._good.clear()
        self._bad.clear()
        for file, at in ((self._good_file, mark.good_at), (self._bad_file, mark.bad_at)):
            file.truncate(at)
            file.seek(at)
        self.good, self.bad, self.bad_without_id = mark.good, mark.bad, mark.bad_without_id

    def batches(self) -> Iterator[list[PledgeRecord]]:
        self._flush()
        return self._frames(self._good_file, msgspec.msgpack.Decoder(list[PledgeRecord]))

    def quarantined(self) -> Iterator[list[Quarantined]]:
        self._flush()
        return self._frames(self._bad_file, msgspec.msgpack.Decoder(list[Quarantined]))

    def close(self) -> None:
        self._good_file.close()
        self._bad_file.close()

    def _flush(self) -> None:
        for items, file in ((self._good, self._good_file), (self._bad, self._bad_file)):
            if items:
                data = self._encoder.encode(items)
                file.write(_FRAME.pack(len(data)))
                file.write(data)
                items.clear()

    @staticmethod
    def _frames(file: IO[bytes], decoder: msgspec.msgpack.Decoder[Any]) -> Iterator[Any]:
        end = file.tell()
        file.seek(0)
        while file.tell() < end:
            (size,) = _FRAME.unpack(file.read(_FRAME.size))
            yield decoder.decode(file.read(size))
        file.seek(end)


def quarantined_json(raw: Any) -> str:
    """A record as JSON text for organizers to read, shortened when very large."""
    try:
        text = json.dumps(raw, ensure_ascii=False, allow_nan=False, default=str)
    except (TypeError, ValueError):
        text = json.dumps({"unreadable": repr(raw)[:_MAX_QUARANTINED_JSON]})
    if len(text) > _MAX_QUARANTINED_JSON:
        text = json.dumps({"truncated": text[:_MAX_QUARANTINED_JSON]}, ensure_ascii=False)
    return text


# --- Applying a run (one transaction) ------------------------------------------------------

PLEDGES = cast(Table, Pledge.__table__)
OBJECTIVES = cast(Table, PledgeObjective.__table__)
QUARANTINE = cast(Table, QuarantinedRecord.__table__)


@dataclass
class Counts:
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    withdrawn: int = 0
    quarantined: int = 0
    titles: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def changed(self) -> int:
        return self.new + self.updated + self.withdrawn


# The pledge columns a feed record sets, in the order the bulk writers take them.
_DATA = (
    "title",
    "pledger_name",
    "pledger_type",
    "country",
    "region",
    "pledge_type",
    "matches_source_id",
    "form",
    "objectives",
    "status",
    "submitted_at",
    "source_updated_at",
    "source_url",
    "content_hash",
)
_INSERTED = ("feed_id", "process_id", "source_id", *_DATA)
# 20 parameters a row: well under the 32,766 that SQLite takes in one statement.
_ROWS_PER_INSERT = 1000
_IDS_PER_STATEMENT = 30_000
_MANY_CHANGES = 5000
# The ids a run has seen: a temporary table of the run's own connection, gone at its end.
SEEN = table("feed_run_seen", column("source_id"))


class _Bulk:
    """The many-row writes of a run, as few statements as each back end allows.

    Going through the ORM or Core costs several microseconds per row in parameter handling;
    here the only conversions are the ones the column types make (UTC datetimes, JSON),
    checked at start to give exactly what those types give. SQLite gets multi-row INSERTs
    (with RETURNING) and executemany; the table and column names in the SQL text are the
    model's own, every value is a parameter.
    """

    def __init__(self, conn: AsyncConnection) -> None:
        dialect = conn.dialect
        self.conn = conn
        self.when = _fast_or_exact(
            _processor(PLEDGES.c.submitted_at, dialect), _FAST_WHEN[dialect.name]
        )
        self.json = _fast_or_exact(_processor(PLEDGES.c.objectives, dialect), _json_list)
        self.q = dialect.identifier_preparer.quote
        self.pledges, self.objectives_table = self.q(PLEDGES.name), self.q(OBJECTIVES.name)
        self._insert_sql: dict[int, str] = {}

    async def existing(self, feed_id: int, source_ids: list[str]) -> dict[str, Any]:
        """The feed's stored pledges with these ids: id, content_hash, withdrawn_at."""
        P = PLEDGES.c
        rows = await self.conn.execute(
            select(P.id, P.source_id, P.content_hash, P.withdrawn_at).where(
                P.feed_id == feed_id, P.source_id.in_(source_ids)
            )
        )
        return {row.source_id: row for row in rows}

    async def forget_objectives(self, pledge_ids: list[int]) -> None:
        await self.conn.execute(delete(OBJECTIVES).where(OBJECTIVES.c.pledge_id.in_(pledge_ids)))

    async def start_seen(self) -> None:
        """The run's scratch list of ids seen, in the connection's temporary schema."""
        await self.conn.exec_driver_sql(f"DROP TABLE IF EXISTS temp.{SEEN.name}")
        await self.conn.exec_driver_sql(
            f"CREATE TEMP TABLE {SEEN.name} (source_id TEXT PRIMARY KEY) WITHOUT ROWID"
        )

    async def end_seen(self) -> None:
        await self.conn.exec_driver_sql(f"DROP TABLE temp.{SEEN.name}")

    async def refresh_statistics(self) -> None:
        pass  # SQLite plans well without statistics (and has none unless asked)

    async def see(self, source_ids: list[str]) -> set[str]:
        """Note ids as seen in this run; the ones not seen before."""
        fresh: set[str] = set()
        for start in range(0, len(source_ids), _IDS_PER_STATEMENT):
            chunk = source_ids[start : start + _IDS_PER_STATEMENT]
            sql = (
                f"INSERT INTO temp.{SEEN.name} (source_id) VALUES "  # noqa: S608
                + ", ".join(["(?)"] * len(chunk))
                + " ON CONFLICT DO NOTHING RETURNING source_id"
            )
            result = await self.conn.exec_driver_sql(sql, tuple(chunk))
            fresh.update(row[0] for row in result)
        return fresh

    def data(self, r: PledgeRecord) -> tuple[Any, ...]:
        when = self.when
        return (
            r.title,
            r.pledger_name,
            r.pledger_type,
            r.country,
            r.region,
            r.pledge_type,
            r.matches_source_id,
            r.form,
            self.json(r.objectives),
            r.status,
            when(r.submitted_at),
            when(r.source_updated_at),
            r.source_url,
            r.content_hash,
        )

    async def insert(
        self, target: FeedTarget, records: list[PledgeRecord], mark: datetime
    ) -> dict[str, int]:
        """New pledges; their ids by source id."""
        seen = self.when(mark)
        feed, process = target.id, target.process_id
        ids: dict[str, int] = {}
        for start in range(0, len(records), _ROWS_PER_INSERT):
            chunk = records[start : start + _ROWS_PER_INSERT]
            params: list[Any] = []
            for r in chunk:
                params += (feed, process, r.source_id, *self.data(r), seen, seen)
            result = await self.conn.exec_driver_sql(self._insert(len(chunk)), tuple(params))
            rows = cast("list[tuple[int, str]]", result.all())
            ids.update((source_id, pledge_id) for pledge_id, source_id in rows)
        return ids

    def _insert(self, rows: int) -> str:
        sql = self._insert_sql.get(rows)
        if sql is None:
            q = self.q
            width = len(_INSERTED) + 2
            row = "(" + ", ".join("?" * width) + ")"
            columns = ", ".join(map(q, (*_INSERTED, "first_seen_at", "last_seen_at")))
            sql = (
                f"INSERT INTO {self.pledges} ({columns}) VALUES "  # noqa: S608
                + ", ".join([row] * rows)
                + f" RETURNING {q('id')}, {q('source_id')}"
            )
            self._insert_sql[rows] = sql
        return sql

    async def update(self, changed: list[tuple[int, PledgeRecord]], mark: datetime) -> None:
        """Changed pledges get their new content, and are no longer withdrawn."""
        q = self.q
        sets = ", ".join(f"{q(c)} = ?" for c in _DATA)
        sql = (
            f"UPDATE {self.pledges} SET {sets}, {q('withdrawn_at')} = NULL, "  # noqa: S608
            f"{q('last_seen_at')} = ? WHERE {q('id')} = ?"
        )
        seen = self.when(mark)
        await self.conn.exec_driver_sql(
            sql, [(*self.data(r), seen, pledge_id) for pledge_id, r in changed]
        )

    async def objectives(self, pairs: Iterable[tuple[int, PledgeRecord]]) -> None:
        rows = [(pledge_id, o) for pledge_id, r in pairs for o in r.objectives]
        if rows:
            q = self.q
            sql = (
                f"INSERT INTO {self.objectives_table} ({q('pledge_id')}, {q('objective')}) "  # noqa: S608
                "VALUES (?, ?)"
            )
            await self.conn.exec_driver_sql(sql, rows)


class _PostgresBulk(_Bulk):
    """PostgreSQL: one statement per batch, its columns passed as arrays and unnested.

    Twenty array parameters are far cheaper to send and plan than a VALUES list of 20,000,
    and than an executemany of 1,000 statements.
    """

    def __init__(self, conn: AsyncConnection) -> None:
        super().__init__(conn)
        dialect = conn.dialect
        self._types = {c.name: c.type.compile(dialect=dialect) for c in PLEDGES.columns}

    async def existing(self, feed_id: int, source_ids: list[str]) -> dict[str, Any]:
        q = self.q
        columns = ", ".join(map(q, ("id", "source_id", "content_hash", "withdrawn_at")))
        sql = (
            f"SELECT {columns} FROM {self.pledges} "  # noqa: S608
            f"WHERE {q('feed_id')} = $1 AND {q('source_id')} = ANY($2::varchar[])"
        )
        rows = await self._fresh_plan(sql, (feed_id, source_ids))
        return {row.source_id: row for row in rows}

    async def forget_objectives(self, pledge_ids: list[int]) -> None:
        q = self.q
        sql = f"DELETE FROM {self.objectives_table} WHERE {q('pledge_id')} = ANY($1::integer[])"  # noqa: S608
        await self._fresh_plan(sql, (pledge_ids,))

    async def _fresh_plan(self, sql: str, params: tuple[Any, ...]) -> Result[Any]:
        """Planned for the table as it is now: it grows a lot within the run's transaction,
        and the plan PostgreSQL caches for a prepared statement, made when the table was
        small, scans the whole table (measured: 86 s instead of 0.8 s for 100,000 rows).
        Only here: forcing fresh plans for everything also re-plans each foreign key check.
        """
        await self.conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_custom_plan")
        try:
            return await self.conn.exec_driver_sql(sql, params)
        finally:
            await self.conn.exec_driver_sql("SET LOCAL plan_cache_mode = auto")

    async def start_seen(self) -> None:
        await self.conn.exec_driver_sql(
            f"CREATE TEMP TABLE {SEEN.name} (source_id varchar PRIMARY KEY) ON COMMIT DROP"
        )

    async def end_seen(self) -> None:
        pass  # dropped at commit (or rollback)

    async def refresh_statistics(self) -> None:
        """After many new rows: the planner's idea of the tables, for the next run's lookups
        and the dashboards (autovacuum would get there, a minute or so later)."""
        tables = f"{self.pledges}, {self.objectives_table}"
        await self.conn.exec_driver_sql(f"ANALYZE {tables}")

    async def see(self, source_ids: list[str]) -> set[str]:
        result = await self.conn.exec_driver_sql(
            f"INSERT INTO {SEEN.name} (source_id) SELECT unnest($1::varchar[]) "
            "ON CONFLICT DO NOTHING RETURNING source_id",
            (source_ids,),
        )
        return {row[0] for row in result}

    def _arrays(self, names: Iterable[str], first: int) -> str:
        return ", ".join(
            f"${i}::{self._types[name]}[]" for i, name in enumerate(names, start=first)
        )

    async def insert(
        self, target: FeedTarget, records: list[PledgeRecord], mark: datetime
    ) -> dict[str, int]:
        q, names = self.q, _INSERTED[2:]
        columns = ", ".join(map(q, (*_INSERTED, "first_seen_at", "last_seen_at")))
        stamp = self._types["last_seen_at"]
        sql = (
            f"INSERT INTO {self.pledges} ({columns}) "  # noqa: S608
            f"SELECT $1::integer, $2::integer, u.*, $3::{stamp}, $3::{stamp} "
            f"FROM unnest({self._arrays(names, 4)}) AS u "
            f"RETURNING {q('id')}, {q('source_id')}"
        )
        rows = [(r.source_id, *self.data(r)) for r in records]
        arrays = [list(column) for column in zip(*rows, strict=True)]
        result = await self.conn.exec_driver_sql(
            sql, (target.id, target.process_id, self.when(mark), *arrays)
        )
        rows = cast("list[tuple[int, str]]", result.all())
        return {source_id: pledge_id for pledge_id, source_id in rows}

    async def update(self, changed: list[tuple[int, PledgeRecord]], mark: datetime) -> None:
        q = self.q
        sets = ", ".join(f"{q(c)} = u.{q(c)}" for c in _DATA)
        names = ("id", *_DATA)
        sql = (
            f"UPDATE {self.pledges} AS p SET {sets}, {q('withdrawn_at')} = NULL, "  # noqa: S608
            f"{q('last_seen_at')} = $1::{self._types['last_seen_at']} "
            f"FROM unnest({self._arrays(names, 2)}) AS u({', '.join(map(q, names))}) "
            f"WHERE p.{q('id')} = u.{q('id')}"
        )
        rows = [(pledge_id, *self.data(r)) for pledge_id, r in changed]
        arrays = [list(column) for column in zip(*rows, strict=True)]
        await self.conn.exec_driver_sql(sql, (self.when(mark), *arrays))

    async def objectives(self, pairs: Iterable[tuple[int, PledgeRecord]]) -> None:
        ids: list[int] = []
        objectives: list[int] = []
        for pledge_id, r in pairs:
            ids += [pledge_id] * len(r.objectives)
            objectives += r.objectives
        if ids:
            q = self.q
            sql = (
                f"INSERT INTO {self.objectives_table} ({q('pledge_id')}, {q('objective')}) "  # noqa: S608
                "SELECT * FROM unnest($1::integer[], $2::integer[])"
            )
            await self.conn.exec_driver_sql(sql, (ids, objectives))


def _processor(column: Any, dialect: Any) -> Callable[[Any], Any]:
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    return cast(Callable[[Any], Any], process) if process is not None else (lambda v: v)


def _sqlite_when(value: datetime | None) -> Any:
    if value is None:
        return None
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _pg_when(value: datetime | None) -> Any:
    return None if value is None else value.astimezone(UTC)


_FAST_WHEN: dict[str, Callable[[Any], Any]] = {"sqlite": _sqlite_when, "postgresql": _pg_when}


def _json_list(value: list[int]) -> str:
    return "[" + ", ".join(map(str, value)) + "]"


def _fast_or_exact(exact: Callable[[Any], Any], fast: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fast`` where it gives exactly what the column type gives (checked here), else exact."""
    samples: list[Any] = [
        None,
        datetime(2026, 5, 12, 14, 0, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ]
    if fast is _json_list:
        samples = [[], [1], [3, 17, 23]]
    try:
        same = all(fast(v) == exact(v) and type(fast(v)) is type(exact(v)) for v in samples)
    except (TypeError, ValueError, AttributeError):
        same = False
    return fast if same else exact


async def apply_staged(
    session: AsyncSession,
    target: FeedTarget,
    run_id: int,
    stager: Stager,
    mark: datetime,
    *,
    quarantine_limit: int,
) -> Counts:
    """Write a run's staged records: insert new, update changed, withdraw what is gone.

    Unchanged pledges (same content hash) are not written at all; new and changed ones get
    ``last_seen_at = mark``. The ids the run has seen go to a temporary table: a second
    record with an id already seen is a duplicate (quarantined, the first one wins), and
    pledges whose id is not there are withdrawn, unless some record had no readable id
    (then nobody can tell what is gone, and nothing is withdrawn). Never commits.
    """
    counts = Counts()
    stored = 0
    connection = await session.connection()
    bulk = (_PostgresBulk if connection.dialect.name == "postgresql" else _Bulk)(connection)
    await bulk.start_seen()

    async def quarantine(items: list[Quarantined]) -> None:
        nonlocal stored
        counts.quarantined += len(items)
        room = max(quarantine_limit - stored, 0)
        keep = items[:room]
        if keep:
            await session.execute(
                insert(QUARANTINE),
                [
                    {
                        "feed_id": target.id,
                        "run_id": run_id,
                        "source_id": q.source_id,
                        "reason": (f"record {q.position}: " if q.position else "") + q.reason[:900],
                        "record": _record_object(q.record),
                        "created_at": mark,
                    }
                    for q in keep
                ],
            )
            stored += len(keep)

    for batch in stager.batches():
        duplicates = await _apply_batch(session, bulk, target, batch, mark, counts)
        if duplicates:
            await quarantine(duplicates)
    for items in stager.quarantined():
        await quarantine(items)
        alive = [q.source_id for q in items if q.source_id]
        if alive:
            await bulk.see(alive)  # in the source but unreadable: not gone, not withdrawn
    if stager.bad_without_id:
        counts.note = (
            f"{stager.bad_without_id:,} records had no readable id, so nothing was marked "
            "withdrawn in this run"
        )
    else:
        result = await session.execute(
            update(PLEDGES)
            .where(
                PLEDGES.c.feed_id == target.id,
                PLEDGES.c.withdrawn_at.is_(None),
                ~exists().where(SEEN.c.source_id == PLEDGES.c.source_id),
            )
            .values(withdrawn_at=mark)
        )
        counts.withdrawn = int(cast("CursorResult[Any]", result).rowcount or 0)
    await bulk.end_seen()
    if counts.new + counts.updated >= _MANY_CHANGES:
        await bulk.refresh_statistics()
    return counts


async def _apply_batch(
    session: AsyncSession,
    bulk: _Bulk,
    target: FeedTarget,
    batch: list[PledgeRecord],
    mark: datetime,
    counts: Counts,
) -> list[Quarantined]:
    first: dict[str, PledgeRecord] = {}
    duplicates: list[Quarantined] = []
    for record in batch:
        if record.source_id in first:
            duplicates.append(_duplicate(record))
        else:
            first[record.source_id] = record
    fresh = await bulk.see(list(first))
    if len(fresh) < len(first):  # ids an earlier batch had
        duplicates += [_duplicate(r) for sid, r in first.items() if sid not in fresh]
        first = {sid: r for sid, r in first.items() if sid in fresh}
    existing = await bulk.existing(target.id, list(first))
    new: list[PledgeRecord] = []
    changed: list[tuple[int, PledgeRecord]] = []
    for sid, record in first.items():
        row = existing.get(sid)
        if row is None:
            new.append(record)
        elif row.content_hash != record.content_hash or row.withdrawn_at is not None:
            changed.append((row.id, record))
        else:
            counts.unchanged += 1  # nothing to write
    if new:
        ids = await bulk.insert(target, new, mark)
        await bulk.objectives((ids[r.source_id], r) for r in new)
        counts.new += len(new)
        _titles(counts, new)
    if changed:
        await bulk.update(changed, mark)
        await bulk.forget_objectives([pid for pid, _ in changed])
        await bulk.objectives(changed)
        counts.updated += len(changed)
        _titles(counts, [r for _, r in changed])
    return duplicates


def _duplicate(record: PledgeRecord) -> Quarantined:
    sid = record.source_id
    return Quarantined(0, sid, f"id {sid!r} appears again (the first record wins)", _json(record))


def _titles(counts: Counts, records: list[PledgeRecord]) -> None:
    room = _DIGEST_TITLES - len(counts.titles)
    if room > 0:
        counts.titles.extend(r.title[:200] for r in records[:room])


def _json(record: PledgeRecord) -> str:
    return msgspec.json.encode(msgspec.structs.asdict(record)).decode()


def _record_object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    return value if isinstance(value, dict) else {"value": value}


async def prune_runs(session: AsyncSession, feed_id: int, keep: int) -> None:
    """Keep the newest ``keep`` runs of a feed (their quarantined records go with the rest)."""
    newest = (
        select(FeedRun.id)
        .where(FeedRun.feed_id == feed_id)
        .order_by(FeedRun.id.desc())
        .limit(keep)
        .scalar_subquery()
    )
    await session.execute(
        delete(FeedRun)
        .where(FeedRun.feed_id == feed_id, FeedRun.id.not_in(newest))
        .execution_options(synchronize_session=False)
    )


async def enqueue_digest(
    session: AsyncSession, target: FeedTarget, run: FeedRun, counts: Counts, base_url: str
) -> int:
    """One digest per run to each organizer of the process who has an email address."""
    organizers = list(
        await session.scalars(
            select(Organizer)
            .join(ProcessOrganizer, ProcessOrganizer.organizer_id == Organizer.id)
            .where(
                ProcessOrganizer.process_id == target.process_id,
                ProcessOrganizer.role.in_(ORGANIZING_ROLES),
                Organizer.email != "",
            )
            .order_by(Organizer.id)
        )
    )
    if not organizers:
        return 0
    process = await session.get(Process, target.process_id)
    context = {
        "event_title": process.name if process else target.name,
        "feed_name": target.name,
        "new_count": counts.new,
        "updated_count": counts.updated,
        "withdrawn_count": counts.withdrawn,
        "quarantined_count": counts.quarantined,
        "pledge_titles": "; ".join(counts.titles),
        "dashboard_url": f"{base_url.rstrip('/')}/api/pledges?process_id={target.process_id}",
        "run_id": run.id,
    }
    for organizer in organizers:
        note = enqueue(
            session,
            kind="pledge_digest",
            recipient_email=organizer.email,
            recipient_name=organizer.name,
            language=organizer.language,
            time_zone=organizer.time_zone,
            context=context,
            dedupe_key=f"pledge-digest:{run.id}:{organizer.id}",
        )
        note.organizer_id = organizer.id
    return len(organizers)
