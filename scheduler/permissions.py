"""Who may do what: the one place that decides.

Roles per process, lowest first: a viewer reads what the process's organizers read (drafts,
registrations, ledgers, feeds, exports); an organizer also changes the process; an owner
also manages who belongs to it. A token may narrow its organizer: scoped to one process it
acts on that process alone (elsewhere it is nobody), and a read-only token is at most a
viewer. Routes ask ``require_role``; lists and draft visibility ask ``processes_where``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler.errors import Forbidden, Unauthorized
from scheduler.models import ProcessOrganizer

Role = Literal["viewer", "organizer", "owner"]
ROLES: tuple[Role, ...] = ("viewer", "organizer", "owner")  # lowest first
# The roles that run a process (reminded of its events, told of its feed runs).
ORGANIZING_ROLES: tuple[Role, ...] = ("organizer", "owner")


@dataclass(frozen=True, slots=True)
class Caller:
    """An organizer acting through one of their tokens, with what that token allows."""

    organizer_id: int
    name: str
    token_id: int
    scope: int | None = None  # the one process this token may act on (None: all of theirs)
    read_only: bool = False


def as_role(value: str | None) -> Role | None:
    """A stored role as a Role (None for no membership or an unknown value)."""
    return next((r for r in ROLES if r == value), None)


def rank(role: str | None) -> int:
    """0 for no role, then 1, 2, 3 for viewer, organizer, owner."""
    known = as_role(role)
    return ROLES.index(known) + 1 if known is not None else 0


def effective(caller: Caller, process_id: int, member_role: str | None) -> Role | None:
    """What the caller's token may act as in a process where the organizer has
    ``member_role`` (None: not a member)."""
    role = as_role(member_role)
    if role is None or (caller.scope is not None and caller.scope != process_id):
        return None
    return "viewer" if caller.read_only else role


def authenticated(caller: Caller | None) -> Caller:
    """401 for an anonymous request, before anything is looked up."""
    if caller is None:
        raise Unauthorized("Authorization: this needs an organizer token")
    return caller


def require_writer(caller: Caller | None) -> Caller:
    """A token that may change something somewhere (not read-only)."""
    who = authenticated(caller)
    if who.read_only:
        raise Forbidden("this token is read-only")
    return who


def require_unscoped(caller: Caller | None, action: str) -> Caller:
    """A token that may act beyond one process (e.g. create a new one)."""
    who = require_writer(caller)
    if who.scope is not None:
        raise Forbidden(f"this token is scoped to process {who.scope}: it may not {action}")
    return who


async def member_role(session: AsyncSession, organizer_id: int, process_id: int) -> str | None:
    row = await session.get(ProcessOrganizer, (process_id, organizer_id))
    return row.role if row is not None else None


async def require_role(
    session: AsyncSession, caller: Caller | None, process_id: int, at_least: Role
) -> Role:
    """The caller's role in the process, if it is ``at_least`` the one asked for.

    401 without a caller; 403 naming the reason otherwise (scoped elsewhere, not a member,
    read-only, or a lower role).
    """
    who = authenticated(caller)
    role = await member_role(session, who.organizer_id, process_id)
    acting = effective(who, process_id, role)
    if acting is not None and rank(acting) >= rank(at_least):
        return acting
    raise Forbidden(refusal(who, process_id, role, at_least))


def refusal(caller: Caller, process_id: int, member_role: str | None, at_least: Role) -> str:
    """Why the caller may not act as ``at_least`` in the process, in one sentence."""
    if caller.scope is not None and caller.scope != process_id:
        return (
            f"this token is scoped to process {caller.scope}: it may not act on process "
            f"{process_id}"
        )
    if member_role is None:
        return f"organizer {caller.organizer_id} is not a member of process {process_id}"
    if caller.read_only and rank(member_role) >= rank(at_least):
        return "this token is read-only"
    return (
        f"organizer {caller.organizer_id} is a {member_role} of process {process_id}: "
        f"this needs {at_least} or above"
    )


async def roles_of(session: AsyncSession, caller: Caller | None) -> dict[int, Role]:
    """Every process the caller may act on, with the role it acts as there."""
    if caller is None:
        return {}
    query = select(ProcessOrganizer.process_id, ProcessOrganizer.role).where(
        ProcessOrganizer.organizer_id == caller.organizer_id
    )
    if caller.scope is not None:
        query = query.where(ProcessOrganizer.process_id == caller.scope)
    roles: dict[int, Role] = {}
    for process_id, role in await session.execute(query):
        acting = effective(caller, process_id, role)
        if acting is not None:
            roles[process_id] = acting
    return roles


async def processes_where(
    session: AsyncSession, caller: Caller | None, at_least: Role = "viewer"
) -> set[int]:
    """The processes where the caller acts as ``at_least`` or above. With the default, the
    processes whose drafts and organizer-only data the caller may read."""
    roles = await roles_of(session, caller)
    return {pid for pid, role in roles.items() if rank(role) >= rank(at_least)}
