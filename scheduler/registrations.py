"""Registrations: placing people in seats or on the waiting list, confirming, cancelling,
promoting, accrediting. Every change that a person must hear about writes its message to the
outbox in the same transaction.

Services flush but never commit; the caller owns the transaction and, on PostgreSQL, the
event row lock taken by ``lock_events`` keeps the seat counts exact across nodes. A seat
confirmed plans that person's reminders, a seat lost cancels them (``reminders``), in the
same transaction. Registrations created, cancelled and promoted from the waiting list are
announced to the process's webhooks (``webhook_events``), in the same transaction too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, cast

import iso3166
import msgspec
from msgspec import UNSET, Meta, UnsetType
from sqlalchemy import (
    ColumnElement,
    ScalarSelect,
    Table,
    bindparam,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler import audit, outbox, reminders, webhook_events
from scheduler import fields as f
from scheduler.capacity import SeatCount, hold_until, place, registration_open, to_promote
from scheduler.errors import Conflict, Invalid, NotFound
from scheduler.manage_links import new_nonce
from scheduler.models import (
    ACTIVE_STATUS_SQL,
    ACTIVE_STATUSES,
    SEAT_STATUSES,
    Accreditation,
    Event,
    Notification,
    Registration,
)
from scheduler.questions import QuestionError, check_answers
from scheduler.timezones import UnknownTimeZone, zone

Language = Literal["en", "fr", "es", "ar"]
Constituency = Literal[
    "civil_society",
    "migrant_organisation",
    "diaspora_organisation",
    "member_state",
    "un_entity",
    "academia",
    "private_sector",
    "trade_union",
    "nhri",
    "local_authority",
    "other",
]
Email = Annotated[
    str,
    Meta(
        max_length=320,
        # No spaces, brackets or control characters (PostgreSQL refuses NUL in text).
        pattern=r"^[^@\s<>()\[\],;:\"\\\x00-\x1f\x7f]+@[^@\s<>()\[\],;:\"\\\x00-\x1f\x7f]+"
        r"\.[^@\s<>()\[\],;:\"\\\x00-\x1f\x7f]+$",
        examples=["amina@example.org"],
    ),
]
Country = Annotated[
    str, Meta(pattern=r"^[A-Z]{3}$", description="ISO 3166-1 alpha-3", examples=["KEN"])
]
PersonName = Annotated[str, Meta(min_length=1, max_length=200)]
Region = Annotated[str, Meta(max_length=80)]


class RegistrationCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: PersonName
    email: Email
    constituency: Constituency
    country: Country
    language: Language
    time_zone: f.ZoneName
    organisation: f.ShortText = ""
    region: Region = ""
    answers: dict[str, Any] = {}


class RegistrationUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """What a registrant may change through the manage link."""

    name: PersonName | UnsetType = UNSET
    organisation: f.ShortText | UnsetType = UNSET
    region: Region | UnsetType = UNSET
    language: Language | UnsetType = UNSET
    time_zone: f.ZoneName | UnsetType = UNSET
    answers: dict[str, Any] | UnsetType = UNSET


class AlreadyRegistered(Conflict):
    """The address holds a live registration for the event.

    The answer is the same whatever that registration's state, and its manage link is
    mailed to the address: only the mailbox's owner learns more (see ``register_many``).
    """

    def __init__(self, event_id: int) -> None:
        super().__init__(
            "this email is already registered for this event; the link to manage that "
            "registration has been mailed to it (ask again at "
            f"/api/events/{event_id}/registrations/resend)",
            field="email",
        )


# A person pressing "register" again within this time gets no second manage-link mail.
MANAGE_LINK_AGAIN_AFTER = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class Receipt:
    """What a new registrant is told: where they stand."""

    id: int
    event_id: int
    status: str
    position: int | None
    hold_expires_at: datetime | None


def normalize_email(email: str) -> str:
    return email.strip().lower()


def organisation_key(name: str) -> str:
    return " ".join(name.split()).casefold()


def check_person(data: RegistrationCreate | RegistrationUpdate) -> None:
    """Checks msgspec cannot express: a real country code and time zone, a real name."""
    country = getattr(data, "country", UNSET)
    if isinstance(country, str) and country not in iso3166.countries_by_alpha3:
        raise Invalid("country", f"{country!r} is not an ISO 3166-1 alpha-3 code")
    if isinstance(data.time_zone, str):
        try:
            zone(data.time_zone)
        except UnknownTimeZone as exc:
            raise Invalid("time_zone", str(exc)) from None
    if isinstance(data.name, str) and not data.name.strip():
        raise Invalid("name", "must not be blank")


def clean_answers(event: Event, answers: dict[str, Any]) -> dict[str, Any]:
    try:
        return check_answers(event.questions or [], answers)
    except QuestionError as exc:
        raise Invalid(exc.field, exc.reason) from None


# The batch's statements are built once: building a statement with SQLAlchemy costs more
# than SQLite takes to run it, and a prebuilt statement also keeps its cache key. The id
# and address lists are bound per call (expanding parameters).
_LOCK_EVENTS = (
    select(Event)
    .where(Event.id.in_(bindparam("event_ids", expanding=True)))
    .order_by(Event.id)
    .with_for_update()
    .execution_options(populate_existing=True)
)
_REGISTRATIONS = cast(Table, Registration.__table__)
_ACCREDITATIONS = cast(Table, Accreditation.__table__)
_EVENTS = cast(Table, Event.__table__)


def _per_event(column: ColumnElement[Any], *where: ColumnElement[bool]) -> ScalarSelect[Any]:
    return select(column).where(_REGISTRATIONS.c.event_id == _EVENTS.c.id, *where).scalar_subquery()


# Per event: seats taken, people waiting, the last place given on the waiting list. Each a
# correlated subquery, so that SQLite counts one range of an index and finds the last place
# in the other index at once: a GROUP BY over the event's registrations took six times as
# long with 20,000 of them.
_SEATS = select(
    _EVENTS.c.id,
    _per_event(func.count(), _REGISTRATIONS.c.status.in_(SEAT_STATUSES)),
    _per_event(func.count(), _REGISTRATIONS.c.status == "waiting"),
    _per_event(func.max(_REGISTRATIONS.c.waitlist_seq)),
).where(_EVENTS.c.id.in_(bindparam("event_ids", expanding=True)))
# Looked up in the partial unique index of live registrations (event_id, email): with the
# statuses as bound values SQLite walked the event's whole status index instead, 5 ms a
# batch at 30,000 registrations.
_EMAILS_TAKEN = select(_REGISTRATIONS.c.event_id, _REGISTRATIONS.c.email).where(
    _REGISTRATIONS.c.event_id.in_(bindparam("event_ids", expanding=True)),
    _REGISTRATIONS.c.email.in_(bindparam("emails", expanding=True)),
    text(ACTIVE_STATUS_SQL),
)
_ACCREDITED = select(_ACCREDITATIONS.c.process_id, _ACCREDITATIONS.c.organisation_key).where(
    _ACCREDITATIONS.c.process_id.in_(bindparam("process_ids", expanding=True)),
    _ACCREDITATIONS.c.organisation_key.in_(bindparam("keys", expanding=True)),
    _ACCREDITATIONS.c.expires_at > bindparam("now"),
)
# Core inserts of the tables, not the ORM's bulk path: the rows are plain dicts of columns
# (one shape each), and the ORM's bookkeeping per row cost a quarter of a batch.
_INSERT_REGISTRATIONS = insert(_REGISTRATIONS).returning(
    _REGISTRATIONS.c.id, sort_by_parameter_order=True
)
_INSERT_NOTIFICATIONS = insert(cast(Table, Notification.__table__))


async def lock_events(session: AsyncSession, event_ids: list[int]) -> dict[int, Event]:
    """Load and lock events in id order (one order everywhere: no deadlocks between nodes)."""
    rows = await session.scalars(_LOCK_EVENTS, {"event_ids": sorted(set(event_ids))})
    return {e.id: e for e in rows}


@dataclass
class _EventState:
    """Counts for one locked event, kept current while a batch is placed."""

    taken: int
    waiting: int
    last_seq: int
    emails: set[str] = field(default_factory=set)
    placed: set[str] = field(default_factory=set)  # by this batch


async def _event_states(
    session: AsyncSession, event_ids: list[int], emails: list[str]
) -> dict[int, _EventState]:
    states: dict[int, _EventState] = {}
    for event_id, taken, waiting, last in await session.execute(_SEATS, {"event_ids": event_ids}):
        states[event_id] = _EventState(taken, waiting, last or 0)
    rows = await session.execute(_EMAILS_TAKEN, {"event_ids": event_ids, "emails": emails})
    for event_id, email in rows:
        states[event_id].emails.add(email)
    return states


async def _accredited(
    session: AsyncSession, process_ids: set[int], keys: set[str], now: datetime
) -> set[tuple[int, str]]:
    if not keys or not process_ids:
        return set()
    rows = await session.execute(
        _ACCREDITED, {"process_ids": sorted(process_ids), "keys": sorted(keys), "now": now}
    )
    return {(p, k) for p, k in rows}


async def register_many(
    session: AsyncSession,
    requests: list[tuple[int, RegistrationCreate]],
    now: datetime,
    hold: timedelta,
) -> list[Receipt | Exception]:
    """Place a batch of new registrations in arrival order, in one transaction.

    Each request either gets a Receipt or the error that refuses it; a refused request
    writes nothing, except that an address already registered is mailed the manage link of
    its registration (AlreadyRegistered). Counts are read once per event under its lock and
    kept in memory.
    """
    event_ids = sorted({event_id for event_id, _ in requests})
    events = await lock_events(session, event_ids)
    emails = sorted({normalize_email(data.email) for _, data in requests})
    states = await _event_states(session, list(events), emails)
    keys = {organisation_key(d.organisation) for _, d in requests if d.organisation.strip()}
    # Only events that accredit organisations need to know which are accredited.
    accrediting = {e.process_id for e in events.values() if e.accreditation_required}
    accredited = await _accredited(session, accrediting, keys, now)

    results: list[Receipt | Exception] = []
    placed: list[tuple[int, dict[str, Any], Event, int | None]] = []
    remind: dict[tuple[int, str], Event] = {}
    for event_id, data in requests:
        try:
            event = events.get(event_id)
            if event is None or event.status == "draft":
                raise NotFound(f"no event {event_id}")
            check_person(data)
            closed = registration_open(
                now,
                event.registration_opens_at,
                event.registration_closes_at,
                event.ends_at,
                event.status,
            )
            if closed is not None:
                raise Conflict(f"registration is not open: {closed}")
            answers = clean_answers(event, data.answers)
            email = normalize_email(data.email)
            state = states[event_id]
            if email in state.emails:
                if email not in state.placed:  # placed by this batch: its mail is coming
                    remind[(event_id, email)] = event
                raise AlreadyRegistered(event_id)
            key = organisation_key(data.organisation)
            if event.accreditation_required and not key:
                raise Invalid("organisation", "this event accredits organisations: name yours")
            status = place(
                SeatCount(event.capacity, state.taken),
                needs_approval=event.accreditation_required
                and (event.process_id, key) not in accredited,
                confirmation_required=event.confirmation_required,
                waiting_ahead=state.waiting,
            )
        except (Invalid, Conflict, NotFound) as exc:
            results.append(exc)
            continue
        row: dict[str, Any] = {
            "event_id": event.id,
            "process_id": event.process_id,
            "name": data.name.strip(),
            "email": email,
            "organisation": data.organisation.strip(),
            "constituency": data.constituency,
            "country": data.country,
            "region": data.region.strip(),
            "language": data.language,
            "time_zone": data.time_zone,
            "answers": answers,
            "status": status,
            "token_nonce": new_nonce(),
            "created_at": now,
            "updated_at": now,
        }
        row.update(_seat_fields(status, event, state, now, hold))
        position = state.waiting if status == "waiting" else None
        state.emails.add(email)
        state.placed.add(email)
        placed.append((len(results), row, event, position))
        results.append(Receipt(0, event.id, status, position, row["hold_expires_at"]))
    for (_, email), event in remind.items():
        await mail_manage_link(session, event, email, now, again_after=MANAGE_LINK_AGAIN_AFTER)
    if not placed:
        return results
    # Two multi-row INSERTs for the whole batch, not two statements per person.
    inserted = await session.execute(_INSERT_REGISTRATIONS, [row for _, row, _, _ in placed])
    # Reminders are planned for seats confirmed at once (registration_rows), so a batch
    # that confirmed nobody (a waiting list filling up) reads no policy.
    confirmed = {row["event_id"] for _, row, _, _ in placed if row["status"] == "confirmed"}
    policies = await reminders.policies_for_events(session, [events[e] for e in confirmed])
    notes = []
    planned: list[dict[str, Any]] = []
    created = []
    for registration_id, (index, row, event, position) in zip(
        inserted.scalars(), placed, strict=True
    ):
        if event.id in policies:
            planned += reminders.registration_rows(
                event, policies[event.id], registration_id, row, now
            )
        created.append(
            webhook_events.Emission(
                row["process_id"],
                "registration.created",
                webhook_events.registration_data({**row, "id": registration_id}, position),
            )
        )
        results[index] = Receipt(
            registration_id, event.id, row["status"], position, row["hold_expires_at"]
        )
        notes.append(
            outbox.planned_row(
                kind=_NEW_KIND[row["status"]],
                recipient_email=row["email"],
                recipient_name=row["name"],
                language=row["language"],
                time_zone=row["time_zone"],
                context=message_context(event, row["hold_expires_at"], position),
                registration_id=registration_id,
                event_id=event.id,
                now=now,
            )
        )
    await session.execute(_INSERT_NOTIFICATIONS, notes)
    if planned:  # seats confirmed at once (no double opt-in): their reminders, in one go
        await session.execute(_INSERT_NOTIFICATIONS, planned)
        reminders.note_planned(session, min(r["due_at"] for r in planned))
    await webhook_events.emit(session, created, now)
    return results


_NEW_KIND = {
    "held": "registration_confirm",
    "confirmed": "registration_confirmed",
    "waiting": "waitlisted",
    "pending_approval": "approval_pending",
}


def _seat_fields(
    status: str, event: Event, state: _EventState, now: datetime, hold: timedelta
) -> dict[str, Any]:
    """The columns a placement sets, counting it in the event's in-memory state."""
    fields: dict[str, Any] = {"waitlist_seq": None, "hold_expires_at": None, "confirmed_at": None}
    if status == "waiting":
        state.last_seq += 1
        state.waiting += 1
        fields["waitlist_seq"] = state.last_seq
    elif status in SEAT_STATUSES:
        state.taken += 1
        if status == "held":
            fields["hold_expires_at"] = hold_until(now, hold, event.starts_at)
        else:
            fields["confirmed_at"] = now
    return fields


