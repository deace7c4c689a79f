"""HTTP routes for registrations: the public form, the manage link, and organizer views."""

from __future__ import annotations

import csv
import io
import time
from datetime import datetime, timedelta
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler import registrations as svc
from scheduler.api_calendars import event_entry
from scheduler.calendars import CalendarEntry, build_calendar
from scheduler.csv_safety import csv_safe
from scheduler.database import Database
from scheduler.errors import Gone, NotFound, documented
from scheduler.fields import ID_MAX, AwareDatetime, PathId
from scheduler.manage_links import new_nonce, registration_id_of, verify
from scheduler.models import Event, Notification, Registration, SpeakerRequest, utc_now
from scheduler.outbox import OutboxWorker
from scheduler.permissions import Caller, Role, authenticated, processes_where, require_role
from scheduler.rate_limits import RateLimits, client_host
from scheduler.registration_desk import RegistrationDesk
from scheduler.reminders import NOTICE_KINDS, REMINDER_KINDS, earliest_planned
from scheduler.settings import Settings
from scheduler.timezones import local_iso


class ReceiptOut(msgspec.Struct):
    id: int
    event_id: int
    status: str
    waitlist_position: int | None
    hold_expires_at: datetime | None
    detail: str


class EventSummary(msgspec.Struct):
    id: int
    title: str
    status: str
    time_zone: str
    start: datetime
    end: datetime
    start_local: str
    end_local: str
    start_in_your_time_zone: str
    venue: str
    online_url: str


class SpeakerSummary(msgspec.Struct):
    id: int
    topic: str
    status: str
    position: int | None
    slot_start: datetime | None
    slot_start_local: str | None
    slot_start_in_your_time_zone: str | None


class ReminderOut(msgspec.Struct):
    """One of a person's reminders (or notices) as the ledger has it."""

    id: int
    kind: str
    due_at: datetime
    status: str
    reason: str
    sent_at: datetime | None
    sent_with_id: int | None


class RegistrationView(msgspec.Struct):
    """What a registrant sees through the manage link."""

    id: int
    status: str
    name: str
    email: str
    organisation: str
    constituency: str
    country: str
    region: str
    language: str
    time_zone: str
    answers: dict[str, Any]
    waitlist_position: int | None
    hold_expires_at: datetime | None
    event: EventSummary
    speaker_request: SpeakerSummary | None
    calendar_url: str
    created_at: datetime
    reminders: list[ReminderOut]


class RegistrationOut(msgspec.Struct):
    """An organizer's view of one registration."""

    id: int
    event_id: int
    status: str
    name: str
    email: str
    organisation: str
    constituency: str
    country: str
    region: str
    language: str
    time_zone: str
    answers: dict[str, Any]
    waitlist_seq: int | None
    hold_expires_at: datetime | None
    confirmed_at: datetime | None
    promoted_at: datetime | None
    cancelled_at: datetime | None
    created_at: datetime


class RegistrationPage(msgspec.Struct):
    items: list[RegistrationOut]
    total: int
    limit: int
    offset: int


class WaitingOut(msgspec.Struct):
    position: int
    id: int
    name: str
    email: str
    organisation: str
    constituency: str
    created_at: datetime


class Counts(msgspec.Struct):
    total: int
    capacity: int | None
    seats_taken: int
    by_status: dict[str, int]
    by_constituency: dict[str, int]
    by_region: dict[str, int]
    by_country: dict[str, int]


class Approval(msgspec.Struct, forbid_unknown_fields=True):
    accredit_until: AwareDatetime | None = None


class Rejection(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=2000)] = ""


class ResendRequest(msgspec.Struct, forbid_unknown_fields=True):
    email: svc.Email


class Done(msgspec.Struct):
    status: str
    detail: str
    promoted: int = 0


