"""HTTP routes for webhooks: subscribe, change, rotate the secret, test, and the delivery log.

Viewers of the webhook's process read webhooks and their logs (never a secret); organizers
change them (401 without a token, 403 with another process's).
The signing secret is in two answers only: the webhook's creation and a rotation.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromQuery, JSONBody, QueryParameter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler import webhooks as svc
from scheduler.database import Database
from scheduler.errors import NotFound, documented
from scheduler.feeds import parse_hosts
from scheduler.fields import ID_MAX, PathId
from scheduler.models import Webhook, WebhookAttempt, WebhookDelivery, utc_now
from scheduler.outbox import OutboxWorker
from scheduler.permissions import Caller, Role, authenticated, processes_where, require_role
from scheduler.processes import get_process
from scheduler.settings import Settings

DeliveryStatus = Literal["planned", "sending", "sent", "failed", "cancelled"]
DeliveryType = Annotated[str, msgspec.Meta(pattern=r"^[a-z_.]{1,40}$")]


class WebhookOut(msgspec.Struct):
    id: int
    process_id: int
    url: str
    event_types: list[str]
    description: str
    active: bool
    # Since when every delivery failed (null after a success); a webhook failing longer
    # than webhooks_disable_after_hours is turned off with disabled_at and the reason.
    failing_since: datetime | None
    disabled_at: datetime | None
    disabled_reason: str
    previous_secret_valid_until: datetime | None
    created_by: int | None
    created_at: datetime
    updated_at: datetime
    deliveries_url: str


class NewWebhookOut(WebhookOut):
    """A webhook just made, with its signing secret: the only answer that shows it."""

    secret: str


class SecretOut(msgspec.Struct):
    webhook_id: int
    secret: str
    # Until then the previous secret signs too (a second v1 signature).
    previous_secret_valid_until: datetime | None


class AttemptOut(msgspec.Struct):
    attempted_at: datetime
    duration_ms: int
    http_status: int | None
    error: str
    response_excerpt: str


class DeliveryOut(msgspec.Struct):
    id: int
    webhook_id: int
    message_id: str
    event_type: str
    status: str
    attempts: int
    created_at: datetime
    # When the next attempt is due (planned), else null.
    next_attempt_at: datetime | None
    sent_at: datetime | None
    last_error: str
    payload: dict[str, Any]
    attempt_log: list[AttemptOut]


class DeliveryPage(msgspec.Struct):
    items: list[DeliveryOut]
    total: int
    limit: int
    offset: int


def webhook_out(hook: Webhook) -> WebhookOut:
    return WebhookOut(**_fields(hook))


def _fields(hook: Webhook) -> dict[str, Any]:
    return {
        "id": hook.id,
        "process_id": hook.process_id,
        "url": hook.url,
        "event_types": list(hook.event_types),
        "description": hook.description,
        "active": hook.active,
        "failing_since": hook.failing_since,
        "disabled_at": hook.disabled_at,
        "disabled_reason": hook.disabled_reason,
        "previous_secret_valid_until": hook.previous_secret_until if hook.previous_secret else None,
        "created_by": hook.created_by,
        "created_at": hook.created_at,
        "updated_at": hook.updated_at,
        "deliveries_url": f"/api/webhooks/{hook.id}/deliveries",
    }


def delivery_out(row: WebhookDelivery, attempts: list[WebhookAttempt]) -> DeliveryOut:
    return DeliveryOut(
        id=row.id,
        webhook_id=row.webhook_id,
        message_id=row.message_id,
        event_type=row.event_type,
        status=row.status,
        attempts=row.attempts,
        created_at=row.created_at,
        next_attempt_at=row.due_at if row.status == "planned" else None,
        sent_at=row.sent_at,
        last_error=row.last_error,
        payload=svc.payload_of(row),
        attempt_log=[
            AttemptOut(a.attempted_at, a.duration_ms, a.http_status, a.error, a.response_excerpt)
            for a in attempts
        ],
    )


async def _checked_url(settings: Settings, url: str) -> str:
    """The URL as stored, under the deployment's host rules (outside any transaction)."""
    return await svc.check_target(
        url,
        parse_hosts(settings.webhooks_allowed_hosts),
        only_allowed=settings.webhooks_only_allowed_hosts,
    )