def message_context(
    event: Event, hold_expires_at: datetime | None, position: int | None, reason: str = ""
) -> dict[str, Any]:
    """What a registration mail says about its event (rendered later, by the sender)."""
    return {
        "event_title": event.title,
        "event_start": event.starts_at.isoformat(),
        "event_end": event.ends_at.isoformat(),
        "event_time_zone": event.time_zone,
        "venue": event.venue,
        "online_url": event.online_url,
        "position": position,
        "hold_expires_at": hold_expires_at.isoformat() if hold_expires_at else None,
        # A held seat waits for the mailed confirm link; nothing else shows that button.
        "needs_confirmation": hold_expires_at is not None,
        "reason": reason,
    }


def notify(
    session: AsyncSession,
    reg: Registration,
    event: Event,
    kind: str,
    *,
    position: int | None = None,
    reason: str = "",
    extra: dict[str, Any] | None = None,
) -> Notification:
    """Queue a message about ``reg`` in the caller's transaction."""
    context = message_context(event, reg.hold_expires_at, position, reason) | (extra or {})
    note = outbox.enqueue(
        session,
        kind=kind,
        recipient_email=reg.email,
        recipient_name=reg.name,
        language=reg.language,
        time_zone=reg.time_zone,
        context=context,
        event_id=event.id,
    )
    note.registration = reg
    return note