_DETAIL = {
    "held": "Your seat is held: confirm it with the link we have mailed to you.",
    "confirmed": "Your seat is confirmed; details are in the mail we have sent you.",
    "waiting": "The event is full: you are on the waiting list; we will mail you if a seat "
    "frees up.",
    "pending_approval": "Your registration awaits the organizers' approval of your "
    "organisation; we will mail you their decision.",
}
CSV_COLUMNS = (
    "id",
    "status",
    "name",
    "email",
    "organisation",
    "constituency",
    "country",
    "region",
    "language",
    "time_zone",
    "waitlist_seq",
    "created_at",
    "confirmed_at",
    "answers",
)


def registration_out(r: Registration) -> RegistrationOut:
    return RegistrationOut(
        id=r.id,
        event_id=r.event_id,
        status=r.status,
        name=r.name,
        email=r.email,
        organisation=r.organisation,
        constituency=r.constituency,
        country=r.country,
        region=r.region,
        language=r.language,
        time_zone=r.time_zone,
        answers=r.answers,
        waitlist_seq=r.waitlist_seq,
        hold_expires_at=r.hold_expires_at,
        confirmed_at=r.confirmed_at,
        promoted_at=r.promoted_at,
        cancelled_at=r.cancelled_at,
        created_at=r.created_at,
    )


async def by_token(
    session: AsyncSession, token: str, secret: bytes, settings: Settings
) -> tuple[Registration, Event]:
    """The registration a manage link is for: 404 if forged or revoked, 410 if expired."""
    registration_id = registration_id_of(token)
    reg = await session.get(Registration, registration_id) if registration_id else None
    if reg is None or not verify(token, reg.token_nonce, secret):
        raise NotFound("no such registration")
    event = await session.get(Event, reg.event_id)
    assert event is not None
    # A series ends with its last meeting (never, if it is endless), not with its first.
    ended = event.series_ends_at if event.rrule else event.ends_at
    if ended is not None and utc_now() > ended + timedelta(
        days=settings.manage_link_days_after_event
    ):
        raise Gone("this link has expired")
    return reg, event


async def registration_view(
    session: AsyncSession, reg: Registration, event: Event, token: str
) -> RegistrationView:
    speaker = await session.scalar(
        select(SpeakerRequest).where(SpeakerRequest.registration_id == reg.id)
    )
    ledger = await session.scalars(
        select(Notification)
        .where(
            Notification.registration_id == reg.id,
            Notification.kind.in_((*REMINDER_KINDS, *NOTICE_KINDS)),
        )
        .order_by(Notification.due_at, Notification.id)
    )
    return RegistrationView(
        id=reg.id,
        status=reg.status,
        name=reg.name,
        email=reg.email,
        organisation=reg.organisation,
        constituency=reg.constituency,
        country=reg.country,
        region=reg.region,
        language=reg.language,
        time_zone=reg.time_zone,
        answers=reg.answers,
        waitlist_position=await svc.waitlist_position(session, reg),
        hold_expires_at=reg.hold_expires_at,
        event=EventSummary(
            id=event.id,
            title=event.title,
            status=event.status,
            time_zone=event.time_zone,
            start=event.starts_at,
            end=event.ends_at,
            start_local=local_iso(event.starts_at, event.time_zone),
            end_local=local_iso(event.ends_at, event.time_zone),
            start_in_your_time_zone=local_iso(event.starts_at, reg.time_zone),
            venue=event.venue,
            online_url=event.online_url,
        ),
        speaker_request=None
        if speaker is None
        else SpeakerSummary(
            id=speaker.id,
            topic=speaker.topic,
            status=speaker.status,
            position=speaker.position,
            slot_start=speaker.slot_start,
            slot_start_local=local_iso(speaker.slot_start, event.time_zone)
            if speaker.slot_start
            else None,
            slot_start_in_your_time_zone=local_iso(speaker.slot_start, reg.time_zone)
            if speaker.slot_start
            else None,
        ),
        calendar_url=f"/api/registrations/{token}/calendar.ics",
        created_at=reg.created_at,
        reminders=[
            ReminderOut(n.id, n.kind, n.due_at, n.status, n.reason, n.sent_at, n.sent_with_id)
            for n in ledger
        ],
    )


