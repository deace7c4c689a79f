"""HTTP route for the outbox and reminder ledger: what was (or will be) mailed to whom, and
what is stuck, failed, skipped or cancelled, and why.

Members of a process (viewers too), and only messages about their own processes: a message
belongs to the process of its event, its registration, its milestone or its subscription;
an organizer also sees the messages addressed to them (not through a token scoped to one
process: that sees its process's messages alone).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter
from sqlalchemy import ColumnElement, Select, func, or_, select

from scheduler.database import Database
from scheduler.errors import Invalid, documented
from scheduler.fields import ID_MAX, AwareDatetime, check_aware
from scheduler.models import Event, Milestone, Notification, Registration, Subscription
from scheduler.permissions import Caller, authenticated, processes_where

NotificationStatus = Literal["planned", "sending", "sent", "failed", "skipped", "cancelled"]
NotificationKind = Annotated[str, msgspec.Meta(pattern=r"^[a-z_]{1,40}$")]
RecipientEmail = Annotated[str, msgspec.Meta(min_length=1, max_length=320)]


class NotificationOut(msgspec.Struct):
    id: int
    kind: str
    recipient_email: str
    recipient_name: str
    language: str
    status: str
    reason: str
    attempts: int
    due_at: datetime
    created_at: datetime
    sent_at: datetime | None
    last_error: str
    message_id: str
    event_id: int | None
    registration_id: int | None
    milestone_id: int | None
    subscription_id: int | None
    organizer_id: int | None
    offset_minutes: int | None
    basis: str
    sent_with_id: int | None


class NotificationPage(msgspec.Struct):
    items: list[NotificationOut]
    limit: int
    offset: int


def notification_out(n: Notification) -> NotificationOut:
    return NotificationOut(
        id=n.id,
        kind=n.kind,
        recipient_email=n.recipient_email,
        recipient_name=n.recipient_name,
        language=n.language,
        status=n.status,
        reason=n.reason,
        attempts=n.attempts,
        due_at=n.due_at,
        created_at=n.created_at,
        sent_at=n.sent_at,
        last_error=n.last_error,
        message_id=n.message_id,
        event_id=n.event_id,
        registration_id=n.registration_id,
        milestone_id=n.milestone_id,
        subscription_id=n.subscription_id,
        organizer_id=n.organizer_id,
        offset_minutes=n.offset_minutes,
        basis=n.basis,
        sent_with_id=n.sent_with_id,
    )


def visible_query(process_ids: set[int], organizer_id: int | None = None) -> Select[Notification]:
    """Messages whose event, registration, milestone or subscription is in one of
    ``process_ids``, and those addressed to the organizer ``organizer_id``."""
    visible: list[ColumnElement[bool]] = [
        Event.process_id.in_(process_ids),
        Registration.process_id.in_(process_ids),
        Milestone.process_id.in_(process_ids),
        Subscription.process_id.in_(process_ids),
    ]
    if organizer_id is not None:
        visible.append(Notification.organizer_id == organizer_id)
    return (
        select(Notification)
        .outerjoin(Event, Event.id == Notification.event_id)
        .outerjoin(Registration, Registration.id == Notification.registration_id)
        .outerjoin(Milestone, Milestone.id == Notification.milestone_id)
        .outerjoin(Subscription, Subscription.id == Notification.subscription_id)
        .where(or_(*visible))
    )


class NotificationController(Controller):
    path = "/api/notifications"
    tags = ["notifications"]

    @get(
        "/",
        summary="List outgoing messages",
        description="Messages and reminders about the caller's processes, newest first: "
        "recipient, kind, due time, status (planned, sending, sent, failed, skipped, "
        "cancelled) with the reason, attempts, timestamps and the last delivery error. A "
        "reminder carried by a digest mail points at it with `sent_with_id`. `from`/`to` "
        "keep the messages due in that window.",
        responses=documented(400, 401),
    )
    async def list_notifications(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        status: FromQuery[NotificationStatus | None] = None,
        kind: FromQuery[NotificationKind | None] = None,
        event_id: Annotated[int | None, QueryParameter(ge=1, le=ID_MAX)] = None,
        milestone_id: Annotated[int | None, QueryParameter(ge=1, le=ID_MAX)] = None,
        registration_id: Annotated[int | None, QueryParameter(ge=1, le=ID_MAX)] = None,
        recipient: FromQuery[RecipientEmail | None] = None,
        from_: Annotated[AwareDatetime | None, QueryParameter(name="from")] = None,
        to: Annotated[AwareDatetime | None, QueryParameter(name="to")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        offset: Annotated[int, QueryParameter(ge=0, le=ID_MAX)] = 0,
    ) -> NotificationPage:
        who = authenticated(caller)
        check_aware("from", from_)
        check_aware("to", to)
        if from_ is not None and to is not None and to <= from_:
            raise Invalid("to", "must be after from")
        async with db.reader() as session:
            own = who.organizer_id if who.scope is None else None
            stmt = visible_query(await processes_where(session, who), own)
            if status is not None:
                stmt = stmt.where(Notification.status == status)
            if kind is not None:
                stmt = stmt.where(Notification.kind == kind)
            if event_id is not None:
                stmt = stmt.where(Notification.event_id == event_id)
            if milestone_id is not None:
                stmt = stmt.where(Notification.milestone_id == milestone_id)
            if registration_id is not None:
                stmt = stmt.where(Notification.registration_id == registration_id)
            if from_ is not None:
                stmt = stmt.where(Notification.due_at >= from_)
            if to is not None:
                stmt = stmt.where(Notification.due_at < to)
            if recipient is not None:
                email = recipient.strip().lower()
                stmt = stmt.where(func.lower(Notification.recipient_email) == email)
            stmt = (
                stmt.order_by(Notification.created_at.desc(), Notification.id.desc())
                .limit(limit)
                .offset(offset)
            )
            rows = await session.scalars(stmt)
            return NotificationPage(
                items=[notification_out(n) for n in rows], limit=limit, offset=offset
            )