async def mail_manage_link(
    session: AsyncSession,
    event: Event,
    email: str,
    now: datetime,
    *,
    again_after: timedelta | None = None,
) -> bool:
    """Queue the manage link of ``email``'s live registration for ``event``, if it has one
    (and, with ``again_after``, if none was queued that recently). True if queued."""
    reg = await session.scalar(
        select(Registration).where(
            Registration.event_id == event.id,
            Registration.email == normalize_email(email),
            Registration.status.in_(ACTIVE_STATUSES),
        )
    )
    if reg is None:
        return False
    if again_after is not None:
        last = await session.scalar(
            select(func.max(Notification.created_at)).where(
                Notification.registration_id == reg.id, Notification.kind == "manage_link"
            )
        )
        if last is not None and last > now - again_after:
            return False
    notify(session, reg, event, "manage_link")
    return True


async def waitlist_position(session: AsyncSession, reg: Registration) -> int | None:
    if reg.status != "waiting" or reg.waitlist_seq is None:
        return None
    ahead = await session.scalar(
        select(func.count()).where(
            Registration.event_id == reg.event_id,
            Registration.status == "waiting",
            Registration.waitlist_seq <= reg.waitlist_seq,
        )
    )
    return int(ahead or 0)


async def seat_count(session: AsyncSession, event: Event) -> SeatCount:
    taken = await session.scalar(
        select(func.count()).where(
            Registration.event_id == event.id, Registration.status.in_(SEAT_STATUSES)
        )
    )
    return SeatCount(event.capacity, int(taken or 0))


