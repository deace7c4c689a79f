"""The public pages: processes and their timelines, events and their schedules, the
registration form, and the pages behind the links in mails (see, change, confirm, cancel a
registration; ask for the floor).

Confirming needs a button press (a POST): mail scanners follow links, and a GET that
confirmed would confirm seats nobody asked for. The token in the path is the credential,
so a forged cross-site form cannot act without it; these forms carry no CSRF token and work
without cookies. Nothing here uses a session.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect, Template
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler import i18n
from scheduler import registrations as svc
from scheduler import speakers as speaker_svc
from scheduler.api_registrations import by_token
from scheduler.database import Database
from scheduler.errors import Conflict, Forbidden, Gone, Invalid, NotFound
from scheduler.events import get_event, parse_exdates, visible_clause
from scheduler.fields import PathId
from scheduler.milestones import visible_clause as milestones_visible
from scheduler.models import Event, Milestone, Process, Registration, SpeakerRequest, utc_now
from scheduler.outbox import OutboxWorker
from scheduler.pages_common import (
    LANG_COOKIE,
    TZ_COOKIE,
    AnyRequest,
    page,
    preference_cookie,
    safe_next,
    visitor,
)
from scheduler.processes import timeline
from scheduler.rate_limits import RateLimits, client_host
from scheduler.recurrence import occurrences_between
from scheduler.registration_desk import RegistrationDesk
from scheduler.registration_form import (
    answers_as_values,
    constituencies,
    countries,
    field_id,
    labels,
    questions_of,
    read_registration,
    read_speaker_request,
    read_update,
    service_error,
    speaker_labels,
)
from scheduler.reminders import earliest_planned
from scheduler.settings import Settings
from scheduler.timezones import is_valid_zone

SEAT_STATUSES = ("held", "confirmed")
LIVE_STATUSES = ("held", "confirmed", "waiting", "pending_approval")
MANAGE_DONE = ("confirmed", "cancelled", "updated", "requested", "withdrawn")


def after_commit(worker: OutboxWorker, session: AsyncSession) -> None:
    """Wake the mail sender for what the transaction queued and planned."""
    worker.kick()
    worker.arm(earliest_planned(session))


def problem(request: AnyRequest, exc: Exception, preferred_lang: str | None = None) -> Template:
    """A plain page for a refused link or action, in the visitor's language."""
    if isinstance(exc, Gone):
        key, status = "expired", 410
    elif isinstance(exc, Forbidden):
        key, status = "forbidden", 403
    elif isinstance(exc, Conflict | Invalid):
        key, status = "conflict", 409
    else:
        key, status = "not_found", 404
    lang = visitor(request, preferred_lang).lang
    detail = exc.reason if isinstance(exc, Conflict | Invalid) else ""
    return page(
        request,
        "problem.html",
        status_code=status,
        preferred_lang=preferred_lang,
        heading=i18n.text(lang, f"problem.{key}"),
        detail=detail or i18n.text(lang, f"problem.{key}_detail"),
    )


def webcal(base_url: str, path: str) -> str:
    """A calendar subscription address (calendar programs open webcal:// links)."""
    scheme, _, rest = base_url.partition("://")
    return f"webcal://{rest}{path}" if scheme in ("http", "https") else base_url + path


@dataclass(frozen=True, slots=True)
class Seats:
    capacity: int | None
    taken: int
    waiting: int

    @property
    def left(self) -> int | None:
        return None if self.capacity is None else max(self.capacity - self.taken, 0)


async def seats_of(session: AsyncSession, event: Event) -> Seats:
    rows = await session.execute(
        select(Registration.status, func.count())
        .where(Registration.event_id == event.id, Registration.status.in_(LIVE_STATUSES))
        .group_by(Registration.status)
    )
    counts = {str(s): int(n) for s, n in rows}
    taken = sum(counts.get(s, 0) for s in SEAT_STATUSES)
    return Seats(event.capacity, taken, counts.get("waiting", 0))


