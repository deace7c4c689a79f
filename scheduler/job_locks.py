"""Locks for clock jobs that every node fires but only one should run at a time.

On PostgreSQL a job takes a transaction-scoped advisory lock named after it
(``pg_try_advisory_xact_lock``): the first node runs, the others skip this turn instead of
queueing behind it on row locks. The lock ends with the transaction, so a node that dies
holding it frees it at once. SQLite has one writer and needs nothing.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for ``name`` (the same on every node and release)."""
    digest = hashlib.blake2b(f"forum-scheduler:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def run_alone(session: AsyncSession, name: str) -> bool:
    """True if this transaction may run job ``name`` now; False: another node is running it."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    taken = await session.scalar(select(func.pg_try_advisory_xact_lock(lock_key(name))))
    return bool(taken)
