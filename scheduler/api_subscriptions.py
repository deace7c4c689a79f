"""HTTP routes for deadline subscriptions: ask (public), confirm, see, unsubscribe in one click.

The API answers JSON; the pages behind the mailed links (``/subscriptions/{token}``) show
the subscription with buttons, because a GET must never confirm or unsubscribe (mail
scanners follow links). The one-click URL in the List-Unsubscribe header takes the POST a
mail program sends (RFC 8058) whatever its body.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.response import Redirect, Template
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler import subscriptions as svc
from scheduler.database import Database
from scheduler.errors import Conflict, NotFound, documented
from scheduler.fields import PathId
from scheduler.models import Milestone, Notification, Process, Subscription, utc_now
from scheduler.outbox import OutboxWorker
from scheduler.rate_limits import RateLimits, client_host
from scheduler.reminders import earliest_planned


class Accepted(msgspec.Struct):
    status: str
    detail: str


class SubscriptionReminder(msgspec.Struct):
    id: int
    kind: str
    milestone_id: int | None
    title: str
    due_at: datetime
    status: str
    reason: str
    sent_at: datetime | None


class SubscriptionView(msgspec.Struct):
    id: int
    process_id: int
    process_name: str
    email: str
    name: str
    language: str
    time_zone: str
    status: str
    created_at: datetime
    confirmed_at: datetime | None
    unsubscribed_at: datetime | None
    reminders: list[SubscriptionReminder]


async def subscription_view(session: AsyncSession, sub: Subscription) -> SubscriptionView:
    process_name = await session.scalar(select(Process.name).where(Process.id == sub.process_id))
    rows = await session.execute(
        select(Notification, Milestone.title)
        .outerjoin(Milestone, Milestone.id == Notification.milestone_id)
        .where(Notification.subscription_id == sub.id, Notification.kind == "milestone_reminder")
        .order_by(Notification.due_at, Notification.id)
    )
    return SubscriptionView(
        id=sub.id,
        process_id=sub.process_id,
        process_name=process_name or "",
        email=sub.email,
        name=sub.name,
        language=sub.language,
        time_zone=sub.time_zone,
        status=sub.status,
        created_at=sub.created_at,
        confirmed_at=sub.confirmed_at,
        unsubscribed_at=sub.unsubscribed_at,
        reminders=[
            SubscriptionReminder(
                n.id, n.kind, n.milestone_id, title or "", n.due_at, n.status, n.reason, n.sent_at
            )
            for n, title in rows
        ],
    )


class SubscriptionController(Controller):
    tags = ["subscriptions"]

    @post(
        "/api/processes/{process_id:int}/subscriptions",
        summary="Ask for reminders of a process's deadlines (public)",
        description="Always 202: a confirmation link is mailed unless the address is already "
        "subscribed, which the answer never reveals. Reminders start once the link is "
        "confirmed (double opt-in). Rate limited per network address and per email "
        "address (429).",
        status_code=202,
        responses=documented(400, 404, 413, 429),
    )
    async def subscribe(
        self,
        request: Request[Any, Any, Any],
        db: NamedDependency[Database],
        worker: NamedDependency[OutboxWorker],
        rate_limits: NamedDependency[RateLimits],
        process_id: PathId,
        data: JSONBody[svc.SubscriptionCreate],
    ) -> Accepted:
        rate_limits.enforce(client_host(request), data.email, time.monotonic())
        async with db.writer.begin() as session:
            await svc.subscribe(session, process_id, data, utc_now())
        worker.kick()
        return Accepted("accepted", "If this address is not subscribed yet, a mail is on its way.")

    @get(
        "/api/subscriptions/{token:str}",
        summary="See a subscription and its reminders (through the mailed link)",
        responses=documented(404),
    )
    async def view(
        self, db: NamedDependency[Database], secret: NamedDependency[bytes], token: FromPath[str]
    ) -> SubscriptionView:
        async with db.reader() as session:
            return await subscription_view(session, await svc.by_token(session, token, secret))

    @post(
        "/api/subscriptions/{token:str}/confirm",
        summary="Confirm a subscription (double opt-in)",
        description="Plans reminders for the process's published upcoming deadlines.",
        status_code=200,
        responses=documented(404, 409),
    )
    async def confirm(
        self,
        db: NamedDependency[Database],
        secret: NamedDependency[bytes],
        worker: NamedDependency[OutboxWorker],
        token: FromPath[str],
    ) -> SubscriptionView:
        async with db.writer.begin() as session:
            sub = await svc.by_token(session, token, secret)
            await svc.confirm(session, sub, utc_now())
            view = await subscription_view(session, sub)
        worker.arm(earliest_planned(session))
        return view

    @post(
        "/api/subscriptions/{token:str}/unsubscribe",
        summary="Unsubscribe in one click (RFC 8058)",
        description="The URL of the List-Unsubscribe header: mail programs POST "
        "`List-Unsubscribe=One-Click` to it. Any body is accepted; unsent reminders are "
        "cancelled. Unsubscribing twice is not an error.",
        status_code=200,
        responses=documented(404),
    )
    async def unsubscribe(
        self, db: NamedDependency[Database], secret: NamedDependency[bytes], token: FromPath[str]
    ) -> Accepted:
        async with db.writer.begin() as session:
            sub = await svc.by_token(session, token, secret)
            await svc.unsubscribe(session, sub, utc_now())
        return Accepted("unsubscribed", "No more reminders will be sent to this address.")


MESSAGES = {
    "confirmed": "Your subscription is confirmed: reminders of the upcoming deadlines are planned.",
    "unsubscribed": "You are unsubscribed: no more reminders will be sent.",
}
STATUS_TEXT = {
    "pending": "Waiting for your confirmation",
    "active": "Active: you receive reminders of the deadlines",
    "unsubscribed": "Unsubscribed",
}


class SubscriptionPages(Controller):
    include_in_schema = False

    @get("/subscriptions/{token:str}")
    async def page(
        self,
        db: NamedDependency[Database],
        secret: NamedDependency[bytes],
        token: FromPath[str],
        done: FromQuery[str | None] = None,
    ) -> Template:
        try:
            async with db.reader() as session:
                view = await subscription_view(session, await svc.by_token(session, token, secret))
        except NotFound as exc:
            return _problem(exc)
        return Template(
            "subscription.html",
            context={
                "lang": view.language,
                "sub": view,
                "token": token,
                "status_text": STATUS_TEXT.get(view.status, view.status),
                "message": MESSAGES.get(done or "", ""),
            },
        )

    @post("/subscriptions/{token:str}/confirm", status_code=303)
    async def confirm(
        self,
        db: NamedDependency[Database],
        secret: NamedDependency[bytes],
        worker: NamedDependency[OutboxWorker],
        token: FromPath[str],
    ) -> Response[Any]:
        try:
            async with db.writer.begin() as session:
                sub = await svc.by_token(session, token, secret)
                await svc.confirm(session, sub, utc_now())
        except (NotFound, Conflict) as exc:
            return _problem(exc)
        worker.arm(earliest_planned(session))
        return Redirect(f"/subscriptions/{token}?done=confirmed", status_code=303)

    @post("/subscriptions/{token:str}/unsubscribe", status_code=303)
    async def unsubscribe(
        self, db: NamedDependency[Database], secret: NamedDependency[bytes], token: FromPath[str]
    ) -> Response[Any]:
        try:
            async with db.writer.begin() as session:
                sub = await svc.by_token(session, token, secret)
                await svc.unsubscribe(session, sub, utc_now())
        except NotFound as exc:
            return _problem(exc)
        return Redirect(f"/subscriptions/{token}?done=unsubscribed", status_code=303)


def _problem(exc: Exception) -> Template:
    if isinstance(exc, Conflict):
        heading, status, detail = "That cannot be done", 409, exc.reason
    else:
        heading, status, detail = "Subscription not found", 404, str(exc)
    return Template(
        "subscription.html",
        context={"sub": None, "heading": heading, "detail": detail},
        status_code=status,
    )