async def promote_waiting(
    session: AsyncSession, event: Event, now: datetime, hold: timedelta
) -> list[Registration]:
    """Give freed seats to the first people waiting, and tell them. Caller holds the lock.

    The waiting-list rule does this, whoever freed the seat: the trail says so.
    """
    async with audit.acting_as(session, audit.WAITING_LIST):
        return await _promote(session, event, now, hold)


async def _promote(
    session: AsyncSession, event: Event, now: datetime, hold: timedelta
) -> list[Registration]:
    waiting = list(
        await session.scalars(
            select(Registration)
            .where(Registration.event_id == event.id, Registration.status == "waiting")
            .order_by(Registration.waitlist_seq)
            .limit(event.capacity if event.capacity is not None else None)
        )
    )
    chosen = set(to_promote(await seat_count(session, event), [r.id for r in waiting]))
    promoted = [r for r in waiting if r.id in chosen]
    for reg in promoted:
        reg.promoted_at = now
        if event.confirmation_required:
            reg.status = "held"
            reg.hold_expires_at = hold_until(now, hold, event.starts_at)
        else:
            reg.status = "confirmed"
            reg.confirmed_at = now
        notify(session, reg, event, "promoted")
    await session.flush()
    await webhook_events.emit(
        session,
        [webhook_events.registration_event(r, "registration.promoted") for r in promoted],
        now,
    )
    seated = [r for r in promoted if r.status == "confirmed"]
    if seated:
        await reminders.sync_registrations(session, event, seated, now)
    return promoted


