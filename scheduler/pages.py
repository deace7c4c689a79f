"""The pages behind the links in mails: see, confirm and cancel a registration.

Confirming needs a button press (a POST): mail scanners follow links, and a GET that
confirmed would confirm seats nobody asked for. The token in the path is the credential,
so a forged cross-site form cannot act without it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from babel.dates import format_datetime
from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect, Template

from scheduler import registrations as svc
from scheduler.api_registrations import by_token
from scheduler.database import Database
from scheduler.errors import Conflict, Gone, NotFound
from scheduler.models import Event, Registration, utc_now
from scheduler.outbox import OutboxWorker
from scheduler.settings import Settings
from scheduler.timezones import zone

STATUS_TEXT = {
    "held": "Seat held: please confirm",
    "confirmed": "Seat confirmed",
    "waiting": "On the waiting list",
    "pending_approval": "Awaiting the organizers' approval",
    "rejected": "Not approved",
    "cancelled": "Cancelled",
    "expired": "Hold expired (not confirmed in time)",
}
MESSAGES = {
    "confirmed": "Your seat is confirmed. A confirmation is on its way by mail.",
    "cancelled": "Your registration is cancelled.",
}


def _when(value: Any, tz: str, lang: str) -> str:
    return str(format_datetime(value, "EEEE d MMMM y, HH:mm", tzinfo=zone(tz), locale=lang))


def _problem(exc: Exception) -> Template:
    if isinstance(exc, Gone):
        heading, status = "This link has expired", 410
    elif isinstance(exc, Conflict):
        heading, status = "That cannot be done", 409
    else:
        heading, status = "Registration not found", 404
    detail = exc.reason if isinstance(exc, Conflict) else str(exc)
    return Template(
        "problem.html", context={"heading": heading, "detail": detail}, status_code=status
    )


def _context(reg: Registration, event: Event, token: str, position: int | None) -> dict[str, Any]:
    lang = reg.language
    return {
        "lang": lang,
        "reg": reg,
        "event": event,
        "token": token,
        "position": position,
        "status_text": STATUS_TEXT.get(reg.status, reg.status),
        "start_event": _when(event.starts_at, event.time_zone, lang),
        "end_event": _when(event.ends_at, event.time_zone, lang),
        "start_own": _when(event.starts_at, reg.time_zone, lang),
        "end_own": _when(event.ends_at, reg.time_zone, lang),
        "hold_local": _when(reg.hold_expires_at, reg.time_zone, lang)
        if reg.hold_expires_at
        else "",
    }


class RegistrationPages(Controller):
    include_in_schema = False

    @get("/registrations/{token:str}")
    async def manage(
        self,
        db: NamedDependency[Database],
        secret: NamedDependency[bytes],
        settings: NamedDependency[Settings],
        token: FromPath[str],
        done: FromQuery[str | None] = None,
    ) -> Template:
        try:
            async with db.reader() as session:
                reg, event = await by_token(session, token, secret, settings)
                position = await svc.waitlist_position(session, reg)
        except (NotFound, Gone) as exc:
            return _problem(exc)
        context = _context(reg, event, token, position)
        context["message"] = MESSAGES.get(done or "", "")
        return Template("registration.html", context=context)

    @get("/registrations/{token:str}/confirm")
    async def confirm_page(
        self,
        db: NamedDependency[Database],
        secret: NamedDependency[bytes],
        settings: NamedDependency[Settings],
        token: FromPath[str],
    ) -> Template | Redirect:
        try:
            async with db.reader() as session:
                reg, event = await by_token(session, token, secret, settings)
        except (NotFound, Gone) as exc:
            return _problem(exc)
        if reg.status != "held":
            return Redirect(f"/registrations/{token}")
        return Template("confirm.html", context=_context(reg, event, token, None))

    @post("/registrations/{token:str}/confirm", status_code=303)
    async def confirm(
        self,
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
            return _problem(exc)
        worker.kick()
        return Redirect(f"/registrations/{token}?done=confirmed", status_code=303)

    @post("/registrations/{token:str}/cancel", status_code=303)
    async def cancel(
        self,
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
            return _problem(exc)
        worker.kick()
        return Redirect(f"/registrations/{token}?done=cancelled", status_code=303)