class RegistrationController(Controller):
    tags = ["registrations"]

    @post(
        "/api/events/{event_id:int}/registrations",
        summary="Register for an event (public)",
        description="Within the event's registration window. Seats are never overbooked: "
        "when the event is full the registration joins the waiting list and is told its "
        "position. With double opt-in the seat counts once the mailed link is confirmed. "
        "An email already registered for the event gets 409 with one fixed text, whatever "
        "that registration's state, and the registration's manage link is mailed to the "
        "address. Rate limited per network address and per email address (429).",
        responses=documented(400, 404, 409, 413, 429, 503),
    )
    async def register(
        self,
        request: Request[Any, Any, Any],
        desk: NamedDependency[RegistrationDesk],
        rate_limits: NamedDependency[RateLimits],
        event_id: PathId,
        data: JSONBody[svc.RegistrationCreate],
    ) -> ReceiptOut:
        rate_limits.enforce(client_host(request), data.email, time.monotonic())
        receipt = await desk.register(event_id, data)
        return ReceiptOut(
            id=receipt.id,
            event_id=receipt.event_id,
            status=receipt.status,
            waitlist_position=receipt.position,
            hold_expires_at=receipt.hold_expires_at,
            detail=_DETAIL[receipt.status],
        )

    @post(
        "/api/events/{event_id:int}/registrations/resend",
        summary="Mail the manage link again",
        description="Always answers 202, whether or not the address is registered (or the "
        "event exists). Rate limited per network address and per email address (429).",
        status_code=202,
        responses=documented(400, 404, 413, 429),
    )
    async def resend(
        self,
        request: Request[Any, Any, Any],
        db: NamedDependency[Database],
        worker: NamedDependency[OutboxWorker],
        rate_limits: NamedDependency[RateLimits],
        event_id: PathId,
        data: JSONBody[ResendRequest],
    ) -> Done:
        rate_limits.enforce(client_host(request), data.email, time.monotonic())
        async with db.writer.begin() as session:
            event = await session.get(Event, event_id)
            if event is not None:
                await svc.mail_manage_link(session, event, data.email, utc_now())
        worker.kick()
        return Done("accepted", "If this address is registered, a mail is on its way.")

    @get(
        "/api/registrations/{token:str}",
        summary="View a registration through its manage link",
        responses=documented(404, 410),
    )
    async def view(
        self,
        db: NamedDependency[Database],
        secret: NamedDependency[bytes],
        settings: NamedDependency[Settings],
        token: FromPath[str],
    ) -> RegistrationView:
        async with db.reader() as session:
            reg, event = await by_token(session, token, secret, settings)
            return await registration_view(session, reg, event, token)

    @patch(
        "/api/registrations/{token:str}",
        summary="Change a registration (answers, name, language, time zone)",
        responses=documented(400, 404, 409, 410, 413),
    )
    async def update(
        self,
        db: NamedDependency[Database],
        secret: NamedDependency[bytes],
        settings: NamedDependency[Settings],
        token: FromPath[str],
        data: JSONBody[svc.RegistrationUpdate],
    ) -> RegistrationView:
        async with db.writer.begin() as session:
            reg, event = await by_token(session, token, secret, settings)
            await svc.update(session, reg, data, utc_now())
            return await registration_view(session, reg, event, token)

    @post(
        "/api/registrations/{token:str}/confirm",
        summary="Confirm a held seat (double opt-in)",
        status_code=200,
        responses=documented(404, 409, 410),
    )
    async def confirm(
        self,
        db: NamedDependency[Database],
        secret: NamedDependency[bytes],
        settings: NamedDependency[Settings],
        worker: NamedDependency[OutboxWorker],
        token: FromPath[str],
    ) -> Done:
        async with db.writer.begin() as session:
            reg, _ = await by_token(session, token, secret, settings)
            changed = await svc.confirm(session, reg, utc_now())
        worker.kick()
        worker.arm(earliest_planned(session))
        return Done("confirmed", "Your seat is confirmed." if changed else "Already confirmed.")

    @post(
        "/api/registrations/{token:str}/cancel",
        summary="Cancel a registration",
        description="A freed seat goes at once to the first person on the waiting list.",
        status_code=200,
        responses=documented(404, 409, 410),
    )
    async def cancel(
        self,
        db: NamedDependency[Database],
        secret: NamedDependency[bytes],
        settings: NamedDependency[Settings],
        worker: NamedDependency[OutboxWorker],
        token: FromPath[str],
    ) -> Done:
        async with db.writer.begin() as session:
            reg, _ = await by_token(session, token, secret, settings)
            promoted = await svc.cancel(session, reg, utc_now(), _hold(settings))
        worker.kick()
        worker.arm(earliest_planned(session))
        return Done("cancelled", "Your registration is cancelled.", promoted=len(promoted))

    @post(
        "/api/registrations/{token:str}/revoke",
        summary="Revoke this manage link and mail a new one",
        status_code=200,
        responses=documented(404, 410),
    )
    async def revoke(
        self,
        db: NamedDependency[Database],
        secret: NamedDependency[bytes],
        settings: NamedDependency[Settings],
        worker: NamedDependency[OutboxWorker],
        token: FromPath[str],
    ) -> Done:
        async with db.writer.begin() as session:
            reg, event = await by_token(session, token, secret, settings)
            reg.token_nonce = new_nonce()
            svc.notify(session, reg, event, "manage_link")
        worker.kick()
        return Done("revoked", "This link no longer works; a new one is on its way.")

    @get(
        "/api/registrations/{token:str}/calendar.ics",
        summary="The event as an iCalendar file, for this registrant",
        media_type="text/calendar; charset=utf-8",
        responses=documented(404, 410),
    )
    async def calendar(
        self,
        db: NamedDependency[Database],
        secret: NamedDependency[bytes],
        settings: NamedDependency[Settings],
        token: FromPath[str],
    ) -> Response[bytes]:
        async with db.reader() as session:
            reg, event = await by_token(session, token, secret, settings)
            entries = [event_entry(event, settings.public_base_url)]
            speaker = await session.scalar(
                select(SpeakerRequest).where(
                    SpeakerRequest.registration_id == reg.id,
                    SpeakerRequest.slot_start.is_not(None),
                )
            )
            if speaker is not None and speaker.slot_start and speaker.slot_end:
                entries.append(
                    CalendarEntry(
                        uid=f"{event.uid}-speaker-{speaker.id}",
                        sequence=event.sequence,
                        title=f"Your speaking slot: {event.title}",
                        start=speaker.slot_start,
                        end=speaker.slot_end,
                        time_zone=event.time_zone,
                        status=event.status,
                        description=speaker.topic,
                    )
                )
        body = build_calendar(event.title, reg.time_zone, entries, utc_now())
        return Response(
            body,
            media_type="text/calendar; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="event-{event.id}.ics"'},
        )

    # Organizer views and actions (same paths as the public form need the same controller).

    @get(
        "/api/events/{event_id:int}/registrations",
        summary="List and filter an event's registrations (members)",
        responses=documented(400, 401, 403, 404),
    )
    async def list_registrations(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        event_id: PathId,
        status: FromQuery[str | None] = None,
        constituency: FromQuery[str | None] = None,
        region: FromQuery[str | None] = None,
        country: FromQuery[str | None] = None,
        q: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=5000)] = 500,
        offset: Annotated[int, QueryParameter(ge=0, le=ID_MAX)] = 0,
    ) -> RegistrationPage:
        who = authenticated(caller)
        async with db.reader() as session:
            await event_for(session, who, event_id, "viewer")
            query = _filtered(event_id, status, constituency, region, country, q)
            total = await session.scalar(select(func.count()).select_from(query.subquery()))
            rows = await session.scalars(
                query.order_by(Registration.id).limit(limit).offset(offset)
            )
            return RegistrationPage(
                [registration_out(r) for r in rows], int(total or 0), limit, offset
            )

    @get(
        "/api/events/{event_id:int}/registrations.csv",
        summary="Export an event's registrations as CSV (members)",
        media_type="text/csv; charset=utf-8",
        responses=documented(401, 403, 404),
    )
    async def export_csv(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        event_id: PathId,
        status: FromQuery[str | None] = None,
    ) -> Response[str]:
        who = authenticated(caller)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_COLUMNS)
        async with db.reader() as session:
            await event_for(session, who, event_id, "viewer")
            rows = await session.scalars(
                _filtered(event_id, status, None, None, None, None).order_by(Registration.id)
            )
            for r in rows:
                writer.writerow([csv_safe(_csv_value(r, c)) for c in CSV_COLUMNS])
        return Response(
            buffer.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="event-{event_id}-registrations.csv"'
            },
        )

    @get(
        "/api/events/{event_id:int}/registrations/stats",
        summary="Counts by status, constituency, region and country (members)",
        responses=documented(401, 403, 404),
    )
    async def stats(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        event_id: PathId,
    ) -> Counts:
        who = authenticated(caller)
        async with db.reader() as session:
            event = await event_for(session, who, event_id, "viewer")
            groups: dict[str, dict[str, int]] = {}
            for column in ("status", "constituency", "region", "country"):
                attr = getattr(Registration, column)
                rows = await session.execute(
                    select(attr, func.count())
                    .where(Registration.event_id == event_id)
                    .group_by(attr)
                    .order_by(attr)
                )
                groups[column] = {str(k): int(n) for k, n in rows}
            seats = await svc.seat_count(session, event)
            return Counts(
                total=sum(groups["status"].values()),
                capacity=event.capacity,
                seats_taken=seats.taken,
                by_status=groups["status"],
                by_constituency=groups["constituency"],
                by_region=groups["region"],
                by_country=groups["country"],
            )

    @get(
        "/api/events/{event_id:int}/waiting-list",
        summary="The waiting list in order (members)",
        responses=documented(401, 403, 404),
    )
    async def waiting_list(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        event_id: PathId,
    ) -> list[WaitingOut]:
        who = authenticated(caller)
        async with db.reader() as session:
            await event_for(session, who, event_id, "viewer")
            rows = await session.scalars(
                select(Registration)
                .where(Registration.event_id == event_id, Registration.status == "waiting")
                .order_by(Registration.waitlist_seq)
            )
            return [
                WaitingOut(i, r.id, r.name, r.email, r.organisation, r.constituency, r.created_at)
                for i, r in enumerate(rows, start=1)
            ]

    @post(
        "/api/events/{event_id:int}/registrations/{registration_id:int}/approve",
        summary="Approve a registration and accredit its organisation (organizers)",
        description="The organisation is accredited for every event of the process until "
        "`accredit_until` (default: four years) and is not asked again.",
        status_code=200,
        responses=documented(400, 401, 403, 404, 409),
    )
    async def approve(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        settings: NamedDependency[Settings],
        worker: NamedDependency[OutboxWorker],
        event_id: PathId,
        registration_id: PathId,
        data: JSONBody[Approval],
    ) -> ReceiptOut:
        who = authenticated(caller)
        now = utc_now()
        async with db.writer.begin() as session:
            reg = await _registration_of(session, who, event_id, registration_id)
            until = data.accredit_until or now + timedelta(days=4 * 365)
            receipt = await svc.approve(session, reg, who.organizer_id, until, now, _hold(settings))
        worker.kick()
        worker.arm(earliest_planned(session))
        return ReceiptOut(
            receipt.id,
            receipt.event_id,
            receipt.status,
            receipt.position,
            receipt.hold_expires_at,
            _DETAIL[receipt.status],
        )

    @post(
        "/api/events/{event_id:int}/registrations/{registration_id:int}/reject",
        summary="Reject a registration awaiting approval (organizers)",
        status_code=200,
        responses=documented(400, 401, 403, 404, 409),
    )
    async def reject(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        worker: NamedDependency[OutboxWorker],
        event_id: PathId,
        registration_id: PathId,
        data: JSONBody[Rejection],
    ) -> Done:
        who = authenticated(caller)
        async with db.writer.begin() as session:
            reg = await _registration_of(session, who, event_id, registration_id)
            await svc.reject(session, reg, data.reason, utc_now())
        worker.kick()
        return Done("rejected", "The registrant has been told.")

    @post(
        "/api/events/{event_id:int}/registrations/{registration_id:int}/cancel",
        summary="Cancel someone's registration (organizers)",
        description="The person is told; a freed seat goes to the first person waiting.",
        status_code=200,
        responses=documented(401, 403, 404, 409),
    )
    async def cancel_registration(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        settings: NamedDependency[Settings],
        worker: NamedDependency[OutboxWorker],
        event_id: PathId,
        registration_id: PathId,
    ) -> Done:
        who = authenticated(caller)
        async with db.writer.begin() as session:
            reg = await _registration_of(session, who, event_id, registration_id)
            promoted = await svc.cancel(session, reg, utc_now(), _hold(settings))
        worker.kick()
        worker.arm(earliest_planned(session))
        return Done("cancelled", "The registration is cancelled.", promoted=len(promoted))

    @post(
        "/api/events/{event_id:int}/registrations/{registration_id:int}/revoke-links",
        summary="Revoke every manage link of a registration (organizers)",
        status_code=200,
        responses=documented(401, 403, 404),
    )
    async def revoke_links(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        event_id: PathId,
        registration_id: PathId,
    ) -> Done:
        who = authenticated(caller)
        async with db.writer.begin() as session:
            reg = await _registration_of(session, who, event_id, registration_id)
            reg.token_nonce = new_nonce()
        return Done("revoked", "Links mailed before no longer work.")


