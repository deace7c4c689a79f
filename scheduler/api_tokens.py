"""HTTP routes for the caller's own API tokens: list, create (the secret is shown once),
revoke. Nobody sees another organizer's tokens, and no answer but the creating one ever
carries a secret."""

from __future__ import annotations

from datetime import datetime

import msgspec
from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from scheduler import tokens as svc
from scheduler.database import Database
from scheduler.errors import documented
from scheduler.fields import PathId
from scheduler.models import ApiToken, utc_now
from scheduler.permissions import Caller, authenticated


class TokenOut(msgspec.Struct):
    id: int
    label: str
    process_id: int | None
    read_only: bool
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    current: bool  # the token this request was made with


class TokenCreated(TokenOut):
    """The new token and, this once, its secret."""

    token: str


def token_out(row: ApiToken, caller: Caller) -> TokenOut:
    return TokenOut(
        id=row.id,
        label=row.label,
        process_id=row.process_id,
        read_only=row.read_only,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
        current=row.id == caller.token_id,
    )


class TokenController(Controller):
    path = "/api/tokens"
    tags = ["tokens"]

    @get(
        "/",
        summary="My API tokens",
        description="The caller's tokens, newest first, revoked ones too; never a secret. A "
        "token scoped to a process lists the tokens of that process only.",
        responses=documented(401),
    )
    async def list_tokens(
        self, db: NamedDependency[Database], caller: NamedDependency[Caller | None]
    ) -> list[TokenOut]:
        who = authenticated(caller)
        async with db.reader() as session:
            return [token_out(t, who) for t in await svc.mine(session, who)]

    @post(
        "/",
        summary="Create an API token",
        description="For every process of the caller, or only for `process_id` (a process "
        "the caller belongs to); `read_only` makes it act as at most a viewer. The secret is "
        "in this answer and nowhere else, ever. A token never makes one broader than itself: "
        "a read-only token makes none, a scoped one only tokens of its own process (403).",
        responses=documented(400, 401, 403, 413),
    )
    async def create_token(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        data: JSONBody[svc.TokenCreate],
    ) -> TokenCreated:
        who = authenticated(caller)
        async with db.writer.begin() as session:
            row, secret = await svc.create(session, who, data, utc_now())
            out = token_out(row, who)
        return TokenCreated(**msgspec.structs.asdict(out), token=secret)

    @delete(
        "/{token_id:int}",
        summary="Revoke one of my API tokens",
        description="At once, on every node: the token then gets 401, and the organizer "
        "pages' sessions signed in with it end. Another organizer's token answers 404.",
        responses=documented(401, 403, 404),
    )
    async def revoke_token(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        token_id: PathId,
    ) -> None:
        who = authenticated(caller)
        async with db.writer.begin() as session:
            await svc.revoke(session, who, token_id, utc_now())
