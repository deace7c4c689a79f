"""HTTP routes for requests to speak: the registrant's manage link, the organizer's selection
and order, and the public speaking order."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from sqlalchemy import select

from scheduler import speakers as svc
from scheduler.api_registrations import by_token, event_for
from scheduler.database import Database
from scheduler.errors import NotFound, documented
from scheduler.fields import AwareDatetime, Id, PathId, check_range
from scheduler.models import Event, Registration, SpeakerRequest, utc_now
from scheduler.outbox import OutboxWorker
from scheduler.permissions import Caller, authenticated
from scheduler.registrations import Constituency
from scheduler.reminders import earliest_planned
from scheduler.settings import Settings
from scheduler.timezones import local_iso

Quota = Annotated[int, msgspec.Meta(ge=0, le=10_000)]
RegionName = Annotated[str, msgspec.Meta(max_length=80)]
SpeakerCount = Annotated[
    int,
    msgspec.Meta(ge=1, le=1000, description="The whole order's length, those already selected too"),
]


class Quotas(msgspec.Struct, forbid_unknown_fields=True):
    """Most speakers per constituency and per region; groups left out are unlimited."""

    constituency: dict[Constituency, Quota] = {}
    region: dict[RegionName, Quota] = {}


class Selection(msgspec.Struct, forbid_unknown_fields=True):
    count: SpeakerCount
    slot_minutes: svc.Minutes
    quotas: Quotas = msgspec.field(default_factory=Quotas)
    start: AwareDatetime | None = None
    gap_minutes: svc.GapMinutes = 0


class Order(msgspec.Struct, forbid_unknown_fields=True):
    order: Annotated[list[Id], msgspec.Meta(max_length=1000)]
    slot_minutes: svc.Minutes
    start: AwareDatetime | None = None
    gap_minutes: svc.GapMinutes = 0


class Decline(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=2000)] = ""


class MyRequestOut(msgspec.Struct):
    """The registrant's own request; slot times in the event's zone and in theirs."""

    id: int
    topic: str
    summary: str
    language: str
    status: str
    position: int | None
    slot_start: datetime | None
    slot_end: datetime | None
    slot_start_local: str | None
    slot_end_local: str | None
    slot_start_in_your_time_zone: str | None
    slot_end_in_your_time_zone: str | None
    created_at: datetime


class RequestOut(msgspec.Struct):
    """An organizer's view of one request, with who asked."""

    id: int
    registration_id: int
    registration_status: str
    name: str
    email: str
    organisation: str
    constituency: str
    region: str
    country: str
    topic: str
    summary: str
    language: str
    status: str
    position: int | None
    slot_start: datetime | None
    slot_end: datetime | None
    slot_start_local: str | None
    slot_end_local: str | None
    created_at: datetime


class SelectionOut(msgspec.Struct):
    order: list[RequestOut]
    added: list[int]


class PublicSpeaker(msgspec.Struct):
    position: int
    name: str
    organisation: str
    constituency: str
    topic: str
    language: str
    slot_start: datetime | None
    slot_end: datetime | None
    slot_start_local: str | None
    slot_end_local: str | None


class SpeakingOrder(msgspec.Struct):
    event_id: int
    title: str
    time_zone: str
    speakers: list[PublicSpeaker]


def _local(instant: datetime | None, tz: str) -> str | None:
    return local_iso(instant, tz) if instant is not None else None


def my_request_out(req: SpeakerRequest, event: Event, reg: Registration) -> MyRequestOut:
    return MyRequestOut(
        id=req.id, topic=req.topic, summary=req.summary, language=req.language,
        status=req.status, position=req.position, slot_start=req.slot_start,
        slot_end=req.slot_end,
        slot_start_local=_local(req.slot_start, event.time_zone),
        slot_end_local=_local(req.slot_end, event.time_zone),
        slot_start_in_your_time_zone=_local(req.slot_start, reg.time_zone),
        slot_end_in_your_time_zone=_local(req.slot_end, reg.time_zone),
        created_at=req.created_at,
    )  # fmt: skip


