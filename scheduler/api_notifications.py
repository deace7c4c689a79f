"""HTTP route for the outbox: what was mailed to whom, and what is stuck or failed.

Organizers only, and only messages about their own processes: a message belongs to the
process of its event, or else of its registration's event.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter
from sqlalchemy import Select, func, or_, select

from scheduler.auth import require
from scheduler.database import Database
from scheduler.errors import documented
from scheduler.models import Event, Notification, Organizer, Registration
from scheduler.organizers import process_ids_of

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
    )


def visible_query(process_ids: set[int]) -> Select[Notification]:
    """Messages whose event, or whose registration, is in one of ``process_ids``."""
    return (
        select(Notification)
        .outerjoin(Event, Event.id == Notification.event_id)
        .outerjoin(Registration, Registration.id == Notification.registration_id)
        .where(or_(Event.process_id.in_(process_ids), Registration.process_id.in_(process_ids)))
    )


class NotificationController(Controller):
    path = "/api/notifications"
    tags = ["notifications"]

    @get(
        "/",
        summary="List outgoing messages",
        description="Messages about the events of the caller's processes, newest first: "
        "recipient, kind, status (planned, sending, sent, failed, skipped, cancelled), "
        "attempts, timestamps and the last delivery error.",
        responses=documented(400, 401),
    )
    async def list_notifications(
        self,
        db: NamedDependency[Database],
        organizer: NamedDependency[Organizer | None],
        status: FromQuery[NotificationStatus | None] = None,
        kind: FromQuery[NotificationKind | None] = None,
        event_id: Annotated[int | None, QueryParameter(ge=1)] = None,
        recipient: FromQuery[RecipientEmail | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        offset: Annotated[int, QueryParameter(ge=0)] = 0,
    ) -> NotificationPage:
        who = require(organizer)
        async with db.reader() as session:
            stmt = visible_query(await process_ids_of(session, who.id))
            if status is not None:
                stmt = stmt.where(Notification.status == status)
            if kind is not None:
                stmt = stmt.where(Notification.kind == kind)
            if event_id is not None:
                stmt = stmt.where(Notification.event_id == event_id)
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
