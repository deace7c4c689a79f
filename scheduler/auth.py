"""Who is asking: the organizer behind a bearer token (as a Caller), or the public (None).

What the caller may do is decided in ``scheduler.permissions``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from litestar import Request
from litestar.di import NamedDependency

from scheduler import audit, tokens
from scheduler.database import Database
from scheduler.errors import Unauthorized
from scheduler.models import ApiToken, utc_now
from scheduler.permissions import Caller


async def provide_caller(
    request: Request[Any, Any, Any], db: NamedDependency[Database]
) -> Caller | None:
    """None for an anonymous request; 401 for a malformed, unknown or revoked token."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("Authorization: expected 'Bearer <token>'")
    async with db.reader() as session:
        found = await tokens.find(session, secret.strip())
    if found is None:
        raise Unauthorized("Authorization: unknown token")
    token, organizer = found
    if token.revoked_at is not None:
        raise Unauthorized("Authorization: this token was revoked")
    await note_use(db, token, utc_now())
    audit.identify(organizer)
    return tokens.caller_of(token, organizer)


async def note_use(db: Database, token: ApiToken, now: datetime) -> None:
    """Keep the token's last_used_at roughly current: a write at most once a minute."""
    if tokens.needs_touch(token, now):
        async with db.writer.begin() as session:
            await tokens.touch(session, token.id, now)