def request_out(req: SpeakerRequest, reg: Registration, event: Event) -> RequestOut:
    return RequestOut(
        id=req.id, registration_id=reg.id, registration_status=reg.status, name=reg.name,
        email=reg.email, organisation=reg.organisation, constituency=reg.constituency,
        region=reg.region, country=reg.country, topic=req.topic, summary=req.summary,
        language=req.language, status=req.status, position=req.position,
        slot_start=req.slot_start, slot_end=req.slot_end,
        slot_start_local=_local(req.slot_start, event.time_zone),
        slot_end_local=_local(req.slot_end, event.time_zone),
        created_at=req.created_at,
    )  # fmt: skip


def public_speaker(req: SpeakerRequest, reg: Registration, tz: str) -> PublicSpeaker:
    return PublicSpeaker(
        position=req.position or 0, name=reg.name, organisation=reg.organisation,
        constituency=reg.constituency, topic=req.topic, language=req.language,
        slot_start=req.slot_start, slot_end=req.slot_end,
        slot_start_local=_local(req.slot_start, tz), slot_end_local=_local(req.slot_end, tz),
    )  # fmt: skip


def _slots(start: datetime | None, slot_minutes: int, gap_minutes: int) -> svc.Slots:
    check_range("start", start)
    return svc.Slots(start, slot_minutes, gap_minutes)


