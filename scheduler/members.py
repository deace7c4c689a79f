"""Who belongs to a process, and as what: adding, re-roling and removing members.

A process always keeps an owner: the last one cannot be removed or made anything less
(409). The process row is locked first, so two owners demoting each other at once cannot
both succeed. Each change re-plans the member's organizer reminders (viewers get none).
"""

from __future__ import annotations

from datetime import datetime

import msgspec
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler import fields as f
from scheduler import reminders
from scheduler.errors import Conflict, Invalid, NotFound
from scheduler.models import Organizer, Process, ProcessOrganizer
from scheduler.permissions import Role
from scheduler.registrations import Email, normalize_email


class MemberAdd(msgspec.Struct, forbid_unknown_fields=True):
    """An existing organizer, named by id or by the email address they have."""

    role: Role
    organizer_id: f.Id | None = None
    email: Email | None = None


class MemberPatch(msgspec.Struct, forbid_unknown_fields=True):
    role: Role


async def members(
    session: AsyncSession, process_id: int
) -> list[tuple[ProcessOrganizer, Organizer]]:
    rows = await session.execute(
        select(ProcessOrganizer, Organizer)
        .join(Organizer, Organizer.id == ProcessOrganizer.organizer_id)
        .where(ProcessOrganizer.process_id == process_id)
        .order_by(Organizer.id)
    )
    return [(m, o) for m, o in rows.all()]


async def add(
    session: AsyncSession, process_id: int, data: MemberAdd, now: datetime
) -> tuple[ProcessOrganizer, Organizer]:
    await _lock(session, process_id)
    organizer = await _named(session, data)
    if await session.get(ProcessOrganizer, (process_id, organizer.id)) is not None:
        raise Conflict(
            f"organizer {organizer.id} is already a member of process {process_id}: change "
            "the role with PATCH",
            field="organizer_id" if data.organizer_id is not None else "email",
        )
    member = ProcessOrganizer(process_id=process_id, organizer_id=organizer.id, role=data.role)
    session.add(member)
    await session.flush()
    await reminders.sync_organizer(session, organizer, now)
    return member, organizer


async def change_role(
    session: AsyncSession, process_id: int, organizer_id: int, role: Role, now: datetime
) -> tuple[ProcessOrganizer, Organizer]:
    await _lock(session, process_id)
    member, organizer = await _member(session, process_id, organizer_id)
    if member.role == "owner" and role != "owner":
        await _keep_an_owner(session, process_id, organizer_id, "made a " + role)
    member.role = role
    await session.flush()
    await reminders.sync_organizer(session, organizer, now)
    return member, organizer


async def remove(session: AsyncSession, process_id: int, organizer_id: int, now: datetime) -> None:
    await _lock(session, process_id)
    member, organizer = await _member(session, process_id, organizer_id)
    if member.role == "owner":
        await _keep_an_owner(session, process_id, organizer_id, "removed")
    await session.delete(member)
    await session.flush()
    await reminders.sync_organizer(session, organizer, now)


async def _lock(session: AsyncSession, process_id: int) -> None:
    """One membership change per process at a time (SQLite has one writer anyway)."""
    found = await session.scalar(
        select(Process.id).where(Process.id == process_id).with_for_update()
    )
    if found is None:
        raise NotFound(f"no process {process_id}")


async def _keep_an_owner(session: AsyncSession, process_id: int, leaving: int, what: str) -> None:
    others = await session.scalar(
        select(func.count()).where(
            ProcessOrganizer.process_id == process_id,
            ProcessOrganizer.role == "owner",
            ProcessOrganizer.organizer_id != leaving,
        )
    )
    if not others:
        raise Conflict(
            f"organizer {leaving} is the last owner of process {process_id} and cannot be "
            f"{what}: make another member owner first"
        )


async def _member(
    session: AsyncSession, process_id: int, organizer_id: int
) -> tuple[ProcessOrganizer, Organizer]:
    member = await session.get(ProcessOrganizer, (process_id, organizer_id))
    organizer = await session.get(Organizer, organizer_id) if member is not None else None
    if member is None or organizer is None:
        raise NotFound(f"organizer {organizer_id} is not a member of process {process_id}")
    return member, organizer


async def _named(session: AsyncSession, data: MemberAdd) -> Organizer:
    """The organizer the request names: by id, or by their (unambiguous) email address."""
    if (data.organizer_id is None) == (data.email is None):
        raise Invalid("organizer_id", "give exactly one of organizer_id and email")
    if data.organizer_id is not None:
        organizer = await session.get(Organizer, data.organizer_id)
        if organizer is None:
            raise Invalid("organizer_id", f"no organizer {data.organizer_id}")
        return organizer
    assert data.email is not None
    address = normalize_email(data.email)
    found = list(
        await session.scalars(
            select(Organizer).where(Organizer.email == address, Organizer.email != "").limit(2)
        )
    )
    if not found:
        raise Invalid("email", f"no organizer has the address {address!r}")
    if len(found) > 1:
        raise Conflict("several organizers have this address: give organizer_id", field="email")
    return found[0]