async def _member_process(
    session: AsyncSession, who: Caller, process_id: int, at_least: Role = "organizer"
) -> None:
    await get_process(session, process_id)
    await require_role(session, who, process_id, at_least)


async def _webhook_of(
    session: AsyncSession, who: Caller, webhook_id: int, at_least: Role = "organizer"
) -> Webhook:
    """Viewers read webhooks and their logs (never a secret); organizers change them. Like
    a feed, a webhook is for members only: to anyone else it does not exist (404)."""
    hook = await svc.get_webhook(session, webhook_id)
    if hook.process_id not in await processes_where(session, who):
        raise NotFound(f"no webhook {webhook_id}")
    await require_role(session, who, hook.process_id, at_least)
    return hook


class WebhookController(Controller):
    tags = ["webhooks"]

    @post(
        "/api/processes/{process_id:int}/webhooks",
        summary="Subscribe a URL to the process's events (organizers)",
        description="`event_types`: registration.created, registration.cancelled, "
        "registration.promoted, event.moved, event.cancelled, reminder.failed (a message that "
        "ended failed), feed.run_finished. The URL must be https on a public address (hosts in "
        "`webhooks_allowed_hosts` excepted). The answer carries the signing secret, shown this "
        "once: deliveries are signed the Standard Webhooks way (README: Webhooks).",
        responses=documented(400, 401, 403, 404, 409, 413),
    )
    async def create_webhook(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        settings: NamedDependency[Settings],
        process_id: PathId,
        data: JSONBody[svc.WebhookCreate],
    ) -> NewWebhookOut:
        who = authenticated(caller)
        async with db.reader() as session:
            await _member_process(session, who, process_id)
        url = await _checked_url(settings, data.url)
        async with db.writer.begin() as session:
            await _member_process(session, who, process_id)
            hook, secret = await svc.create_webhook(
                session, process_id, data, url, who.organizer_id, utc_now()
            )
            return NewWebhookOut(**_fields(hook), secret=secret)

    @get(
        "/api/processes/{process_id:int}/webhooks",
        summary="The process's webhooks (members)",
        responses=documented(401, 403, 404),
    )
    async def list_webhooks(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        process_id: PathId,
    ) -> list[WebhookOut]:
        who = authenticated(caller)
        async with db.reader() as session:
            await _member_process(session, who, process_id, "viewer")
            rows = await session.scalars(
                select(Webhook).where(Webhook.process_id == process_id).order_by(Webhook.id)
            )
            return [webhook_out(h) for h in rows]

    @get(
        "/api/webhooks/{webhook_id:int}",
        summary="Read one webhook (members)",
        responses=documented(401, 403, 404),
    )
    async def get_webhook(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        webhook_id: PathId,
    ) -> WebhookOut:
        who = authenticated(caller)
        async with db.reader() as session:
            return webhook_out(await _webhook_of(session, who, webhook_id, "viewer"))

    @patch(
        "/api/webhooks/{webhook_id:int}",
        summary="Change a webhook (organizers)",
        description="Only the fields sent change. `active: false` turns it off and cancels "
        "its waiting deliveries; `active: true` turns a disabled webhook on again.",
        responses=documented(400, 401, 403, 404, 413),
    )
    async def update_webhook(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        settings: NamedDependency[Settings],
        webhook_id: PathId,
        data: JSONBody[svc.WebhookPatch],
    ) -> WebhookOut:
        who = authenticated(caller)
        async with db.reader() as session:
            await _webhook_of(session, who, webhook_id)
        url = None
        if isinstance(data.url, str):
            url = await _checked_url(settings, data.url)
        async with db.writer.begin() as session:
            hook = await _webhook_of(session, who, webhook_id)
            await svc.update_webhook(session, hook, data, url, utc_now())
            return webhook_out(hook)

    @delete(
        "/api/webhooks/{webhook_id:int}",
        summary="Delete a webhook and its delivery log (organizers)",
        responses=documented(401, 403, 404),
    )
    async def delete_webhook(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        webhook_id: PathId,
    ) -> None:
        who = authenticated(caller)
        async with db.writer.begin() as session:
            hook = await _webhook_of(session, who, webhook_id)
            await session.delete(hook)

    @post(
        "/api/webhooks/{webhook_id:int}/rotate-secret",
        summary="Give a webhook a new signing secret (organizers)",
        description="The new secret is shown this once. The previous one keeps signing (a "
        "second signature in webhook-signature) until `previous_secret_valid_until` "
        "(`webhooks_secret_grace_hours`), so receivers can switch without losing deliveries.",
        status_code=200,
        responses=documented(401, 403, 404),
    )
    async def rotate_secret(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        settings: NamedDependency[Settings],
        webhook_id: PathId,
    ) -> SecretOut:
        who = authenticated(caller)
        grace = timedelta(hours=settings.webhooks_secret_grace_hours)
        async with db.writer.begin() as session:
            hook = await _webhook_of(session, who, webhook_id)
            secret = await svc.rotate_secret(session, hook, utc_now(), grace)
            return SecretOut(hook.id, secret, hook.previous_secret_until)

    @post(
        "/api/webhooks/{webhook_id:int}/test",
        summary="Send a ping to a webhook (organizers)",
        description="A `ping` delivery, signed and sent like any other (also to a disabled "
        "webhook, to check it before turning it on again); follow it in the deliveries.",
        status_code=202,
        responses=documented(401, 403, 404),
    )
    async def test_webhook(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        worker: NamedDependency[OutboxWorker],
        webhook_id: PathId,
    ) -> DeliveryOut:
        who = authenticated(caller)
        async with db.writer.begin() as session:
            hook = await _webhook_of(session, who, webhook_id)
            row = await svc.plan_ping(session, hook, utc_now())
            out = delivery_out(row, [])
        worker.kick()
        return out

    @get(
        "/api/webhooks/{webhook_id:int}/deliveries",
        summary="A webhook's deliveries and every attempt (members)",
        description="Newest first: the event type, the body sent (the same on every attempt), "
        "the status (planned, sending, sent, failed, cancelled), the next attempt's time, the "
        "last error, and each attempt's time, duration, HTTP status, error and the first "
        "characters of the answer.",
        responses=documented(400, 401, 403, 404),
    )
    async def list_deliveries(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        webhook_id: PathId,
        status: FromQuery[DeliveryStatus | None] = None,
        event_type: FromQuery[DeliveryType | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        offset: Annotated[int, QueryParameter(ge=0, le=ID_MAX)] = 0,
    ) -> DeliveryPage:
        who = authenticated(caller)
        async with db.reader() as session:
            await _webhook_of(session, who, webhook_id, "viewer")
            rows, attempts, total = await svc.list_deliveries(
                session,
                webhook_id,
                status=status,
                event_type=event_type,
                limit=limit,
                offset=offset,
            )
            items = [delivery_out(r, attempts[r.id]) for r in rows]
        return DeliveryPage(items, total, limit, offset)

    @post(
        "/api/webhooks/{webhook_id:int}/deliveries/{delivery_id:int}/retry",
        summary="Send a finished delivery again (organizers)",
        description="The same webhook-id and body, attempted afresh; earlier attempts stay "
        "in the log.",
        status_code=202,
        responses=documented(401, 403, 404, 409),
    )
    async def retry_delivery(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        worker: NamedDependency[OutboxWorker],
        webhook_id: PathId,
        delivery_id: PathId,
    ) -> DeliveryOut:
        who = authenticated(caller)
        async with db.writer.begin() as session:
            hook = await _webhook_of(session, who, webhook_id)
            row = await svc.redeliver(session, hook, delivery_id, utc_now())
            out = delivery_out(row, (await svc.attempt_log(session, [row.id]))[row.id])
        worker.kick()
        return out
