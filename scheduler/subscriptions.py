"""Deadline subscriptions: anyone may ask to be reminded of a process's deadlines.

Double opt-in: a subscription is ``pending`` until the mailed link is confirmed, then
``active``; unsubscribing (one click, RFC 8058) makes it ``unsubscribed``. Asking never
reveals whether an address is already subscribed, and asking again within RESEND_AFTER
mails nothing more, so the form cannot be used to flood someone's mailbox. Links are signed
like manage links but in their own context, so a registration's token never opens a
subscription with the same id.

Services flush and never commit; the caller owns the transaction.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

import msgspec
from msgspec import Meta
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler import fields as f
from scheduler import outbox, reminders
from scheduler.errors import Conflict, Invalid, NotFound
from scheduler.manage_links import new_nonce, registration_id_of, verify
from scheduler.models import Notification, Process, Subscription
from scheduler.registrations import Email, Language, normalize_email
from scheduler.timezones import UnknownTimeZone, zone

PURPOSE = outbox.SUBSCRIPTION_PURPOSE
RESEND_AFTER = timedelta(minutes=10)


class SubscriptionCreate(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    name: Annotated[str, Meta(max_length=200)] = ""
    language: Language = "en"
    time_zone: f.ZoneName = "UTC"


async def subscribe(
    session: AsyncSession, process_id: int, data: SubscriptionCreate, now: datetime
) -> None:
    """Ask for a confirmation mail; an active subscription is left as it is, silently."""
    try:
        zone(data.time_zone)
    except UnknownTimeZone as exc:
        raise Invalid("time_zone", str(exc)) from None
    process = await session.get(Process, process_id)
    if process is None:
        raise NotFound(f"no process {process_id}")
    email = normalize_email(data.email)
    sub = await session.scalar(
        select(Subscription).where(
            Subscription.process_id == process_id, Subscription.email == email
        )
    )
    if sub is not None and sub.status == "active":
        return
    if sub is None:
        sub = Subscription(
            process_id=process_id,
            email=email,
            status="pending",
            token_nonce=new_nonce(),
            created_at=now,
        )
        session.add(sub)
    elif sub.status == "unsubscribed":
        sub.status = "pending"
        sub.token_nonce = new_nonce()  # links mailed before stay dead
        sub.unsubscribed_at = None
    elif await _asked_recently(session, sub, now):
        return
    sub.name = " ".join(data.name.split())
    sub.language = data.language
    sub.time_zone = data.time_zone
    await session.flush()
    note = outbox.enqueue(
        session,
        kind="subscription_confirm",
        recipient_email=sub.email,
        recipient_name=sub.name,
        language=sub.language,
        time_zone=sub.time_zone,
        context={"process_name": process.name},
        due_at=now,
    )
    note.subscription_id = sub.id
    await session.flush()


async def _asked_recently(session: AsyncSession, sub: Subscription, now: datetime) -> bool:
    last = await session.scalar(
        select(Notification.created_at)
        .where(
            Notification.subscription_id == sub.id,
            Notification.kind == "subscription_confirm",
        )
        .order_by(Notification.created_at.desc())
        .limit(1)
    )
    return last is not None and last > now - RESEND_AFTER


async def by_token(session: AsyncSession, token: str, secret: bytes) -> Subscription:
    """The subscription a link is for; 404 if forged or revoked."""
    subscription_id = registration_id_of(token)
    sub = await session.get(Subscription, subscription_id) if subscription_id else None
    if sub is None or not verify(token, sub.token_nonce, secret, PURPOSE):
        raise NotFound("no such subscription")
    return sub


async def confirm(session: AsyncSession, sub: Subscription, now: datetime) -> bool:
    """The double opt-in click: reminders are planned for the published upcoming deadlines.
    True if this call confirmed it."""
    if sub.status == "active":
        return False
    if sub.status != "pending":
        raise Conflict("this subscription was cancelled; subscribe again", field="status")
    sub.status = "active"
    sub.confirmed_at = now
    await reminders.sync_subscription(session, sub, now)
    return True


async def unsubscribe(session: AsyncSession, sub: Subscription, now: datetime) -> None:
    """Stop everything for this subscription: unsent reminders are cancelled with the reason."""
    if sub.status != "unsubscribed":
        sub.status = "unsubscribed"
        sub.unsubscribed_at = now
    await reminders.sync_subscription(session, sub, now)
    await session.execute(
        update(Notification)
        .where(
            Notification.subscription_id == sub.id,
            Notification.kind == "subscription_confirm",
            Notification.status == "planned",
        )
        .values(status="cancelled", reason="unsubscribed")
        .execution_options(synchronize_session=False)
    )
