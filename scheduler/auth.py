"""Who is asking: the organizer behind a bearer token, or the public (None)."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException

from scheduler import audit
from scheduler.database import Database
from scheduler.models import Organizer
from scheduler.organizers import organizer_for_token, process_ids_of

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


async def provide_organizer(
    request: Request[Any, Any, Any], db: NamedDependency[Database]
) -> Organizer | None:
    """None for an anonymous request; 401 for a malformed or unknown token."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthorizedException(
            detail="Authorization: expected 'Bearer <token>'", headers=_CHALLENGE
        )
    async with db.reader() as session:
        organizer = await organizer_for_token(session, token.strip())
    if organizer is None:
        raise NotAuthorizedException(detail="Authorization: unknown token", headers=_CHALLENGE)
    audit.identify(organizer)
    return organizer


def require(organizer: NamedDependency[Organizer | None]) -> Organizer:
    if organizer is None:
        raise NotAuthorizedException(
            detail="Authorization: this change needs an organizer token", headers=_CHALLENGE
        )
    return organizer


async def member_of(db: Database, organizer: Organizer | None) -> set[int]:
    """Processes whose drafts this requester may see."""
    if organizer is None:
        return set()
    async with db.reader() as session:
        return await process_ids_of(session, organizer.id)
