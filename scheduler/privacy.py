"""Personal data: what is held about one email address, erasing it, and retention.

Scope: an organizer sees and erases only what belongs to the processes they organize (a
registration, speaker request or subscription by its process, a message by the process of
its event, registration, milestone or subscription, as in the notification list).

Erasing keeps the numbers and drops the person. Registrations are anonymised (name, email,
organisation and answers replaced, manage links revoked) and keep their status, so counts
by status, constituency, country and region stay right; a live registration for an event
still to come is cancelled first, so the seat goes to the next person waiting instead of
being held by nobody. Speaker requests lose their topic and summary. Messages keep their
history (kind, status, times) without address, name or content; unsent ones to the address
are cancelled. Subscriptions are deleted. The retention job applies the same anonymisation
to every registration of events that ended long enough ago.

Services flush and never commit; the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from dateutil.relativedelta import relativedelta
from sqlalchemy import (
    ColumnElement,
    String,
    case,
    cast,
    delete,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler import audit
from scheduler import registrations as registration_svc
from scheduler.api_notifications import visible_query
from scheduler.manage_links import new_nonce
from scheduler.models import (
    ACTIVE_STATUSES,
    Event,
    Notification,
    Registration,
    SpeakerRequest,
    Subscription,
)

ERASED_NAME = "[erased]"
# RFC 2606 reserves .invalid: an address there can never reach anyone.
ERASED_DOMAIN = "erased.invalid"
ERASED_ADDRESS = f"erased@{ERASED_DOMAIN}"
ERASED_REASON = "personal data erased"
_CHUNK = 500


@dataclass
class Held:
    """Everything held about one address within an organizer's processes."""

    registrations: list[tuple[Registration, Event]] = field(default_factory=list)
    speaker_requests: list[SpeakerRequest] = field(default_factory=list)
    subscriptions: list[Subscription] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Erasure:
    registrations_anonymised: int
    registrations_cancelled: int
    seats_passed_on: int
    speaker_requests_anonymised: int
    subscriptions_removed: int
    notifications_anonymised: int
    messages_cancelled: int


def retention_cutoff(now: datetime, months: int) -> datetime | None:
    """Events that ended before this instant are past retention; None when data is kept."""
    if months <= 0:
        return None
    return now - relativedelta(months=months)


def event_end() -> ColumnElement[Any]:
    """When an event is over: its series' last end with a rule (NULL if endless), else its end."""
    return case((Event.rrule.is_(None), Event.ends_at), else_=Event.series_ends_at)


def _chunks(ids: Sequence[int]) -> list[list[int]]:
    return [list(ids[i : i + _CHUNK]) for i in range(0, len(ids), _CHUNK)]


async def held(session: AsyncSession, email: str, process_ids: set[int]) -> Held:
    """What is stored about ``email`` in ``process_ids``, oldest first."""
    address = registration_svc.normalize_email(email)
    found = Held()
    if not process_ids:
        return found
    rows = await session.execute(
        select(Registration, Event)
        .join(Event, Event.id == Registration.event_id)
        .where(Registration.email == address, Registration.process_id.in_(process_ids))
        .order_by(Registration.id)
    )
    found.registrations = [(reg, event) for reg, event in rows]
    reg_ids = [reg.id for reg, _ in found.registrations]
    if reg_ids:
        found.speaker_requests = list(
            await session.scalars(
                select(SpeakerRequest)
                .where(SpeakerRequest.registration_id.in_(reg_ids))
                .order_by(SpeakerRequest.id)
            )
        )
    found.subscriptions = list(
        await session.scalars(
            select(Subscription)
            .where(Subscription.email == address, Subscription.process_id.in_(process_ids))
            .order_by(Subscription.id)
        )
    )
    sub_ids = [s.id for s in found.subscriptions]
    found.notifications = list(
        await session.scalars(
            visible_query(process_ids)
            .where(_about(address, reg_ids, sub_ids))
            .order_by(Notification.id)
        )
    )
    return found


def _about(address: str, reg_ids: list[int], sub_ids: list[int]) -> ColumnElement[bool]:
    """Messages to the address, or about one of its registrations or subscriptions."""
    clauses = [func.lower(Notification.recipient_email) == address]
    if reg_ids:
        clauses.append(Notification.registration_id.in_(reg_ids))
    if sub_ids:
        clauses.append(Notification.subscription_id.in_(sub_ids))
    return or_(*clauses)


async def erase(
    session: AsyncSession, email: str, process_ids: set[int], now: datetime, hold: timedelta
) -> Erasure:
    """Erase what is held about ``email`` in ``process_ids`` (see the module's rules)."""
    found = await held(session, email, process_ids)
    cancelled = passed_on = 0
    for reg, event in found.registrations:
        over = event.series_ends_at if event.rrule else event.ends_at
        if reg.status in ACTIVE_STATUSES and (over is None or over > now):
            passed_on += len(await registration_svc.cancel(session, reg, now, hold))
            cancelled += 1
    await session.flush()
    reg_ids = [reg.id for reg, _ in found.registrations]
    sub_ids = [s.id for s in found.subscriptions]
    # Messages queued just now by the cancellations are to this address too: find them again.
    note_ids = list(
        await session.scalars(
            visible_query(process_ids)
            .with_only_columns(Notification.id)
            .where(_about(registration_svc.normalize_email(email), reg_ids, sub_ids))
        )
    )
    stopped = await _forget_messages(session, note_ids)
    await anonymise_registrations(session, reg_ids, now)
    for chunk in _chunks(sub_ids):
        await session.execute(
            update(Notification)
            .where(Notification.subscription_id.in_(chunk))
            .values(subscription_id=None)
            .execution_options(synchronize_session=False)
        )
        await session.execute(delete(Subscription).where(Subscription.id.in_(chunk)))
    for sub in found.subscriptions:
        _record_erased(session, "subscription", sub.id, sub.process_id, _SUBSCRIPTION_FIELDS)
    await session.flush()
    return Erasure(
        registrations_anonymised=len(reg_ids),
        registrations_cancelled=cancelled,
        seats_passed_on=passed_on,
        speaker_requests_anonymised=len(found.speaker_requests),
        subscriptions_removed=len(sub_ids),
        notifications_anonymised=len(note_ids),
        messages_cancelled=stopped,
    )


