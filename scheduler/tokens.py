"""API tokens: issuing, finding, listing and revoking them. Only a SHA-256 of each is stored.

Tokens carry 256 bits of randomness, so a plain hash (no salt, no slow KDF) is enough and
keeps the per-request check to one indexed lookup. A token is never broader than the one
that made it: a scoped token makes tokens for its own process only, a read-only one makes
none.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Annotated

import msgspec
from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler import fields as f
from scheduler.errors import Forbidden, NotFound
from scheduler.models import ApiToken, Organizer
from scheduler.permissions import Caller, require_role, require_writer

TOKEN_PREFIX = "fs_"  # noqa: S105 (a prefix, not a secret)
# last_used_at is a hint, not an audit: one write per token per minute at most.
TOUCH_EVERY = timedelta(minutes=1)

Label = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"\S")]


class TokenCreate(msgspec.Struct, forbid_unknown_fields=True):
    """A new token of the caller: for every process of theirs, or for one (``process_id``,
    a process they belong to); ``read_only`` makes it act as at most a viewer."""

    label: Label
    process_id: f.Id | None = None
    read_only: bool = False


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def issue(
    session: AsyncSession,
    organizer_id: int,
    now: datetime,
    *,
    label: str,
    process_id: int | None = None,
    read_only: bool = False,
) -> tuple[ApiToken, str]:
    """A new token row and its secret (shown once, never stored). No checks: see ``create``."""
    secret = new_token()
    row = ApiToken(
        organizer_id=organizer_id,
        token_hash=hash_token(secret),
        label=" ".join(label.split()),
        process_id=process_id,
        read_only=read_only,
        created_at=now,
    )
    session.add(row)
    return row, secret


async def find(session: AsyncSession, secret: str) -> tuple[ApiToken, Organizer] | None:
    """The token with this secret (revoked ones too: the caller says why it is refused)."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        return None
    row = (
        await session.execute(
            select(ApiToken, Organizer)
            .join(Organizer, Organizer.id == ApiToken.organizer_id)
            .where(ApiToken.token_hash == hash_token(secret))
        )
    ).one_or_none()
    return (row[0], row[1]) if row is not None else None


def caller_of(token: ApiToken, organizer: Organizer) -> Caller:
    return Caller(
        organizer_id=organizer.id,
        name=organizer.name,
        token_id=token.id,
        scope=token.process_id,
        read_only=token.read_only,
    )


def needs_touch(token: ApiToken, now: datetime) -> bool:
    return token.last_used_at is None or now - token.last_used_at >= TOUCH_EVERY


async def touch(session: AsyncSession, token_id: int, now: datetime) -> None:
    """Note the use; a no-op when another request (or node) noted it within the minute."""
    await session.execute(
        update(ApiToken)
        .where(
            ApiToken.id == token_id,
            or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at <= now - TOUCH_EVERY),
        )
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )


async def mine(session: AsyncSession, caller: Caller) -> list[ApiToken]:
    """The caller's tokens, newest first; a scoped token sees only its process's tokens."""
    query = select(ApiToken).where(ApiToken.organizer_id == caller.organizer_id)
    if caller.scope is not None:
        query = query.where(ApiToken.process_id == caller.scope)
    return list(await session.scalars(query.order_by(ApiToken.id.desc())))


async def create(
    session: AsyncSession, caller: Caller | None, data: TokenCreate, now: datetime
) -> tuple[ApiToken, str]:
    """A token for the caller, no broader than the one asking."""
    who = require_writer(caller)
    if who.scope is not None and data.process_id != who.scope:
        raise Forbidden(
            f"process_id: this token is scoped to process {who.scope}: it may only create "
            f"tokens scoped to process {who.scope}"
        )
    if data.process_id is not None:
        await require_role(session, who, data.process_id, "viewer")
    row, secret = issue(
        session,
        who.organizer_id,
        now,
        label=data.label,
        process_id=data.process_id,
        read_only=data.read_only,
    )
    await session.flush()
    return row, secret


async def revoke(
    session: AsyncSession, caller: Caller | None, token_id: int, now: datetime
) -> None:
    """Revoke one of the caller's own tokens (others' answer 404); twice is harmless."""
    who = require_writer(caller)
    row = await session.get(ApiToken, token_id)
    visible = row is not None and row.organizer_id == who.organizer_id
    if row is None or not visible or (who.scope is not None and row.process_id != who.scope):
        raise NotFound(f"no token {token_id}")
    if row.revoked_at is None:
        row.revoked_at = now
        await session.flush()