async def confirm(session: AsyncSession, reg: Registration, now: datetime) -> bool:
    """Confirm a held seat (double opt-in). True if this call confirmed it."""
    if reg.status == "confirmed":
        return False
    if reg.status != "held":
        raise Conflict(f"a {reg.status} registration cannot be confirmed", field="status")
    event = (await lock_events(session, [reg.event_id]))[reg.event_id]
    if reg.hold_expires_at is not None and reg.hold_expires_at <= now:
        raise Conflict("the hold on this seat has expired", field="status")
    reg.status = "confirmed"
    reg.confirmed_at = now
    reg.hold_expires_at = None
    notify(session, reg, event, "registration_confirmed")
    await reminders.plan_for_registration(session, reg, event, now)
    return True


async def cancel(
    session: AsyncSession, reg: Registration, now: datetime, hold: timedelta
) -> list[Registration]:
    """Cancel a registration; a freed seat goes to the first person waiting at once."""
    if reg.status not in ACTIVE_STATUSES:
        raise Conflict(f"this registration is already {reg.status}", field="status")
    event = (await lock_events(session, [reg.event_id]))[reg.event_id]
    had_seat = reg.status in SEAT_STATUSES
    reg.status = "cancelled"
    reg.cancelled_at = now
    reg.hold_expires_at = None
    notify(session, reg, event, "cancelled")
    await reminders.plan_for_registration(session, reg, event, now)
    await webhook_events.emit(
        session, [webhook_events.registration_event(reg, "registration.cancelled")], now
    )
    return await promote_waiting(session, event, now, hold) if had_seat else []


