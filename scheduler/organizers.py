"""Organizers: creating one, with its first token and its processes (the CLI's way in)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler import reminders, tokens
from scheduler.errors import NotFound
from scheduler.models import Organizer, Process, ProcessOrganizer, utc_now
from scheduler.permissions import Role


async def create_organizer(
    session: AsyncSession,
    name: str,
    process_slugs: list[str] | None = None,
    *,
    email: str = "",
    role: Role = "organizer",
    now: datetime | None = None,
) -> tuple[Organizer, str]:
    """A new organizer, a member with ``role`` of each process named, and their first
    token (unscoped; shown once, never stored).

    With an ``email`` an organizer (or owner) is reminded of the upcoming events and
    deadlines of their processes, starting with those already planned.
    """
    now = now or utc_now()
    organizer = Organizer(name=name.strip(), email=email.strip().lower(), created_at=now)
    session.add(organizer)
    await session.flush()
    for slug in process_slugs or []:
        process = await session.scalar(select(Process).where(Process.slug == slug))
        if process is None:
            raise NotFound(f"no process with slug {slug!r}")
        session.add(ProcessOrganizer(process_id=process.id, organizer_id=organizer.id, role=role))
    _, token = tokens.issue(session, organizer.id, now, label="first token")
    await session.flush()
    if organizer.email:
        await reminders.sync_organizer(session, organizer, now)
    return organizer, token
