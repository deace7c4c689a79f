"""Webhooks: organizers subscribe URLs to some of a process's events.

Services take a session and never commit. A webhook's signing secret is shown once, by
``create_webhook`` and ``rotate_secret``; after a rotation the previous secret keeps
signing (a second signature) for ``webhooks_secret_grace_hours``, so receivers can switch
without losing a delivery. A webhook turned off, by hand or because its deliveries kept
failing, has its waiting deliveries cancelled and says why; turning it on again clears that.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, UnsetType
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler.errors import Conflict, Invalid, NotFound
from scheduler.models import Webhook, WebhookAttempt, WebhookDelivery
from scheduler.webhook_events import (
    EventType,
    delivery_row,
    envelope,
    new_message_id,
    ping,
)
from scheduler.webhook_signatures import new_secret
from scheduler.webhook_targets import Refused, Unresolved, addresses, check_url

MAX_PER_PROCESS = 20
CANCELLED_WHEN_OFF = "the webhook is disabled"

WebhookUrl = Annotated[
    str, Meta(min_length=1, max_length=2000, examples=["https://hooks.example.org/forum"])
]
EventTypes = Annotated[
    list[EventType],
    Meta(min_length=1, max_length=20, examples=[["registration.created", "event.moved"]]),
]
Description = Annotated[str, Meta(max_length=500, pattern=r"^[^\x00]*$")]


class WebhookCreate(msgspec.Struct, forbid_unknown_fields=True):
    url: WebhookUrl
    event_types: EventTypes
    description: Description = ""
    active: bool = True


class WebhookPatch(msgspec.Struct, forbid_unknown_fields=True):
    """Fields left out stay as they are; ``active: true`` turns a disabled webhook on again."""

    url: WebhookUrl | UnsetType = UNSET
    event_types: EventTypes | UnsetType = UNSET
    description: Description | UnsetType = UNSET
    active: bool | UnsetType = UNSET


async def check_target(url: str, allowed: frozenset[str], *, only_allowed: bool = False) -> str:
    """The URL as it will be stored, once its rules and its host's addresses are checked
    (Invalid naming ``url``). Resolves the host: call it outside a write transaction."""
    try:
        target = check_url(url, allowed, only_allowed=only_allowed)
        await addresses(target)
    except (Refused, Unresolved) as exc:
        raise Invalid("url", exc.reason) from None
    stored = str(target.url)
    if len(stored) > 2000:
        raise Invalid("url", "is longer than 2000 characters once normalised")
    return stored


def _event_types(values: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    for index, value in enumerate(values):
        if value in seen:
            raise Invalid(f"event_types[{index}]", f"{value} is listed twice")
        seen.add(value)
    return list(values)


async def create_webhook(
    session: AsyncSession,
    process_id: int,
    data: WebhookCreate,
    url: str,
    organizer_id: int | None,
    now: datetime,
) -> tuple[Webhook, str]:
    """A new webhook and its secret (``url`` checked by ``check_target``)."""
    count = await session.scalar(
        select(func.count()).select_from(Webhook).where(Webhook.process_id == process_id)
    )
    if int(count or 0) >= MAX_PER_PROCESS:
        raise Conflict(f"a process has at most {MAX_PER_PROCESS} webhooks", field="url")
    secret = new_secret()
    hook = Webhook(
        process_id=process_id,
        url=url,
        event_types=_event_types(data.event_types),
        description=data.description.strip(),
        secret=secret,
        previous_secret="",
        active=data.active,
        disabled_at=None if data.active else now,
        disabled_reason="" if data.active else "created turned off",
        created_by=organizer_id,
        created_at=now,
        updated_at=now,
    )
    session.add(hook)
    await session.flush()
    return hook, secret


async def get_webhook(session: AsyncSession, webhook_id: int) -> Webhook:
    hook = await session.get(Webhook, webhook_id)
    if hook is None:
        raise NotFound(f"no webhook {webhook_id}")
    return hook


async def update_webhook(
    session: AsyncSession, hook: Webhook, data: WebhookPatch, url: str | None, now: datetime
) -> None:
    """Apply a partial change (a new ``url`` checked by ``check_target``)."""
    if url is not None:
        hook.url = url
    if not isinstance(data.event_types, UnsetType):
        hook.event_types = _event_types(data.event_types)
    if not isinstance(data.description, UnsetType):
        hook.description = data.description.strip()
    if data.active is True and not hook.active:
        hook.active = True
        hook.failing_since = None
        hook.disabled_at = None
        hook.disabled_reason = ""
    elif data.active is False and hook.active:
        await disable(session, hook, "turned off by an organizer", now)
    hook.updated_at = now
    await session.flush()


async def disable(session: AsyncSession, hook: Webhook, reason: str, now: datetime) -> None:
    """Turn a webhook off, saying why, and cancel its waiting deliveries (pings too)."""
    hook.active = False
    hook.disabled_at = now
    hook.disabled_reason = reason[:500]
    await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.webhook_id == hook.id, WebhookDelivery.status == "planned")
        .values(status="cancelled", last_error=CANCELLED_WHEN_OFF)
        .execution_options(synchronize_session=False)
    )


async def rotate_secret(
    session: AsyncSession, hook: Webhook, now: datetime, grace: timedelta
) -> str:
    """A new secret (returned, shown once); the old one signs too until ``now + grace``."""
    secret = new_secret()
    hook.previous_secret = hook.secret if grace else ""
    hook.previous_secret_until = now + grace if grace else None
    hook.secret = secret
    hook.updated_at = now
    await session.flush()
    return secret


async def plan_ping(session: AsyncSession, hook: Webhook, now: datetime) -> WebhookDelivery:
    """A ``ping`` delivery for this webhook alone, sent by the outbox like any other."""
    emission = ping(hook.process_id, hook.id)
    message_id = new_message_id()
    row = WebhookDelivery(
        **delivery_row(hook.id, message_id, emission.type, envelope(emission, message_id, now), now)
    )
    session.add(row)
    await session.flush()
    return row


async def redeliver(
    session: AsyncSession, hook: Webhook, delivery_id: int, now: datetime
) -> WebhookDelivery:
    """Send a finished delivery again, with the same id and body, as a fresh one (its
    earlier attempts stay in the log)."""
    row = await session.get(WebhookDelivery, delivery_id)
    if row is None or row.webhook_id != hook.id:
        raise NotFound(f"no delivery {delivery_id} of webhook {hook.id}")
    if row.status in ("planned", "sending"):
        raise Conflict(f"the delivery is {row.status} already", field="status")
    row.status = "planned"
    row.due_at = now
    row.attempts = 0
    row.last_error = ""
    row.sent_at = None
    await session.flush()
    return row


async def list_deliveries(
    session: AsyncSession,
    hook_id: int,
    *,
    status: str | None,
    event_type: str | None,
    limit: int,
    offset: int,
) -> tuple[list[WebhookDelivery], dict[int, list[WebhookAttempt]], int]:
    """A page of a webhook's deliveries, newest first, each with its attempts, and the
    number of deliveries matching."""
    query = select(WebhookDelivery).where(WebhookDelivery.webhook_id == hook_id)
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    if event_type is not None:
        query = query.where(WebhookDelivery.event_type == event_type)
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = list(
        await session.scalars(query.order_by(WebhookDelivery.id.desc()).limit(limit).offset(offset))
    )
    return rows, await attempt_log(session, [row.id for row in rows]), int(total or 0)


async def attempt_log(
    session: AsyncSession, delivery_ids: list[int]
) -> dict[int, list[WebhookAttempt]]:
    """Each delivery's attempts, oldest first."""
    attempts: dict[int, list[WebhookAttempt]] = {i: [] for i in delivery_ids}
    if delivery_ids:
        for attempt in await session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(delivery_ids))
            .order_by(WebhookAttempt.attempted_at, WebhookAttempt.id)
        ):
            attempts[attempt.delivery_id].append(attempt)
    return attempts


def payload_of(row: WebhookDelivery) -> dict[str, Any]:
    value = msgspec.json.decode(row.payload)
    assert isinstance(value, dict)
    return value