async def _forget_messages(session: AsyncSession, note_ids: list[int]) -> int:
    """Cancel the unsent ones, then drop address, name, content and errors from all."""
    stopped = 0
    for chunk in _chunks(note_ids):
        result = await session.execute(
            update(Notification)
            .where(Notification.id.in_(chunk), Notification.status == "planned")
            .values(status="cancelled", reason=ERASED_REASON)
            .execution_options(synchronize_session=False)
        )
        stopped += int(getattr(result, "rowcount", 0) or 0)
        await session.execute(
            update(Notification)
            .where(Notification.id.in_(chunk))
            .values(recipient_email=ERASED_ADDRESS, recipient_name="", context={}, last_error="")
            .execution_options(synchronize_session=False)
        )
    return stopped


async def anonymise_registrations(
    session: AsyncSession, registration_ids: Sequence[int], now: datetime
) -> None:
    """Replace the personal fields of these registrations and their speaker requests.

    The status and the counted fields (constituency, country, region, language) stay. Each
    gets its own placeholder address: one live registration per address and event is a
    unique index.
    """
    placeholder = literal("erased-") + cast(Registration.id, String) + f"@{ERASED_DOMAIN}"
    for chunk in _chunks(list(registration_ids)):
        # The trail says what was erased, never what it said (the Core updates below are
        # invisible to the flush, hence the entries written here).
        for reg_id, process_id in await session.execute(
            select(Registration.id, Registration.process_id).where(Registration.id.in_(chunk))
        ):
            _record_erased(session, "registration", reg_id, process_id, _REGISTRATION_FIELDS, now)
        for req_id, process_id in await session.execute(
            select(SpeakerRequest.id, Registration.process_id)
            .join(Registration, Registration.id == SpeakerRequest.registration_id)
            .where(SpeakerRequest.registration_id.in_(chunk))
        ):
            _record_erased(session, "speaker_request", req_id, process_id, _SPEAKER_FIELDS)
        await session.execute(
            update(Registration)
            .where(Registration.id.in_(chunk))
            .values(
                name=ERASED_NAME,
                email=placeholder,
                organisation="",
                answers={},
                # A fresh nonce: every link mailed before stops working (and none can be
                # made without the secret, so one nonce may serve the whole chunk).
                token_nonce=new_nonce(),
                erased_at=now,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        await session.execute(
            update(SpeakerRequest)
            .where(SpeakerRequest.registration_id.in_(chunk))
            .values(topic=ERASED_NAME, summary="", updated_at=now)
            .execution_options(synchronize_session=False)
        )
    # Objects already loaded in this session must not write the old values back.
    for obj in list(session.identity_map.values()):
        if isinstance(obj, Registration | SpeakerRequest | Notification):
            session.expire(obj)


_REGISTRATION_FIELDS = ("name", "email", "organisation", "answers", "token_nonce")
_SPEAKER_FIELDS = ("topic", "summary")
_SUBSCRIPTION_FIELDS = ("email", "name")


def _record_erased(
    session: AsyncSession,
    entity: str,
    entity_id: int,
    process_id: int,
    fields: tuple[str, ...],
    erased_at: datetime | None = None,
) -> None:
    """An entry saying these fields were erased, without what they held."""
    hidden: dict[str, object] = dict.fromkeys(fields, audit.REDACTED)
    stamp = {} if erased_at is None else {"erased_at": erased_at}
    audit.record(
        session,
        action=f"{entity}.erased",
        entity_type=entity,
        entity_id=entity_id,
        process_id=process_id,
        before=hidden | dict.fromkeys(stamp),
        after=hidden | stamp,
    )


async def anonymise_ended(
    session: AsyncSession, cutoff: datetime, now: datetime, limit: int = 1000
) -> int:
    """Anonymise up to ``limit`` registrations of events over before ``cutoff``, and their
    messages. The number done: less than ``limit`` means none is left."""
    reg_ids = list(
        await session.scalars(
            select(Registration.id)
            .join(Event, Event.id == Registration.event_id)
            .where(Registration.erased_at.is_(None), event_end() < cutoff)
            .order_by(Registration.id)
            .limit(limit)
        )
    )
    if not reg_ids:
        return 0
    note_ids: list[int] = []
    for chunk in _chunks(reg_ids):
        note_ids += await session.scalars(
            select(Notification.id).where(
                Notification.registration_id.in_(chunk),
                Notification.recipient_email != ERASED_ADDRESS,
            )
        )
    await _forget_messages(session, note_ids)
    await anonymise_registrations(session, reg_ids, now)
    await session.flush()
    return len(reg_ids)