class SpeakerController(Controller):
    tags = ["speakers"]

    @post(
        "/api/registrations/{token:str}/speaker-request",
        summary="Ask for the floor (through the manage link)",
        description="Only with a seat (held or confirmed), once per registration: a second "
        "request gets 409. A withdrawn request may be made again and queues anew.",
        responses=documented(400, 404, 409, 410, 413),
    )
    async def request_floor(
        self,
        db: NamedDependency[Database],
        secret: NamedDependency[bytes],
        settings: NamedDependency[Settings],
        token: FromPath[str],
        data: JSONBody[svc.SpeakerRequestCreate],
    ) -> MyRequestOut:
        async with db.writer.begin() as session:
            reg, event = await by_token(session, token, secret, settings)
            req = await svc.request_to_speak(session, reg, event, data, utc_now())
            return my_request_out(req, event, reg)

    @delete(
        "/api/registrations/{token:str}/speaker-request",
        summary="Withdraw a request to speak (through the manage link)",
        description="A selected speaker gives up their slot; the others keep theirs.",
        responses=documented(404, 409, 410),
    )
    async def withdraw(
        self,
        db: NamedDependency[Database],
        secret: NamedDependency[bytes],
        settings: NamedDependency[Settings],
        worker: NamedDependency[OutboxWorker],
        token: FromPath[str],
    ) -> None:
        async with db.writer.begin() as session:
            reg, _ = await by_token(session, token, secret, settings)
            await svc.withdraw(session, reg, utc_now())
        worker.arm(earliest_planned(session))

    @get(
        "/api/events/{event_id:int}/speaker-requests",
        summary="List an event's requests to speak (members)",
        description="In request order (first come, first served).",
        responses=documented(400, 401, 403, 404),
    )
    async def list_requests(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        event_id: PathId,
        status: FromQuery[svc.SpeakerStatus | None] = None,
    ) -> list[RequestOut]:
        who = authenticated(caller)
        async with db.reader() as session:
            event = await event_for(session, who, event_id, "viewer")
            query = (
                select(SpeakerRequest, Registration)
                .join(Registration, Registration.id == SpeakerRequest.registration_id)
                .where(SpeakerRequest.event_id == event_id)
                .order_by(SpeakerRequest.created_at, SpeakerRequest.id)
            )
            if status is not None:
                query = query.where(SpeakerRequest.status == status)
            rows = await session.execute(query)
            return [request_out(req, reg, event) for req, reg in rows]

    @post(
        "/api/events/{event_id:int}/speakers/select",
        summary="Select speakers in request order, within quotas (organizers)",
        description="Fills the speaking order up to `count` speakers, first come first served, "
        "skipping a request only when its constituency or region has reached its quota. "
        "Speakers already selected keep their place and count towards the quotas. Slots are "
        "laid out from `start` (default: the event's start) and must fit inside the event. "
        "New speakers, and speakers whose slot moved, are mailed; requests not selected "
        "stay `requested`.",
        status_code=200,
        responses=documented(400, 401, 403, 404, 413),
    )
    async def select_speakers(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        worker: NamedDependency[OutboxWorker],
        event_id: PathId,
        data: JSONBody[Selection],
    ) -> SelectionOut:
        who = authenticated(caller)
        slots = _slots(data.start, data.slot_minutes, data.gap_minutes)
        async with db.writer.begin() as session:
            event = await event_for(session, who, event_id, "organizer")
            outcome = await svc.select_for_event(
                session,
                event,
                count=data.count,
                quotas_by_constituency={str(k): v for k, v in data.quotas.constituency.items()},
                quotas_by_region=data.quotas.region,
                slots=slots,
            )
            out = _selection_out(event, outcome)
        worker.kick()
        worker.arm(earliest_planned(session))
        return out

    @put(
        "/api/events/{event_id:int}/speakers",
        summary="Set the speaking order and its slots (organizers)",
        description="`order` lists request ids in speaking order; requested ones become "
        "selected. Every selected request must be listed: decline one to take it off. "
        "New speakers, and speakers whose slot moved, are mailed.",
        responses=documented(400, 401, 403, 404, 413),
    )
    async def set_order(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        worker: NamedDependency[OutboxWorker],
        event_id: PathId,
        data: JSONBody[Order],
    ) -> SelectionOut:
        who = authenticated(caller)
        slots = _slots(data.start, data.slot_minutes, data.gap_minutes)
        async with db.writer.begin() as session:
            event = await event_for(session, who, event_id, "organizer")
            outcome = await svc.set_order(session, event, data.order, slots)
            out = _selection_out(event, outcome)
        worker.kick()
        worker.arm(earliest_planned(session))
        return out

    @post(
        "/api/events/{event_id:int}/speaker-requests/{request_id:int}/decline",
        summary="Decline a request to speak (organizers)",
        description="The registrant is mailed, with the reason if one is given. A selected "
        "speaker leaves the order; the others keep their slots.",
        status_code=200,
        responses=documented(400, 401, 403, 404, 409, 413),
    )
    async def decline(
        self,
        db: NamedDependency[Database],
        caller: NamedDependency[Caller | None],
        worker: NamedDependency[OutboxWorker],
        event_id: PathId,
        request_id: PathId,
        data: JSONBody[Decline | None] = None,
    ) -> RequestOut:
        who = authenticated(caller)
        async with db.writer.begin() as session:
            event = await event_for(session, who, event_id, "organizer")
            await svc.decline(session, event, request_id, data.reason if data else "", utc_now())
            req = await session.get(SpeakerRequest, request_id)
            reg = await session.get(Registration, req.registration_id) if req else None
            assert req is not None and reg is not None
            out = request_out(req, reg, event)
        worker.kick()
        worker.arm(earliest_planned(session))
        return out

    @get(
        "/api/events/{event_id:int}/speakers",
        summary="The published speaking order (public)",
        description="Selected speakers by position, with slots in UTC and in the event's "
        "local time. Only for published events; no email addresses.",
        responses=documented(404),
    )
    async def speaking_order(
        self, db: NamedDependency[Database], event_id: PathId
    ) -> SpeakingOrder:
        async with db.reader() as session:
            event = await session.get(Event, event_id)
            if event is None or event.status != "published":
                raise NotFound(f"no published event {event_id}")
            rows = await svc.speaking_order(session, event_id)
        tz = event.time_zone
        return SpeakingOrder(
            event_id=event.id,
            title=event.title,
            time_zone=tz,
            speakers=[public_speaker(req, reg, tz) for req, reg in rows],
        )


def _selection_out(event: Event, outcome: svc.Outcome) -> SelectionOut:
    return SelectionOut(
        order=[request_out(req, reg, event) for req, reg in outcome.order], added=outcome.added
    )