async def _registration_of(
    session: AsyncSession, who: Caller, event_id: int, registration_id: int
) -> Registration:
    await event_for(session, who, event_id, "organizer")
    reg = await session.get(Registration, registration_id)
    if reg is None or reg.event_id != event_id:
        raise NotFound(f"no registration {registration_id} for event {event_id}")
    return reg


def _hold(settings: Settings) -> timedelta:
    return timedelta(minutes=settings.registration_hold_minutes)


async def event_for(session: AsyncSession, who: Caller, event_id: int, at_least: Role) -> Event:
    """The event, if the caller may act on it as ``at_least``: 404 for one they cannot see
    (another process's draft), 403 for one they see but may not act on."""
    event = await session.get(Event, event_id)
    if event is None or (
        event.status == "draft" and event.process_id not in await processes_where(session, who)
    ):
        raise NotFound(f"no event {event_id}")
    await require_role(session, who, event.process_id, at_least)
    return event


def _filtered(
    event_id: int,
    status: str | None,
    constituency: str | None,
    region: str | None,
    country: str | None,
    q: str | None,
) -> Any:
    query = select(Registration).where(Registration.event_id == event_id)
    for column, value in (
        (Registration.status, status),
        (Registration.constituency, constituency),
        (Registration.region, region),
        (Registration.country, country),
    ):
        if value is not None:
            query = query.where(column == value)
    if q:
        # Searched for as typed: % and _ are not wildcards here.
        text = q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        like = f"%{text}%"
        query = query.where(
            or_(
                func.lower(Registration.name).like(like, escape="\\"),
                Registration.email.like(like, escape="\\"),
                func.lower(Registration.organisation).like(like, escape="\\"),
            )
        )
    return query


def _csv_value(r: Registration, column: str) -> str:
    value = getattr(r, column)
    if column == "answers":
        return msgspec.json.encode(value).decode()
    if isinstance(value, datetime):
        return value.isoformat()
    return "" if value is None else str(value)
