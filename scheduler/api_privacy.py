"""HTTP routes for data-subject requests: export and erase what is held about one address.

Members only, and only within their own processes (``privacy``): any member (viewers
too) may export, organizers and owners may erase. The export
is what a person asking "what do you hold about me?" is sent; the erasure is what they
get when they ask to be forgotten.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Annotated, Any, TypeVar

import msgspec
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, QueryParameter

from scheduler import privacy
from scheduler import registrations as registration_svc
from scheduler.api_notifications import NotificationOut, notification_out
from scheduler.api_registrations import RegistrationOut, registration_out
from scheduler.database import Database
from scheduler.errors import Invalid, documented
from scheduler.models import utc_now
from scheduler.outbox import OutboxWorker
from scheduler.permissions import Caller, authenticated, processes_where, require_writer
from scheduler.reminders import earliest_planned
from scheduler.settings import Settings

_Out = TypeVar("_Out", bound=msgspec.Struct)


class ExportedRegistration(RegistrationOut):
    process_id: int
    event_title: str
    decided_at: datetime | None
    updated_at: datetime
    erased_at: datetime | None


class ExportedSpeakerRequest(msgspec.Struct):
    id: int
    registration_id: int
    event_id: int
    topic: str
    summary: str
    language: str
    status: str
    position: int | None
    slot_start: datetime | None
    slot_end: datetime | None
    created_at: datetime
    updated_at: datetime


class ExportedSubscription(msgspec.Struct):
    id: int
    process_id: int
    email: str
    name: str
    language: str
    time_zone: str
    status: str
    created_at: datetime
    confirmed_at: datetime | None
    unsubscribed_at: datetime | None


class ExportedNotification(NotificationOut):
    """A message as stored, with what it says (``context``)."""

    context: dict[str, Any]


class PrivacyExport(msgspec.Struct):
    email: str
    exported_at: datetime
    process_ids: list[int]
    registrations: list[ExportedRegistration]
    speaker_requests: list[ExportedSpeakerRequest]
    subscriptions: list[ExportedSubscription]
    notifications: list[ExportedNotification]


class ErasureRequest(msgspec.Struct, forbid_unknown_fields=True):
    email: registration_svc.Email


class ErasureOut(msgspec.Struct):
    email: str
    process_ids: list[int]
    registrations_anonymised: int
    registrations_cancelled: int
    seats_passed_on: int
    speaker_requests_anonymised: int
    subscriptions_removed: int
    notifications_anonymised: int
    messages_cancelled: int


def _columns(kind: type[_Out], row: object) -> _Out:
    """A struct filled from the row's attributes of the same names."""
    return kind(**{name: getattr(row, name) for name in kind.__struct_fields__})


def _address(raw: str) -> str:
    try:
        return registration_svc.normalize_email(msgspec.convert(raw, registration_svc.Email))
    except msgspec.ValidationError:
        raise Invalid("email", "is not an email address such as amina@example.org") from None


class PrivacyController(Controller):
    path = "/api/privacy"
    tags = ["privacy"]

    @get(
        "/export",
        summary="Everything held about one email address (members)",
        description="Registrations, speaker requests, subscriptions and messages (with what "
        "they said) of that address, within the caller's processes (viewers too; a token "
        "scoped to a process: that process alone).",
        responses=documented(400, 401),
    )
    async def export(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        email: Annotated[str, QueryParameter(min_length=3, max_length=320)],
    ) -> PrivacyExport:
        who = authenticated(caller)
        address = _address(email)
        async with db.reader() as session:
            scope = await processes_where(session, who)
            found = await privacy.held(session, address, scope)
            return PrivacyExport(
                email=address,
                exported_at=utc_now(),
                process_ids=sorted(scope),
                registrations=[
                    ExportedRegistration(
                        **msgspec.structs.asdict(registration_out(reg)),
                        process_id=reg.process_id,
                        event_title=event.title,
                        decided_at=reg.decided_at,
                        updated_at=reg.updated_at,
                        erased_at=reg.erased_at,
                    )
                    for reg, event in found.registrations
                ],
                speaker_requests=[
                    _columns(ExportedSpeakerRequest, r) for r in found.speaker_requests
                ],
                subscriptions=[_columns(ExportedSubscription, s) for s in found.subscriptions],
                notifications=[
                    ExportedNotification(
                        **msgspec.structs.asdict(notification_out(n)), context=n.context or {}
                    )
                    for n in found.notifications
                ],
            )

    @post(
        "/erase",
        summary="Erase what is held about one email address (organizers)",
        description="Within the processes the caller organizes or owns (not those they only "
        "view; a read-only token: 403): registrations are "
        "anonymised and keep their status (a live one for an event still to come is "
        "cancelled first, and its seat goes to the next person waiting); speaker requests "
        "lose topic and summary; messages keep their history without address, name or "
        "content, and unsent ones are cancelled; subscriptions are deleted. Erasing twice "
        "finds nothing the second time.",
        status_code=200,
        responses=documented(400, 401, 403, 413),
    )
    async def erase(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        settings: NamedDependency[Settings],
        worker: NamedDependency[OutboxWorker],
        data: JSONBody[ErasureRequest],
    ) -> ErasureOut:
        who = require_writer(caller)
        address = registration_svc.normalize_email(data.email)
        hold = timedelta(minutes=settings.registration_hold_minutes)
        async with db.writer.begin() as session:
            scope = await processes_where(session, who, "organizer")
            done = await privacy.erase(session, address, scope, utc_now(), hold)
        worker.kick()  # people promoted into freed seats are told at once
        worker.arm(earliest_planned(session))
        return ErasureOut(address, sorted(scope), **dataclasses.asdict(done))