def closed_reason(event: Event, now: datetime, lang: str) -> str | None:
    """Why nobody may register now, in ``lang``; None while registration is open."""
    if event.status != "published":
        return i18n.text(lang, f"closed.{event.status}")
    if event.registration_opens_at is not None and now < event.registration_opens_at:
        return i18n.text(
            lang, "closed.opens", when=i18n.when(event.registration_opens_at, event.time_zone, lang)
        )
    if event.registration_closes_at is not None and now >= event.registration_closes_at:
        return i18n.text(lang, "closed.closed")
    if now >= event.ends_at:
        return i18n.text(lang, "closed.over")
    return None


async def _public_event(session: AsyncSession, event_id: int) -> tuple[Event, Process]:
    event = await get_event(session, event_id, set())
    process = await session.get(Process, event.process_id)
    assert process is not None
    return event, process


def _form_context(lang: str, event: Event) -> dict[str, Any]:
    questions = questions_of(event.questions or [])
    return {
        "questions": questions,
        "labels": labels(lang, questions),
        "countries": countries(lang),
        "constituencies": constituencies(lang),
        "field_id": field_id,
    }


class PublicPages(Controller):
    include_in_schema = False

    @get("/")
    async def home(self, request: AnyRequest, db: NamedDependency[Database]) -> Template:
        async with db.reader() as session:
            processes = list(await session.scalars(select(Process).order_by(Process.name)))
        return page(request, "home.html", processes=processes)

    @get("/language/{code:str}")
    async def choose_language(
        self, code: FromPath[str], next: FromQuery[str | None] = None
    ) -> Redirect:
        """Keeps the visitor's language in a cookie, then goes back where they were."""
        target = safe_next(next)
        lang = i18n.language_of(code)
        if lang is None:
            return Redirect(target, status_code=303)
        return Redirect(target, status_code=303, cookies=[preference_cookie(LANG_COOKIE, lang)])

    @get("/timezone")
    async def choose_time_zone(
        self, tz: FromQuery[str | None] = None, next: FromQuery[str | None] = None
    ) -> Redirect:
        target = safe_next(next)
        if tz is None or not is_valid_zone(tz.strip()):
            sep = "&" if "?" in target else "?"
            return Redirect(f"{target}{sep}tz_error=1", status_code=303)
        return Redirect(target, status_code=303, cookies=[preference_cookie(TZ_COOKIE, tz.strip())])

    @get("/processes/{slug:str}")
    async def process_page(
        self,
        request: AnyRequest,
        db: NamedDependency[Database],
        base_url: NamedDependency[str],
        slug: FromPath[str],
    ) -> Template:
        async with db.reader() as session:
            process = await session.scalar(select(Process).where(Process.slug == slug))
            if process is None:
                return problem(request, NotFound())
            start = datetime(1970, 1, 1, tzinfo=utc_now().tzinfo)
            entries = await timeline(
                session, process, set(), start, utc_now() + timedelta(days=7300)
            )
        years: dict[str, list[Any]] = {}
        lang = visitor(request).lang
        for entry in entries:
            years.setdefault(i18n.year_text(entry.start, process.time_zone, lang), []).append(entry)
        feed = f"/api/processes/{process.id}/calendar.ics"
        return page(
            request,
            "process.html",
            process=process,
            years=years,
            now=utc_now(),
            calendar_download=feed,
            calendar_subscribe=webcal(base_url, feed),
            calendar_url=base_url + feed,
        )

    @get("/events/{event_id:int}")
    async def event_page(
        self,
        request: AnyRequest,
        db: NamedDependency[Database],
        base_url: NamedDependency[str],
        event_id: PathId,
        tz_error: FromQuery[str | None] = None,
    ) -> Template:
        now = utc_now()
        try:
            async with db.reader() as session:
                event, process = await _public_event(session, event_id)
                children = list(
                    await session.scalars(
                        select(Event)
                        .where(Event.parent_id == event.id, visible_clause(set()))
                        .order_by(Event.starts_at, Event.id)
                    )
                )
                milestones = list(
                    await session.scalars(
                        select(Milestone)
                        .where(Milestone.event_id == event.id, milestones_visible(set()))
                        .order_by(Milestone.due_at)
                    )
                )
                seats = await seats_of(session, event)
                speakers = (
                    await speaker_svc.speaking_order(session, event.id)
                    if event.status == "published"
                    else []
                )
                parent = await session.get(Event, event.parent_id) if event.parent_id else None
        except NotFound as exc:
            return problem(request, exc)
        occurrences = []
        if event.rrule:
            occurrences = occurrences_between(
                event.starts_at,
                event.ends_at,
                event.time_zone,
                event.rrule,
                parse_exdates(event),
                now - timedelta(days=366),
                now + timedelta(days=3660),
                limit=24,
            )
        schedule = [(event.title, o.start, o.end) for o in occurrences] or [
            (event.title, event.starts_at, event.ends_at)
        ]
        schedule += [(c.title, c.starts_at, c.ends_at) for c in children]
        lang = visitor(request).lang
        feed = f"/api/events/{event.id}/calendar.ics"
        process_feed = f"/api/processes/{process.id}/calendar.ics"
        return page(
            request,
            "event.html",
            event=event,
            process=process,
            parent=parent,
            children=children,
            schedule=schedule,
            milestones=milestones,
            seats=seats,
            speakers=speakers,
            closed=closed_reason(event, now, lang),
            tz_error=bool(tz_error),
            calendar_download=feed,
            calendar_subscribe=webcal(base_url, process_feed),
            calendar_url=base_url + process_feed,
        )

    @get("/events/{event_id:int}/register")
    async def registration_form(
        self, request: AnyRequest, db: NamedDependency[Database], event_id: PathId
    ) -> Template:
        try:
            async with db.reader() as session:
                event, process = await _public_event(session, event_id)
                seats = await seats_of(session, event)
        except NotFound as exc:
            return problem(request, exc)
        who = visitor(request)
        values = {
            "language": who.lang,
            "time_zone": who.tz if who.tz_chosen else "",
        }
        return page(
            request,
            "register.html",
            event=event,
            process=process,
            seats=seats,
            closed=closed_reason(event, utc_now(), who.lang),
            values=values,
            errors={},
            general_error="",
            **_form_context(who.lang, event),
        )

    @post("/events/{event_id:int}/register", status_code=303)
    async def register(
        self,
        request: AnyRequest,
        db: NamedDependency[Database],
        desk: NamedDependency[RegistrationDesk],
        rate_limits: NamedDependency[RateLimits],
        event_id: PathId,
    ) -> Response[Any]:
        try:
            async with db.reader() as session:
                event, process = await _public_event(session, event_id)
                seats = await seats_of(session, event)
        except NotFound as exc:
            return problem(request, exc)
        lang = visitor(request).lang
        form = await request.form()
        questions = questions_of(event.questions or [])
        checked, data = read_registration(
            form, questions, lang, organisation_required=event.accreditation_required
        )
        general = ""
        refusal = None
        if data is not None:
            refusal = rate_limits.admit(client_host(request), data.email, time.monotonic())
        if refusal is not None:
            minutes = i18n.number(max(1, -(-refusal.retry_after // 60)), lang)
            general = i18n.text(lang, "error.rate_limited", minutes=minutes)
        elif data is not None:
            try:
                receipt = await desk.register(event.id, data)
            except (Invalid, Conflict) as exc:
                name, message = service_error(exc.field, exc.reason, lang)
                if name:
                    checked.errors[name] = message
                else:
                    general = closed_reason(event, utc_now(), lang) or message
            except NotFound as exc:
                return problem(request, exc)
            else:
                query = {"status": receipt.status}
                if receipt.position is not None:
                    query["position"] = str(receipt.position)
                return Redirect(
                    f"/events/{event.id}/registered?{urlencode(query)}", status_code=303
                )
        answer = page(
            request,
            "register.html",
            status_code=400 if refusal is None else 429,
            event=event,
            process=process,
            seats=seats,
            closed=None,
            values=checked.values,
            errors=checked.errors,
            general_error=general,
            **_form_context(lang, event),
        )
        if refusal is not None:
            answer.headers["Retry-After"] = str(refusal.retry_after)
        return answer

    @get("/events/{event_id:int}/registered")
    async def registered(
        self,
        request: AnyRequest,
        db: NamedDependency[Database],
        event_id: PathId,
        status: FromQuery[str] = "held",
        position: FromQuery[int | None] = None,
    ) -> Template:
        try:
            async with db.reader() as session:
                event, process = await _public_event(session, event_id)
        except NotFound as exc:
            return problem(request, exc)
        if status not in LIVE_STATUSES:
            status = "held"
        return page(
            request,
            "registered.html",
            event=event,
            process=process,
            status=status,
            position=position,
        )


# --- The pages behind mailed links ----------------------------------------------------------


async def _manage_context(
    session: AsyncSession, reg: Registration, event: Event, token: str
) -> dict[str, Any]:
    speaker = await session.scalar(
        select(SpeakerRequest).where(SpeakerRequest.registration_id == reg.id)
    )
    process = await session.get(Process, event.process_id)
    return {
        "reg": reg,
        "event": event,
        "process": process,
        "token": token,
        "position": await svc.waitlist_position(session, reg),
        "speaker": speaker,
        "questions": questions_of(event.questions or []),
        "field_id": field_id,
        "live": reg.status in LIVE_STATUSES,
        "can_speak": reg.status in SEAT_STATUSES
        and event.status == "published"
        and utc_now() < event.ends_at
        and (speaker is None or speaker.status == "withdrawn"),
    }


class RegistrationPages(Controller):
    include_in_schema = False

    async def _show(
        self,
        request: AnyRequest,
        db: Database,
        secret: bytes,
        settings: Settings,
        token: str,
        *,
        done: str = "",
        status_code: int = 200,
        errors: dict[str, str] | None = None,
        values: dict[str, Any] | None = None,
        speaker_errors: dict[str, str] | None = None,
        speaker_values: dict[str, Any] | None = None,
    ) -> Template:
        try:
            async with db.reader() as session:
                reg, event = await by_token(session, token, secret, settings)
                context = await _manage_context(session, reg, event, token)
        except (NotFound, Gone) as exc:
            return problem(request, exc)
        shown = {
            "name": reg.name,
            "organisation": reg.organisation,
            "region": reg.region,
            "language": reg.language,
            "time_zone": reg.time_zone,
            **answers_as_values(reg.answers or {}),
        }
        lang = visitor(request, reg.language).lang
        return page(
            request,
            "registration.html",
            status_code=status_code,
            preferred_lang=reg.language,
            labels=labels(lang, context["questions"]),
            speaker_labels=speaker_labels(lang),
            message_key=f"manage.done_{done}" if done in MANAGE_DONE else "",
            errors=errors or {},
            values=values or shown,
            speaker_errors=speaker_errors or {},
            speaker_values=speaker_values or {"language": reg.language},
            **context,
        )

    @get("/registrations/{token:str}")
    async def manage(
        self,
        request: AnyRequest,
        db: NamedDependency[Database],
        secret: NamedDependency[bytes],
        settings: NamedDependency[Settings],
        token: FromPath[str],
        done: FromQuery[str | None] = None,
    ) -> Template:
        return await self._show(request, db, secret, settings, token, done=done or "")

    @get("/registrations/{token:str}/confirm")
    async def confirm_page(
        self,
        request: AnyRequest,
        db: NamedDependency[Database],
        secret: NamedDependency[bytes],
        settings: NamedDependency[Settings],
        token: FromPath[str],
    ) -> Template | Redirect:
        try:
            async with db.reader() as session:
                reg, event = await by_token(session, token, secret, settings)
        except (NotFound, Gone) as exc:
            return problem(request, exc)
        if reg.status != "held":
            return Redirect(f"/registrations/{token}")
        return page(
            request,
            "confirm.html",
            preferred_lang=reg.language,
            reg=reg,
            event=event,
            token=token,
        )

    @post("/registrations/{token:str}/confirm", status_code=303)
    async def confirm(
        self,
        request: AnyRequest,
        db: NamedDependency[Database],
        secret: NamedDependency[bytes],
        settings: NamedDependency[Settings],
        worker: NamedDependency[OutboxWorker],
        token: FromPath[str],
    ) -> Response[Any]:
        try:
            async with db.writer.begin() as session:
                reg, _ = await by_token(session, token, secret, settings)
                await svc.confirm(session, reg, utc_now())
        except (NotFound, Gone, Conflict) as exc:
            return problem(request, exc)
        after_commit(worker, session)
        return Redirect(f"/registrations/{token}?done=confirmed", status_code=303)

    @post("/registrations/{token:str}/cancel", status_code=303)
    async def cancel(
        self,
        request: AnyRequest,
        db: NamedDependency[Database],
        secret: NamedDependency[bytes],
        settings: NamedDependency[Settings],
        worker: NamedDependency[OutboxWorker],
        token: FromPath[str],
    ) -> Response[Any]:
        hold = timedelta(minutes=settings.registration_hold_minutes)
        try:
            async with db.writer.begin() as session:
                reg, _ = await by_token(session, token, secret, settings)
                await svc.cancel(session, reg, utc_now(), hold)
        except (NotFound, Gone, Conflict) as exc:
            return problem(request, exc)
        after_commit(worker, session)
        return Redirect(f"/registrations/{token}?done=cancelled", status_code=303)

    @post("/registrations/{token:str}/update", status_code=303)
    async def update(
        self,
        request: AnyRequest,
        db: NamedDependency[Database],
        secret: NamedDependency[bytes],
        settings: NamedDependency[Settings],
        worker: NamedDependency[OutboxWorker],
        token: FromPath[str],
    ) -> Response[Any]:
        form = await request.form()
        try:
            async with db.writer.begin() as session:
                reg, event = await by_token(session, token, secret, settings)
                lang = visitor(request, reg.language).lang
                checked, data = read_update(form, questions_of(event.questions or []), lang)
                if data is not None:
                    await svc.update(session, reg, data, utc_now())
        except (NotFound, Gone, Conflict) as exc:
            return problem(request, exc)
        except Invalid as exc:
            name, message = service_error(exc.field, exc.reason, lang)
            return await self._show(
                request, db, secret, settings, token, status_code=400,
                errors={name or "name": message}, values=checked.values,
            )  # fmt: skip
        if data is None:
            return await self._show(
                request, db, secret, settings, token, status_code=400,
                errors=checked.errors, values=checked.values,
            )  # fmt: skip
        after_commit(worker, session)
        return Redirect(f"/registrations/{token}?done=updated", status_code=303)

    @post("/registrations/{token:str}/speaker-request", status_code=303)
    async def request_floor(
        self,
        request: AnyRequest,
        db: NamedDependency[Database],
        secret: NamedDependency[bytes],
        settings: NamedDependency[Settings],
        token: FromPath[str],
    ) -> Response[Any]:
        form = await request.form()
        try:
            async with db.writer.begin() as session:
                reg, event = await by_token(session, token, secret, settings)
                lang = visitor(request, reg.language).lang
                checked, data = read_speaker_request(form, lang)
                if data is not None:
                    await speaker_svc.request_to_speak(session, reg, event, data, utc_now())
        except (NotFound, Gone, Conflict) as exc:
            return problem(request, exc)
        except Invalid as exc:
            return await self._show(
                request, db, secret, settings, token, status_code=400,
                speaker_errors={exc.field: exc.reason}, speaker_values=checked.values,
            )  # fmt: skip
        if data is None:
            return await self._show(
                request, db, secret, settings, token, status_code=400,
                speaker_errors=checked.errors, speaker_values=checked.values,
            )  # fmt: skip
        return Redirect(f"/registrations/{token}?done=requested", status_code=303)

    @post("/registrations/{token:str}/speaker-request/withdraw", status_code=303)
    async def withdraw_floor(
        self,
        request: AnyRequest,
        db: NamedDependency[Database],
        secret: NamedDependency[bytes],
        settings: NamedDependency[Settings],
        worker: NamedDependency[OutboxWorker],
        token: FromPath[str],
    ) -> Response[Any]:
        try:
            async with db.writer.begin() as session:
                reg, _ = await by_token(session, token, secret, settings)
                await speaker_svc.withdraw(session, reg, utc_now())
        except (NotFound, Gone, Conflict) as exc:
            return problem(request, exc)
        after_commit(worker, session)
        return Redirect(f"/registrations/{token}?done=withdrawn", status_code=303)
