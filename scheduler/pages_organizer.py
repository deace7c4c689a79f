"""The organizers' pages: the cycle timeline (with move-and-cascade and its preview),
registrations and the waiting list, speakers, the reminder ledger, feeds and their runs.

An organizer signs in once with one of their tokens; the session is an encrypted, signed
cookie (Litestar's cookie backend, key derived from the app's secret), Secure, HttpOnly and
SameSite=Lax, sent only to /organize. It holds the token's id and a fingerprint of its hash,
so revoking the token ends its sessions, and the pages act with exactly that token's rights
(its scope, read-only cap and the organizer's roles: ``scheduler.permissions``). Every form
carries a CSRF token (Litestar's double-submit check), the session cookie alone can change
nothing.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from litestar import Controller, Response, Router, get, post
from litestar.config.csrf import CSRFConfig
from litestar.di import NamedDependency
from litestar.exceptions import PermissionDeniedException
from litestar.middleware import DefineMiddleware
from litestar.middleware.csrf import CSRFMiddleware
from litestar.middleware.session.base import SessionMiddleware
from litestar.middleware.session.client_side import ClientSideSessionBackend, CookieBackendConfig
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect, Template
from msgspec import UNSET
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler import audit, charts, i18n, tokens
from scheduler import events as event_svc
from scheduler import registrations as svc
from scheduler import speakers as speaker_svc
from scheduler.api_notifications import visible_query
from scheduler.api_registrations import event_for
from scheduler.auth import note_use
from scheduler.database import Database
from scheduler.errors import Conflict, Forbidden, Invalid, NotFound
from scheduler.fields import PathId
from scheduler.models import (
    NOTIFICATION_STATUSES,
    REGISTRATION_STATUSES,
    ApiToken,
    Event,
    Feed,
    FeedRun,
    Milestone,
    Notification,
    Organizer,
    Process,
    Registration,
    SpeakerRequest,
    utc_now,
)
from scheduler.outbox import OutboxWorker
from scheduler.pages import after_commit, problem
from scheduler.pages_common import AnyRequest, here, page, safe_next, visitor
from scheduler.permissions import Caller, Role, rank, require_role, roles_of
from scheduler.processes import timeline
from scheduler.settings import Settings
from scheduler.timezones import from_local, to_local

SESSION_COOKIE = "fs_organizer"
CSRF_COOKIE = "fs_csrf"
SESSION_SECONDS = 8 * 3600
PREFIX = "/organize"
LEDGER_PAGE = 100
RUNS_SHOWN = 10


def _derive(secret: bytes, purpose: str) -> bytes:
    return hashlib.sha256(purpose.encode() + b"\0" + secret).digest()


class _SessionBackend(ClientSideSessionBackend):
    """Shared rather than copied: Litestar deep-copies routers, and a cipher cannot be."""

    def __deepcopy__(self, memo: dict[int, Any]) -> _SessionBackend:
        return self


def organizer_router(secret: bytes) -> Router:
    """The organizer pages with their session and CSRF middleware (nothing else gets them)."""
    session = CookieBackendConfig(
        secret=_derive(secret, "organizer-session"),
        key=SESSION_COOKIE,
        path=PREFIX,
        max_age=SESSION_SECONDS,
        secure=True,
        httponly=True,
        samesite="lax",
    )
    csrf = CSRFConfig(
        secret=_derive(secret, "organizer-csrf").hex(),
        cookie_name=CSRF_COOKIE,
        cookie_path=PREFIX,
        cookie_secure=True,
        cookie_httponly=True,
        cookie_samesite="lax",
    )
    return Router(
        path=PREFIX,
        route_handlers=[OrganizerPages],
        exception_handlers={PermissionDeniedException: _csrf_refused},
        middleware=[
            DefineMiddleware(SessionMiddleware, backend=_SessionBackend(config=session)),
            DefineMiddleware(CSRFMiddleware, config=csrf),
        ],
        include_in_schema=False,
    )


def _csrf_refused(request: AnyRequest, _: PermissionDeniedException) -> Template:
    """A form without its token (or from an old page): say so instead of a bare 403."""
    lang = visitor(request).lang
    return page(
        request,
        "problem.html",
        status_code=403,
        heading=i18n.text(lang, "problem.forbidden"),
        detail=i18n.text(lang, "org.csrf_refused"),
    )


def _insecure(request: AnyRequest) -> bool:
    """Plain HTTP to a host other than this machine: the Secure cookie would be dropped."""
    host = request.url.hostname or ""
    return request.url.scheme != "https" and host not in ("localhost", "127.0.0.1", "::1")


def _fingerprint(token: ApiToken) -> str:
    return token.token_hash[:16]


async def signed_in(request: AnyRequest, db: Database) -> Caller | None:
    """Who this session acts as, while the token it was made with is not revoked."""
    data = request.scope.get("session")
    if not isinstance(data, dict):
        return None
    token_id = data.get("token")
    if not isinstance(token_id, int):
        return None
    async with db.reader() as session:
        row = (
            await session.execute(
                select(ApiToken, Organizer)
                .join(Organizer, Organizer.id == ApiToken.organizer_id)
                .where(ApiToken.id == token_id)
            )
        ).one_or_none()
    if row is None:
        return None
    token, organizer = row
    if token.revoked_at is not None or data.get("fp") != _fingerprint(token):
        return None
    await note_use(db, token, utc_now())
    audit.identify(organizer)
    return tokens.caller_of(token, organizer)


def _to_sign_in(request: AnyRequest) -> Redirect:
    return Redirect(f"{PREFIX}/sign-in?next={quote(here(request), safe='')}", status_code=303)


async def _process_for(
    session: AsyncSession, who: Caller, process_id: int, at_least: Role
) -> tuple[Process, bool]:
    """The process, if the caller may act on it as ``at_least``, and whether they may
    change it (the pages hide the forms of those who may not)."""
    process = await session.get(Process, process_id)
    if process is None:
        raise NotFound(f"no process {process_id}")
    role = await require_role(session, who, process_id, at_least)
    return process, rank(role) >= rank("organizer")


async def _event_of(
    session: AsyncSession, who: Caller, event_id: int, at_least: Role
) -> tuple[Event, Process, bool]:
    event = await event_for(session, who, event_id, at_least)
    process, can_change = await _process_for(session, who, event.process_id, at_least)
    return event, process, can_change


@dataclass
class GanttRow:
    type: str
    id: int
    title: str
    kind: str
    status: str
    time_zone: str
    pinned: bool
    first: datetime
    last_end: datetime | None
    spans: list[charts.Span] = field(default_factory=list)
    count: int = 0


def _gantt(entries: Sequence[Any], lo: datetime, hi: datetime) -> list[GanttRow]:
    rows: dict[tuple[str, int], GanttRow] = {}
    for e in entries:
        row = rows.get((e.type, e.id))
        if row is None:
            row = rows[(e.type, e.id)] = GanttRow(
                e.type, e.id, e.title, e.kind, e.status, e.time_zone, e.pinned,
                e.start, e.end,
            )  # fmt: skip
        row.spans.append(charts.span(e.start, e.end, lo, hi))
        row.count += 1
    return sorted(rows.values(), key=lambda r: (r.first, r.type != "event", r.id))


def _local_fields(instant: datetime, tz: str) -> tuple[str, str]:
    local = to_local(instant, tz)
    return local.strftime("%Y-%m-%d"), local.strftime("%H:%M")


def _parse_local(day: str, clock: str, tz: str) -> datetime | None:
    try:
        wall = datetime.strptime(f"{day.strip()} {clock.strip()}", "%Y-%m-%d %H:%M")
    except ValueError:
        return None
    return from_local(wall, tz)


def _int(value: Any, default: int | None = None) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return default


class OrganizerPages(Controller):
    include_in_schema = False

    # --- Signing in and out ------------------------------------------------------------

    @get("/sign-in")
    async def sign_in_page(
        self,
        request: AnyRequest,
        db: NamedDependency[Database],
        next: FromQuery[str | None] = None,
        done: FromQuery[str | None] = None,
    ) -> Template | Redirect:
        if await signed_in(request, db) is not None:
            return Redirect(safe_next(next, PREFIX), status_code=303)
        return page(
            request,
            "org_sign_in.html",
            next=safe_next(next, PREFIX),
            error="",
            signed_out=done == "signed_out",
            insecure=_insecure(request),
        )

    @post("/sign-in", status_code=303)
    async def sign_in(self, request: AnyRequest, db: NamedDependency[Database]) -> Response[Any]:
        form = await request.form()
        token = str(form.get("token", "")).strip()
        target = safe_next(str(form.get("next", "")), PREFIX)
        async with db.reader() as session:
            found = await tokens.find(session, token) if token else None
        if found is None or found[0].revoked_at is not None:
            lang = visitor(request).lang
            key = "org.token_revoked" if found else "org.token_unknown"
            if not token:
                key = "error.required"
            return page(
                request,
                "org_sign_in.html",
                status_code=400,
                next=target,
                error=i18n.text(lang, key),
                signed_out=False,
                insecure=_insecure(request),
            )
        request.set_session(
            {"token": found[0].id, "fp": _fingerprint(found[0]), "at": int(time.time())}
        )
        return Redirect(target, status_code=303)

    @post("/sign-out", status_code=303)
    async def sign_out(self, request: AnyRequest) -> Redirect:
        request.clear_session()
        return Redirect(f"{PREFIX}/sign-in?done=signed_out", status_code=303)

    # --- Processes and the cycle timeline ----------------------------------------------

    @get("/")
    async def home(self, request: AnyRequest, db: NamedDependency[Database]) -> Response[Any]:
        who = await signed_in(request, db)
        if who is None:
            return _to_sign_in(request)
        async with db.reader() as session:
            roles = await roles_of(session, who)
            processes = list(
                await session.scalars(
                    select(Process).where(Process.id.in_(roles)).order_by(Process.name)
                )
            )
        return page(request, "org_home.html", who=who, processes=processes, roles=roles)

    @get("/processes/{process_id:int}")
    async def cycle(
        self,
        request: AnyRequest,
        db: NamedDependency[Database],
        process_id: PathId,
        moved: FromQuery[str | None] = None,
        year: FromQuery[int | None] = None,
    ) -> Response[Any]:
        """The Gantt view: the whole cycle, or one year of it."""
        who = await signed_in(request, db)
        if who is None:
            return _to_sign_in(request)
        try:
            async with db.reader() as session:
                process, can_change = await _process_for(session, who, process_id, "viewer")
                start = datetime(1970, 1, 1, tzinfo=utc_now().tzinfo)
                entries = await timeline(
                    session, process, {process.id}, start, utc_now() + timedelta(days=7300)
                )
        except (NotFound, Forbidden) as exc:
            return problem(request, exc)
        tz = process.time_zone
        lo = hi = now = utc_now()
        years = sorted({to_local(e.start, tz).year for e in entries})
        if year in years:
            # New Year's midnight on the process's clocks.
            lo = from_local(datetime(year, 1, 1), tz)  # noqa: DTZ001
            hi = from_local(datetime(year + 1, 1, 1), tz)  # noqa: DTZ001
            entries = [e for e in entries if e.start < hi and (e.end or e.start) >= lo]
        elif entries:
            year = None
            lo, hi = charts.window([e.start for e in entries], [e.end or e.start for e in entries])
        rows = _gantt(entries, lo, hi) if entries else []
        ticks = charts.ticks(lo, hi, tz) if entries else []
        today = charts.span(now, None, lo, hi) if entries and lo <= now <= hi else None
        moved_keys = set((moved or "").split(",")) - {""}
        return page(
            request,
            "org_timeline.html",
            who=who,
            process=process,
            rows=rows,
            ticks=ticks,
            today=today,
            years=years,
            year=year,
            moved=moved_keys,
            moved_query=f"&moved={moved}" if moved_keys else "",
            can_change=can_change,
            tab="timeline",
        )

    # --- Move and cascade ----------------------------------------------------------------

    async def _move_page(
        self,
        request: AnyRequest,
        db: Database,
        who: Caller,
        event_id: int,
        *,
        values: dict[str, str] | None = None,
        preview: list[dict[str, Any]] | None = None,
        error: str = "",
        status_code: int = 200,
    ) -> Response[Any]:
        try:
            async with db.reader() as session:
                event, process, _ = await _event_of(session, who, event_id, "organizer")
        except (NotFound, Forbidden) as exc:
            return problem(request, exc)
        day, clock = _local_fields(event.starts_at, event.time_zone)
        return page(
            request,
            "org_move.html",
            status_code=status_code,
            who=who,
            event=event,
            process=process,
            values=values or {"date": day, "time": clock},
            preview=preview,
            error=error,
            tab="timeline",
        )

    @get("/events/{event_id:int}/move")
    async def move_form(
        self, request: AnyRequest, db: NamedDependency[Database], event_id: PathId
    ) -> Response[Any]:
        who = await signed_in(request, db)
        if who is None:
            return _to_sign_in(request)
        return await self._move_page(request, db, who, event_id)

    @post("/events/{event_id:int}/move", status_code=303)
    async def move(
        self,
        request: AnyRequest,
        db: NamedDependency[Database],
        settings: NamedDependency[Settings],
        worker: NamedDependency[OutboxWorker],
        event_id: PathId,
    ) -> Response[Any]:
        """Preview (nothing written) or apply: the same cascade either way."""
        who = await signed_in(request, db)
        if who is None:
            return _to_sign_in(request)
        form = await request.form()
        values = {"date": str(form.get("date", "")), "time": str(form.get("time", ""))}
        lang = visitor(request).lang
        apply = form.get("action") == "apply"
        now = utc_now()
        try:
            async with db.writer.begin() as session:
                event, process, _ = await _event_of(session, who, event_id, "organizer")
                new_start = _parse_local(values["date"], values["time"], event.time_zone)
                if new_start is None:
                    raise Invalid("date", i18n.text(lang, "error.date"))
                if apply:
                    hold = timedelta(minutes=settings.registration_hold_minutes)
                    patch = event_svc.EventPatch(start=new_start, end=UNSET)
                    moves = await event_svc.update_event(session, event, patch, now, hold)
                else:
                    moves = await event_svc.move_event(
                        session, event, new_start, None, now, preview=True
                    )
                preview = await self._describe(session, moves)
        except (NotFound, Forbidden) as exc:
            return problem(request, exc)
        except (Invalid, Conflict) as exc:
            return await self._move_page(
                request, db, who, event_id, values=values, error=exc.reason, status_code=400
            )
        if not apply:
            return await self._move_page(request, db, who, event_id, values=values, preview=preview)
        after_commit(worker, session)
        keys = ",".join(f"{m['type']}-{m['id']}" for m in preview if m["changed"])
        return Redirect(f"{PREFIX}/processes/{process.id}?moved={keys}", status_code=303)

    @staticmethod
    async def _describe(session: AsyncSession, moves: Sequence[Any]) -> list[dict[str, Any]]:
        out = []
        for m in moves:
            row: Event | Milestone | None = await session.get(
                Event if m.kind == "event" else Milestone, m.id
            )
            assert row is not None
            out.append(
                {
                    "type": m.kind,
                    "id": m.id,
                    "title": row.title,
                    "time_zone": row.time_zone,
                    "old_start": m.old_start,
                    "new_start": m.new_start,
                    "old_end": m.old_end,
                    "new_end": m.new_end,
                    "in_past": m.in_past,
                    "changed": m.changed,
                }
            )
        return out

    # --- Registrations, waiting list, speakers -----------------------------------------

    async def _event_page(
        self,
        request: AnyRequest,
        db: Database,
        who: Caller,
        event_id: int,
        *,
        status: str | None = None,
        error: str = "",
        done: str = "",
        status_code: int = 200,
    ) -> Response[Any]:
        try:
            async with db.reader() as session:
                event, process, can_change = await _event_of(session, who, event_id, "viewer")
                counts = dict(
                    (str(s), int(n))
                    for s, n in await session.execute(
                        select(Registration.status, func.count())
                        .where(Registration.event_id == event.id)
                        .group_by(Registration.status)
                    )
                )
                query = select(Registration).where(Registration.event_id == event.id)
                if status in REGISTRATION_STATUSES:
                    query = query.where(Registration.status == status)
                registrations = list(
                    await session.scalars(query.order_by(Registration.id).limit(500))
                )
                waiting = list(
                    await session.scalars(
                        select(Registration)
                        .where(Registration.event_id == event.id, Registration.status == "waiting")
                        .order_by(Registration.waitlist_seq)
                    )
                )
                requests = list(
                    await session.execute(
                        select(SpeakerRequest, Registration)
                        .join(Registration, Registration.id == SpeakerRequest.registration_id)
                        .where(SpeakerRequest.event_id == event.id)
                        .order_by(SpeakerRequest.created_at, SpeakerRequest.id)
                    )
                )
        except (NotFound, Forbidden) as exc:
            return problem(request, exc)
        selected = sorted(
            ((r, g) for r, g in requests if r.status == "selected"),
            key=lambda pair: (pair[0].position or 0, pair[0].id),
        )
        return page(
            request,
            "org_event.html",
            status_code=status_code,
            who=who,
            event=event,
            process=process,
            counts=counts,
            seats=counts.get("held", 0) + counts.get("confirmed", 0),
            registrations=registrations,
            waiting=waiting,
            selected=selected,
            open_requests=[(r, g) for r, g in requests if r.status == "requested"],
            closed_requests=[(r, g) for r, g in requests if r.status in ("declined", "withdrawn")],
            statuses=REGISTRATION_STATUSES,
            status=status if status in REGISTRATION_STATUSES else "",
            error=error,
            message_key=f"org.done_{done}" if done else "",
            can_change=can_change,
            tab="timeline",
        )

    @get("/events/{event_id:int}")
    async def event_page(
        self,
        request: AnyRequest,
        db: NamedDependency[Database],
        event_id: PathId,
        status: FromQuery[str | None] = None,
        done: FromQuery[str | None] = None,
    ) -> Response[Any]:
        who = await signed_in(request, db)
        if who is None:
            return _to_sign_in(request)
        return await self._event_page(
            request, db, who, event_id, status=status, done=(done or "")[:20]
        )

    @post(
        "/events/{event_id:int}/registrations/{registration_id:int}/{action:str}", status_code=303
    )
    async def decide(
        self,
        request: AnyRequest,
        db: NamedDependency[Database],
        settings: NamedDependency[Settings],
        worker: NamedDependency[OutboxWorker],
        event_id: PathId,
        registration_id: PathId,
        action: FromPath[str],
    ) -> Response[Any]:
        """Approve, reject or cancel one registration (the person is mailed by the service)."""
        who = await signed_in(request, db)
        if who is None:
            return _to_sign_in(request)
        if action not in ("approve", "reject", "cancel"):
            return problem(request, NotFound())
        form = await request.form()
        now = utc_now()
        hold = timedelta(minutes=settings.registration_hold_minutes)
        try:
            async with db.writer.begin() as session:
                await _event_of(session, who, event_id, "organizer")
                reg = await session.get(Registration, registration_id)
                if reg is None or reg.event_id != event_id:
                    raise NotFound(f"no registration {registration_id}")
                if action == "approve":
                    await svc.approve(
                        session, reg, who.organizer_id, now + timedelta(days=4 * 365), now, hold
                    )
                elif action == "reject":
                    reason = " ".join(str(form.get("reason", "")).split())[:2000]
                    await svc.reject(session, reg, reason, now)
                else:
                    await svc.cancel(session, reg, now, hold)
        except (NotFound, Forbidden) as exc:
            return problem(request, exc)
        except (Invalid, Conflict) as exc:
            return await self._event_page(
                request, db, who, event_id, error=exc.reason, status_code=409
            )
        after_commit(worker, session)
        return Redirect(f"{PREFIX}/events/{event_id}?done={action}", status_code=303)

    @post("/events/{event_id:int}/speakers/select", status_code=303)
    async def select_speakers(
        self,
        request: AnyRequest,
        db: NamedDependency[Database],
        worker: NamedDependency[OutboxWorker],
        event_id: PathId,
    ) -> Response[Any]:
        who = await signed_in(request, db)
        if who is None:
            return _to_sign_in(request)
        form = await request.form()
        count = _int(form.get("count"))
        slot = _int(form.get("slot_minutes"))
        gap = _int(form.get("gap_minutes"), 0)
        lang = visitor(request).lang
        try:
            async with db.writer.begin() as session:
                event, _, _ = await _event_of(session, who, event_id, "organizer")
                if count is None or not 1 <= count <= 1000:
                    raise Invalid("count", i18n.text(lang, "org.error_count"))
                if slot is None or not 1 <= slot <= 1440 or gap is None or not 0 <= gap <= 1440:
                    raise Invalid("slot_minutes", i18n.text(lang, "org.error_minutes"))
                start = None
                if str(form.get("start_time", "")).strip():
                    day = to_local(event.starts_at, event.time_zone).strftime("%Y-%m-%d")
                    start = _parse_local(day, str(form.get("start_time")), event.time_zone)
                await speaker_svc.select_for_event(
                    session,
                    event,
                    count=count,
                    quotas_by_constituency={},
                    quotas_by_region={},
                    slots=speaker_svc.Slots(start, slot, gap),
                )
        except (NotFound, Forbidden) as exc:
            return problem(request, exc)
        except (Invalid, Conflict) as exc:
            return await self._event_page(
                request, db, who, event_id, error=exc.reason, status_code=400
            )
        after_commit(worker, session)
        return Redirect(f"{PREFIX}/events/{event_id}?done=selected#speakers", status_code=303)

    @post("/events/{event_id:int}/speakers/{request_id:int}/{action:str}", status_code=303)
    async def speaker_action(
        self,
        request: AnyRequest,
        db: NamedDependency[Database],
        worker: NamedDependency[OutboxWorker],
        event_id: PathId,
        request_id: PathId,
        action: FromPath[str],
    ) -> Response[Any]:
        """Move a speaker up or down the order (slots keep their length and gaps), or decline."""
        who = await signed_in(request, db)
        if who is None:
            return _to_sign_in(request)
        if action not in ("up", "down", "decline"):
            return problem(request, NotFound())
        form = await request.form()
        try:
            async with db.writer.begin() as session:
                event, _, _ = await _event_of(session, who, event_id, "organizer")
                if action == "decline":
                    reason = " ".join(str(form.get("reason", "")).split())[:2000]
                    await speaker_svc.decline(session, event, request_id, reason, utc_now())
                else:
                    await self._reorder(session, event, request_id, -1 if action == "up" else 1)
        except (NotFound, Forbidden) as exc:
            return problem(request, exc)
        except (Invalid, Conflict) as exc:
            return await self._event_page(
                request, db, who, event_id, error=exc.reason, status_code=400
            )
        after_commit(worker, session)
        return Redirect(f"{PREFIX}/events/{event_id}?done=reordered#speakers", status_code=303)

    @staticmethod
    async def _reorder(session: AsyncSession, event: Event, request_id: int, step: int) -> None:
        rows = list(
            await session.scalars(
                select(SpeakerRequest)
                .where(SpeakerRequest.event_id == event.id, SpeakerRequest.status == "selected")
                .order_by(SpeakerRequest.position, SpeakerRequest.id)
            )
        )
        ids = [r.id for r in rows]
        if request_id not in ids:
            raise NotFound(f"no selected speaker request {request_id}")
        i = ids.index(request_id)
        j = i + step
        if not 0 <= j < len(ids):
            return
        ids[i], ids[j] = ids[j], ids[i]
        first = rows[0]
        assert first.slot_start is not None and first.slot_end is not None
        slot = int((first.slot_end - first.slot_start).total_seconds() // 60)
        gap = 0
        if len(rows) > 1 and rows[1].slot_start is not None:
            gap = max(int((rows[1].slot_start - first.slot_end).total_seconds() // 60), 0)
        await speaker_svc.set_order(
            session, event, ids, speaker_svc.Slots(first.slot_start, slot, gap)
        )

    # --- The reminder ledger, feeds and their runs ---------------------------------------

    @get("/processes/{process_id:int}/reminders")
    async def ledger(
        self,
        request: AnyRequest,
        db: NamedDependency[Database],
        process_id: PathId,
        status: FromQuery[str | None] = None,
        kind: FromQuery[str | None] = None,
        page_no: FromQuery[int] = 1,
    ) -> Response[Any]:
        who = await signed_in(request, db)
        if who is None:
            return _to_sign_in(request)
        page_no = max(page_no, 1)
        try:
            async with db.reader() as session:
                process, _ = await _process_for(session, who, process_id, "viewer")
                query = visible_query({process.id})
                if status in NOTIFICATION_STATUSES:
                    query = query.where(Notification.status == status)
                if kind:
                    query = query.where(Notification.kind == kind[:40])
                notes = list(
                    await session.scalars(
                        query.order_by(Notification.due_at.desc(), Notification.id.desc())
                        .limit(LEDGER_PAGE + 1)
                        .offset((page_no - 1) * LEDGER_PAGE)
                    )
                )
                kinds = sorted(
                    set(
                        await session.scalars(
                            visible_query({process.id})
                            .with_only_columns(Notification.kind)
                            .distinct()
                        )
                    )
                )
        except (NotFound, Forbidden) as exc:
            return problem(request, exc)
        return page(
            request,
            "org_ledger.html",
            who=who,
            process=process,
            notes=notes[:LEDGER_PAGE],
            more=len(notes) > LEDGER_PAGE,
            page_no=page_no,
            statuses=NOTIFICATION_STATUSES,
            kinds=kinds,
            status=status if status in NOTIFICATION_STATUSES else "",
            kind=kind or "",
            tab="reminders",
        )

    @get("/processes/{process_id:int}/feeds")
    async def feeds(
        self, request: AnyRequest, db: NamedDependency[Database], process_id: PathId
    ) -> Response[Any]:
        who = await signed_in(request, db)
        if who is None:
            return _to_sign_in(request)
        try:
            async with db.reader() as session:
                process, _ = await _process_for(session, who, process_id, "viewer")
                feeds = list(
                    await session.scalars(
                        select(Feed).where(Feed.process_id == process.id).order_by(Feed.name)
                    )
                )
                runs: dict[int, list[FeedRun]] = {}
                for feed in feeds:
                    runs[feed.id] = list(
                        await session.scalars(
                            select(FeedRun)
                            .where(FeedRun.feed_id == feed.id)
                            .order_by(FeedRun.started_at.desc(), FeedRun.id.desc())
                            .limit(RUNS_SHOWN)
                        )
                    )
        except (NotFound, Forbidden) as exc:
            return problem(request, exc)
        return page(
            request, "org_feeds.html", who=who, process=process, feeds=feeds, runs=runs, tab="feeds"
        )
