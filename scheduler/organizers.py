"""Organizers and their API tokens. Only a SHA-256 of each token is stored.

Tokens carry 256 bits of randomness, so a plain hash (no salt, no slow KDF) is enough and
keeps the per-request check to one indexed lookup.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler import reminders
from scheduler.errors import Forbidden, NotFound
from scheduler.models import Organizer, Process, ProcessOrganizer, utc_now

TOKEN_PREFIX = "fs_"  # noqa: S105 (a prefix, not a secret)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


async def create_organizer(
    session: AsyncSession,
    name: str,
    process_slugs: list[str] | None = None,
    *,
    email: str = "",
    now: datetime | None = None,
) -> tuple[Organizer, str]:
    """A new organizer and its token (shown once, never stored).

    With an ``email`` the organizer is reminded of the upcoming events and deadlines of
    their processes, starting with those already planned.
    """
    token = new_token()
    organizer = Organizer(
        name=name.strip(), token_hash=hash_token(token), email=email.strip().lower()
    )
    session.add(organizer)
    await session.flush()
    for slug in process_slugs or []:
        process = await session.scalar(select(Process).where(Process.slug == slug))
        if process is None:
            raise NotFound(f"no process with slug {slug!r}")
        session.add(
            ProcessOrganizer(process_id=process.id, organizer_id=organizer.id, role="organizer")
        )
    await session.flush()
    if organizer.email:
        await reminders.sync_organizer(session, organizer, now or utc_now())
    return organizer, token


async def organizer_for_token(session: AsyncSession, token: str) -> Organizer | None:
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    return await session.scalar(select(Organizer).where(Organizer.token_hash == hash_token(token)))


async def process_ids_of(session: AsyncSession, organizer_id: int) -> set[int]:
    rows = await session.scalars(
        select(ProcessOrganizer.process_id).where(ProcessOrganizer.organizer_id == organizer_id)
    )
    return set(rows)


async def require_member(session: AsyncSession, organizer: Organizer, process_id: int) -> None:
    """Refuse a change to a process the organizer does not belong to."""
    row = await session.get(ProcessOrganizer, (process_id, organizer.id))
    if row is None:
        raise Forbidden(f"organizer {organizer.id} may not change process {process_id}")