async def approve(
    session: AsyncSession,
    reg: Registration,
    organizer_id: int,
    accredit_until: datetime,
    now: datetime,
    hold: timedelta,
) -> Receipt:
    """Approve a pending registration and accredit its organisation for the whole process."""
    if reg.status != "pending_approval":
        raise Conflict(f"a {reg.status} registration cannot be approved", field="status")
    if accredit_until <= now:
        raise Invalid("accredit_until", "must be in the future")
    event = (await lock_events(session, [reg.event_id]))[reg.event_id]
    key = organisation_key(reg.organisation)
    accreditation = await session.scalar(
        select(Accreditation).where(
            Accreditation.process_id == reg.process_id, Accreditation.organisation_key == key
        )
    )
    if accreditation is None:
        session.add(
            Accreditation(
                process_id=reg.process_id,
                organisation_key=key,
                organisation=reg.organisation,
                expires_at=accredit_until,
                approved_by=organizer_id,
                created_at=now,
            )
        )
    else:
        accreditation.expires_at = max(accreditation.expires_at, accredit_until)
        accreditation.approved_by = organizer_id
    waiting = await session.scalar(
        select(func.count()).where(
            Registration.event_id == event.id, Registration.status == "waiting"
        )
    )
    state = _EventState((await seat_count(session, event)).taken, int(waiting or 0), 0)
    state.last_seq = int(
        await session.scalar(
            select(func.coalesce(func.max(Registration.waitlist_seq), 0)).where(
                Registration.event_id == event.id
            )
        )
        or 0
    )
    reg.status = place(
        SeatCount(event.capacity, state.taken),
        needs_approval=False,
        confirmation_required=event.confirmation_required,
        waiting_ahead=state.waiting,
    )
    reg.decided_at = now
    for name, value in _seat_fields(reg.status, event, state, now, hold).items():
        setattr(reg, name, value)
    position = state.waiting if reg.status == "waiting" else None
    notify(session, reg, event, "approved", position=position)
    await reminders.plan_for_registration(session, reg, event, now)
    return Receipt(reg.id, reg.event_id, reg.status, position, reg.hold_expires_at)


async def reject(session: AsyncSession, reg: Registration, reason: str, now: datetime) -> None:
    if reg.status != "pending_approval":
        raise Conflict(f"a {reg.status} registration cannot be rejected", field="status")
    event = await session.get(Event, reg.event_id)
    assert event is not None
    reg.status = "rejected"
    reg.decided_at = now
    notify(session, reg, event, "rejected", reason=reason)
    await reminders.cancel_for_registration(session, reg, "the registration was rejected")
    await session.flush()


async def expire_holds(session: AsyncSession, now: datetime, hold: timedelta) -> int:
    """Release unconfirmed seats whose hold ran out, and promote in their place."""
    event_ids = list(
        await session.scalars(
            select(Registration.event_id)
            .where(Registration.status == "held", Registration.hold_expires_at <= now)
            .distinct()
        )
    )
    if not event_ids:
        return 0
    events = await lock_events(session, event_ids)
    expired = list(
        await session.scalars(
            select(Registration).where(
                Registration.event_id.in_(event_ids),
                Registration.status == "held",
                Registration.hold_expires_at <= now,
            )
        )
    )
    for reg in expired:
        reg.status = "expired"
        reg.hold_expires_at = None
        notify(session, reg, events[reg.event_id], "hold_expired")
    await session.flush()
    await reminders.cancel_for_registrations(
        session, [r.id for r in expired], "the hold expired unconfirmed"
    )
    for event in events.values():
        await promote_waiting(session, event, now, hold)
    return len(expired)


async def update(
    session: AsyncSession, reg: Registration, data: RegistrationUpdate, now: datetime
) -> None:
    if reg.status not in ACTIVE_STATUSES:
        raise Conflict(f"a {reg.status} registration cannot be changed", field="status")
    check_person(data)
    event = await session.get(Event, reg.event_id)
    assert event is not None
    if data.answers is not UNSET:
        reg.answers = clean_answers(event, data.answers)
    for name in ("name", "organisation", "region", "language", "time_zone"):
        value = getattr(data, name)
        if value is not UNSET:
            setattr(reg, name, value.strip() if isinstance(value, str) else value)
    await session.flush()
    if reg.status == "confirmed":  # reminders follow a new name, language or time zone
        await reminders.plan_for_registration(session, reg, event, now)
