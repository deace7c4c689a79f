"""Copying every row of one database into another: the way from SQLite to PostgreSQL.

The source is read in one transaction (a consistent snapshot even if a node still runs)
and the target is written in one transaction, so a failed copy leaves it empty. Tables go
in foreign-key order; a column pointing into its own table (an event's parent, a digest's
carrier) is filled in after all of that table's rows are in. Then each id sequence is moved
past the largest copied id, so new rows do not collide with copied ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from alembic.migration import MigrationContext
from sqlalchemy import Integer, Table, bindparam, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from scheduler.models import Base

CHUNK = 2000
# Rows the migrations write themselves (0004 seeds the calendar counter): replaced, not kept.
SEEDED = frozenset({"change_counters"})


class CopyError(Exception):
    """The copy cannot start: a revision mismatch or a target that is not empty."""


@dataclass
class CopyReport:
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.rows.values())


async def _revision(conn: AsyncConnection) -> str | None:
    def read(sync: Any) -> str | None:
        return MigrationContext.configure(sync).get_current_revision()

    return await conn.run_sync(read)


def _self_references(table: Table) -> list[str]:
    return [
        fk.parent.key
        for fk in table.foreign_keys
        if fk.column.table is table and fk.parent.nullable
    ]


async def copy_database(
    source: AsyncEngine,
    target: AsyncEngine,
    on_table: Callable[[str, int], None] | None = None,
) -> CopyReport:
    """Copy every table of the models from ``source`` into the empty, migrated ``target``."""
    report = CopyReport()
    tables = list(Base.metadata.sorted_tables)
    async with source.connect() as src, target.begin() as dst:
        source_revision, target_revision = await _revision(src), await _revision(dst)
        if source_revision != target_revision:
            raise CopyError(
                f"the source is at migration {source_revision}, the target at "
                f"{target_revision}: run `scheduler migrate` on both first"
            )
        for table in tables:
            if table.name in SEEDED:
                continue
            if await dst.scalar(select(func.count()).select_from(table)):
                raise CopyError(f"the target is not empty: table {table.name} has rows")
        for table in tables:
            if table.name in SEEDED:
                await dst.execute(table.delete())
            count = await _copy_table(src, dst, table)
            report.rows[table.name] = count
            if on_table is not None:
                on_table(table.name, count)
        if target.dialect.name == "postgresql":
            for table in tables:
                await _fix_sequence(dst, table)
    return report


async def _copy_table(src: AsyncConnection, dst: AsyncConnection, table: Table) -> int:
    later = _self_references(table)
    pk = table.primary_key.columns[0] if later else None
    # Columns an UPDATE would stamp (updated_at): the fix-up writes their copied values back.
    kept = [c.key for c in table.columns if c.onupdate is not None]
    fixes: list[tuple[dict[str, Any], dict[str, Any]]] = []
    count = 0
    result = await src.stream(select(table).order_by(*table.primary_key.columns))
    async for chunk in result.partitions(CHUNK):
        rows = [{c.key: row._mapping[c] for c in table.columns} for row in chunk]
        for row in rows:
            pointers = {name: row[name] for name in later if row[name] is not None}
            if pointers and pk is not None:
                keep = {f"_keep_{k}": row[k] for k in kept} | {"_pk": row[pk.key]}
                fixes.append((pointers, keep))
                row.update(dict.fromkeys(pointers))
        await dst.execute(insert(table), rows)
        count += len(rows)
    for name in later:  # now that every row they may point at is in
        batch = [keep | {"_value": ptr[name]} for ptr, keep in fixes if name in ptr]
        if batch and pk is not None:
            values: dict[str, Any] = {name: bindparam("_value")}
            values |= {k: bindparam(f"_keep_{k}") for k in kept}
            await dst.execute(update(table).where(pk == bindparam("_pk")).values(values), batch)
    return count


async def _fix_sequence(dst: AsyncConnection, table: Table) -> None:
    pk = list(table.primary_key.columns)
    if len(pk) != 1 or not isinstance(pk[0].type, Integer):
        return
    sequence = await dst.scalar(
        text("SELECT pg_get_serial_sequence(:table, :column)"),
        {"table": table.name, "column": pk[0].name},
    )
    if sequence is None:
        return
    # The next id is one past the largest copied one (1 for an empty table).
    largest = select(func.max(pk[0])).scalar_subquery()
    await dst.execute(select(func.setval(sequence, func.coalesce(largest, 0) + 1, False)))
