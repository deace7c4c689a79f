"""The audit trail: who changed what (before and after) and when, by an organizer or a job.

Who. Each HTTP request starts as the public and becomes an organizer once their token or
session cookie is checked (``identify``); a clock job or a CLI command names itself for
its duration (``acting``); a rule the system applies inside someone else's transaction, a
waiting-list promotion, names itself for its own changes (``acting_as``). A session's
``info[ACTOR]`` wins over all of these.

What. A listener on every flush of a ``TrackedSession`` diffs the audited models
(``AUDITED``) against each changed attribute's committed value and keeps the net change of
each row per transaction; just before the commit the entries are inserted in the same
transaction, so a rolled-back change leaves none and a failed insert fails the change.
Core statements the flush never sees (anonymising registrations in bulk, a feed run's
pledges) call ``record``.

Not recorded: what the public does to its own registrations, speaker requests and
subscriptions (the trail is about the secretariat and its jobs; what the system then does
on its own, such as a promotion, is recorded); messages (the outbox rows are their own
log); pledges (each feed run gets one summary entry instead); leases, ETags, sequence
numbers and change counters.

Personal data and secrets never go in: such a field shows as changed, with ``REDACTED``
for its value, so erasing a person never has to touch this table (which the database
refuses to UPDATE or DELETE anyway: migration 0008).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from sqlalchemy import Select, insert, inspect, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.orm.base import LoaderCallableStatus

from scheduler.errors import Invalid
from scheduler.models import (
    Accreditation,
    ApiToken,
    AuditEntry,
    Event,
    Feed,
    Milestone,
    Organizer,
    Process,
    ProcessOrganizer,
    Registration,
    ReminderPolicy,
    SpeakerRequest,
    Subscription,
    Webhook,
    utc_now,
)

log = logging.getLogger("scheduler.audit")

ACTOR = "audit_actor"  # session.info key: an Actor that overrides the ambient one
_PENDING = "audit_pending"  # session.info key: this transaction's entries, until the commit
REDACTED = "[redacted]"
ACTOR_KINDS = ("organizer", "system")


@dataclass(frozen=True, slots=True)
class Actor:
    kind: str  # organizer, system, or public (never recorded)
    id: int | None
    label: str


PUBLIC = Actor("public", None, "public")
# Jobs and rules, by the names the trail shows.
EXPIRE_HOLDS = Actor("system", None, "expire-holds")
FEED_SYNC = Actor("system", None, "feed-sync")
REMINDER_SWEEP = Actor("system", None, "reminder-sweep")
RETENTION_PURGE = Actor("system", None, "retention-purge")
SPEAKER_ORDER = Actor("system", None, "speaker-order")
WEBHOOK_DELIVERY = Actor("system", None, "webhook-delivery")
WAITING_LIST = Actor("system", None, "waiting-list")
CLI = Actor("system", None, "cli")
# A change made where nobody said who acts (a script, a test): recorded, and logged.
UNATTRIBUTED = Actor("system", None, "unattributed")


def organizer_actor(organizer: Organizer) -> Actor:
    return Actor("organizer", organizer.id, organizer.name[:200])


# --- Who is acting ------------------------------------------------------------------------


@dataclass(slots=True)
class Ambient:
    """Who acts in this request or command; ``open`` ends with it, so that a clock job whose
    context was copied from a request's (APScheduler's timers are) never borrows its actor."""

    actor: Actor
    request_id: str | None = None
    open: bool = True


_ambient: ContextVar[Ambient | None] = ContextVar("scheduler_audit_ambient", default=None)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


@contextmanager
def acting(actor: Actor, request_id: str | None = None) -> Iterator[Ambient]:
    """Everything written in this block (and in tasks started from it, while it lasts) is
    by ``actor``."""
    ambient = Ambient(actor, request_id)
    token = _ambient.set(ambient)
    try:
        yield ambient
    finally:
        ambient.open = False
        _ambient.reset(token)


def _current() -> Ambient | None:
    ambient = _ambient.get()
    return ambient if ambient is not None and ambient.open else None


def identify(organizer: Organizer) -> None:
    """The request in progress is this organizer's (their token or session checked out)."""
    ambient = _current()
    if ambient is not None and ambient.actor.kind == "public":
        ambient.actor = organizer_actor(organizer)


def current_request_id() -> str | None:
    ambient = _current()
    return ambient.request_id if ambient is not None else None


def request_context(app: ASGIApp) -> ASGIApp:
    """Middleware: each HTTP request acts as the public until ``identify``, under a request
    id (the client's X-Request-ID if it is a plain token, else a new one) that every audit
    entry and JSON log line of the request carries and the answer echoes."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        text = given.decode("latin-1")
        request_id = text if _REQUEST_ID.fullmatch(text) else uuid.uuid4().hex
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*(message.get("headers") or []), header]
            await send(message)

        with acting(PUBLIC, request_id):
            await app(scope, receive, send_with_id)

    return middleware


def _actor(session: Session) -> tuple[Actor | None, str | None]:
    ambient = _current()
    request_id = ambient.request_id if ambient is not None else None
    chosen = session.info.get(ACTOR)
    if isinstance(chosen, Actor):
        return chosen, request_id
    return (ambient.actor if ambient is not None else None), request_id


def act_as(session: AsyncSession, actor: Actor) -> None:
    """Everything this session writes is by ``actor`` (a job's own transaction)."""
    session.info[ACTOR] = actor


@asynccontextmanager
async def acting_as(session: AsyncSession, actor: Actor) -> AsyncIterator[None]:
    """The changes made inside the block are ``actor``'s; those made before are flushed
    first, so they stay with whoever made them."""
    await session.flush()
    previous = session.info.get(ACTOR)
    session.info[ACTOR] = actor
    try:
        yield
        await session.flush()
    finally:
        if previous is None:
            session.info.pop(ACTOR, None)
        else:
            session.info[ACTOR] = previous


# --- What changed -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Audited:
    """How one model appears in the trail."""

    entity: str
    fields: tuple[str, ...]
    hidden: frozenset[str] = frozenset()  # personal data and secrets: "changed", no value
    moved: frozenset[str] = frozenset()  # a change of these is a move
    id_field: str = "id"


def _audited(
    model: type[Any],
    entity: str,
    *,
    skip: tuple[str, ...] = (),
    hidden: tuple[str, ...] = (),
    moved: tuple[str, ...] = (),
    id_field: str = "id",
) -> Audited:
    columns = tuple(c.key for c in inspect(model).column_attrs if c.key not in skip)
    return Audited(entity, columns, frozenset(hidden), frozenset(moved), id_field)


_STAMPS = ("created_at", "updated_at")
AUDITED: dict[type[Any], Audited] = {
    Process: _audited(Process, "process", skip=_STAMPS),
    ProcessOrganizer: _audited(ProcessOrganizer, "membership", id_field="organizer_id"),
    Organizer: _audited(Organizer, "organizer", skip=_STAMPS, hidden=("email",)),
    ApiToken: _audited(
        ApiToken, "api_token", skip=(*_STAMPS, "last_used_at"), hidden=("token_hash",)
    ),
    Event: _audited(
        Event,
        "event",
        skip=(*_STAMPS, "uid", "sequence", "series_ends_at"),
        moved=("starts_at", "ends_at"),
    ),
    Milestone: _audited(
        Milestone, "milestone", skip=(*_STAMPS, "uid", "sequence"), moved=("due_at",)
    ),
    Registration: _audited(
        Registration,
        "registration",
        skip=_STAMPS,
        hidden=("name", "email", "organisation", "answers", "token_nonce"),
    ),
    Accreditation: _audited(Accreditation, "accreditation", skip=_STAMPS),
    SpeakerRequest: _audited(
        SpeakerRequest, "speaker_request", skip=_STAMPS, hidden=("topic", "summary")
    ),
    ReminderPolicy: _audited(ReminderPolicy, "reminder_policy", skip=_STAMPS),
    Subscription: _audited(
        Subscription, "subscription", skip=_STAMPS, hidden=("email", "name", "token_nonce")
    ),
    Webhook: _audited(
        Webhook,
        "webhook",
        skip=(*_STAMPS, "failing_since"),
        hidden=("secret", "previous_secret"),
    ),
    Feed: _audited(
        Feed,
        "feed",
        skip=(*_STAMPS, "lease_until", "next_run_at", "etag", "last_modified", "next_pages"),
        hidden=("auth_header_value",),
    ),
}
ENTITY_TYPES = tuple(sorted(spec.entity for spec in AUDITED.values()))
_NAMED_STATUSES = {
    "event": ("published", "postponed", "cancelled"),
    "milestone": ("published", "cancelled"),
}
_MISSING = LoaderCallableStatus.NO_VALUE


@dataclass(slots=True)
class _Change:
    """The net change of one row in this transaction, values as JSON (not yet redacted)."""

    spec: Audited
    actor: Actor
    request_id: str | None
    entity_id: int
    process_id: int | None
    event_id: int | None  # speaker requests find their process through their event
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    created: bool = False
    deleted: bool = False


@dataclass(slots=True)
class _Record:
    """An entry written as given (``record``)."""

    actor: Actor
    request_id: str | None
    action: str
    entity_type: str
    entity_id: int
    process_id: int | None
    before: dict[str, Any]
    after: dict[str, Any]


def plain(value: Any) -> Any:
    """A column's value as JSON: instants in UTC ISO 8601, containers copied."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _pending(session: Session) -> dict[Any, _Change | _Record]:
    pending: dict[Any, _Change | _Record] | None = session.info.get(_PENDING)
    if pending is None:
        pending = session.info[_PENDING] = {}
    return pending


def collect(session: Session, _flush_context: Any) -> None:
    """``after_flush`` hook: fold what this flush wrote into the transaction's changes.

    The history is still the flush's own here: ``committed_state`` holds each changed
    attribute's value from before the flush (an attribute never loaded has none, and the
    entry then shows only its new value).
    """
    actor, request_id = _actor(session)
    if actor is not None and actor.kind == "public":
        return
    pending: dict[Any, _Change | _Record] | None = None
    for obj, how in (
        *((o, "new") for o in session.new),
        *((o, "dirty") for o in session.dirty),
        *((o, "deleted") for o in session.deleted),
    ):
        spec = AUDITED.get(type(obj))
        if spec is None:
            continue
        state = inspect(obj)
        values = state.dict
        committed = state.committed_state
        entity_id = values.get(spec.id_field)
        if not isinstance(entity_id, int):
            continue
        if pending is None:
            pending = _pending(session)
        who = actor or UNATTRIBUTED
        key = (who, spec.entity, entity_id)
        change = pending.get(key)
        if not isinstance(change, _Change):
            process_id = entity_id if spec.entity == "process" else values.get("process_id")
            change = _Change(spec, who, request_id, entity_id, process_id, values.get("event_id"))
            pending[key] = change
        if how == "new":
            change.created = True
            change.after.update(
                (name, plain(values[name])) for name in spec.fields if values.get(name) is not None
            )
            continue
        if how == "deleted":
            change.deleted = True
        for name in spec.fields:
            if how == "deleted":
                old, new = committed.get(name, values.get(name, _MISSING)), _MISSING
            elif name in committed:
                old, new = committed[name], values.get(name, _MISSING)
            else:
                continue
            first = name not in change.before and name not in change.after
            if first and old is not _MISSING and (old is not None or new is not _MISSING):
                change.before[name] = plain(old)
            if new is not _MISSING:
                change.after[name] = plain(new)
    if pending is not None and actor is None:
        log.warning("changes written without an actor: recorded as system/unattributed")


def record(
    session: AsyncSession,
    *,
    action: str,
    entity_type: str,
    entity_id: int,
    process_id: int | None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    """An entry for a change the flush cannot see (a Core statement) or a summary (a feed
    run). ``before`` and ``after`` must already leave personal data out."""
    sync = session.sync_session
    actor, request_id = _actor(sync)
    if actor is None or actor.kind == "public":
        log.warning("%s recorded without an actor: system/unattributed", action)
        actor = UNATTRIBUTED
    pending = _pending(sync)
    pending[("record", len(pending))] = _Record(
        actor,
        request_id,
        action,
        entity_type,
        entity_id,
        process_id,
        plain(before or {}),
        plain(after or {}),
    )


def _action(change: _Change, after: dict[str, Any]) -> str:
    entity = change.spec.entity
    if change.created:
        return f"{entity}.created"
    if change.deleted:
        return f"{entity}.deleted"
    if "status" in after:
        status = after["status"]
        if status in _NAMED_STATUSES.get(entity, ()):
            return f"{entity}.{status}"
        return f"{entity}.status_changed"
    if change.spec.moved & after.keys():
        return f"{entity}.moved"
    if entity == "registration" and after.keys() == {"token_nonce"}:
        return "registration.links_revoked"
    return f"{entity}.updated"


def _shown(spec: Audited, values: dict[str, Any]) -> dict[str, Any]:
    return {k: (REDACTED if k in spec.hidden else v) for k, v in values.items()}


def write(session: Session) -> None:
    """``before_commit`` hook: flush what is left, then insert the transaction's entries."""
    session.flush()
    pending: dict[Any, _Change | _Record] | None = session.info.pop(_PENDING, None)
    if not pending:
        return
    at = utc_now()
    rows: list[dict[str, Any]] = []
    for item in pending.values():
        if isinstance(item, _Record):
            rows.append(
                _row(at, item.actor, item.request_id, item.process_id)
                | {
                    "action": item.action,
                    "entity_type": item.entity_type,
                    "entity_id": item.entity_id,
                    "before": item.before,
                    "after": item.after,
                }
            )
            continue
        if item.created and item.deleted:
            continue  # made and gone within the transaction
        if item.created or item.deleted:
            before, after = item.before, item.after
        else:
            keys = [k for k in item.after if item.before.get(k, _MISSING) != item.after[k]]
            if not keys:
                continue
            before = {k: item.before[k] for k in keys if k in item.before}
            after = {k: item.after[k] for k in keys}
        if item.deleted:
            after = {}
        process_id = item.process_id
        if process_id is None and item.event_id is not None:
            event = session.get(Event, item.event_id)
            process_id = event.process_id if event is not None else None
        rows.append(
            _row(at, item.actor, item.request_id, process_id)
            | {
                "action": _action(item, after),
                "entity_type": item.spec.entity,
                "entity_id": item.entity_id,
                "before": _shown(item.spec, before),
                "after": _shown(item.spec, after),
            }
        )
    if rows:
        session.connection().execute(insert(AuditEntry), rows)


def _row(
    at: datetime, actor: Actor, request_id: str | None, process_id: int | None
) -> dict[str, Any]:
    return {
        "at": at,
        "actor_kind": actor.kind,
        "actor_id": actor.id,
        "actor_label": actor.label,
        "process_id": process_id,
        "request_id": request_id,
    }


def forget(session: Session, _previous_transaction: Any = None) -> None:
    """``after_soft_rollback`` hook: a transaction rolled back leaves no entries. (Nothing
    here uses savepoints; rolling one back would drop the whole transaction's entries.)"""
    session.info.pop(_PENDING, None)


# --- Reading the trail --------------------------------------------------------------------

_LABEL = re.compile(r"^[A-Za-z0-9 ._:@'-]{1,200}$")
_ACTION = re.compile(r"^[a-z_]{1,40}(\.[a-z_]{1,40}|\.\*)?$")


@dataclass(frozen=True, slots=True)
class Selection:
    """Which entries to read; ``process_ids`` None reads every entry (operators)."""

    process_ids: frozenset[int] | None = None
    actor_kind: str | None = None
    actor_id: int | None = None
    actor_label: str | None = None
    action: str | None = None
    entity_type: str | None = None
    entity_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None


def parse_actor(text: str) -> tuple[str, int | None, str | None]:
    """``organizer``, ``system``, ``organizer:12`` or ``system:feed-sync``."""
    kind, colon, rest = text.partition(":")
    if kind not in ACTOR_KINDS:
        raise Invalid("actor", "must be organizer, system, organizer:<id> or system:<job>")
    if not colon:
        return kind, None, None
    if kind == "organizer":
        if not rest.isdigit() or not 1 <= int(rest) <= 2**31 - 1:
            raise Invalid("actor", "organizer:<id> needs an organizer id, e.g. organizer:12")
        return kind, int(rest), None
    if not _LABEL.match(rest):
        raise Invalid("actor", "system:<job> needs a job's name, e.g. system:feed-sync")
    return kind, None, rest


def check_action(text: str) -> str:
    if not _ACTION.match(text):
        raise Invalid("action", "must be an action such as event.moved, or event.* for all")
    return text


def query(selection: Selection, before_id: int | None = None) -> Select[Any]:
    """Entries as plain rows (an export may read millions), newest first: by id, which
    grows with each insert on one database."""
    stmt = select(*AuditEntry.__table__.c)
    s = selection
    if s.process_ids is not None:
        stmt = stmt.where(AuditEntry.process_id.in_(sorted(s.process_ids)))
    if s.actor_kind is not None:
        stmt = stmt.where(AuditEntry.actor_kind == s.actor_kind)
    if s.actor_id is not None:
        stmt = stmt.where(AuditEntry.actor_id == s.actor_id)
    if s.actor_label is not None:
        stmt = stmt.where(AuditEntry.actor_label == s.actor_label)
    if s.action is not None:
        if s.action.endswith(".*"):
            stmt = stmt.where(AuditEntry.action.startswith(s.action[:-1], autoescape=True))
        else:
            stmt = stmt.where(AuditEntry.action == s.action)
    if s.entity_type is not None:
        stmt = stmt.where(AuditEntry.entity_type == s.entity_type)
    if s.entity_id is not None:
        stmt = stmt.where(AuditEntry.entity_id == s.entity_id)
    if s.since is not None:
        stmt = stmt.where(AuditEntry.at >= s.since)
    if s.until is not None:
        stmt = stmt.where(AuditEntry.at < s.until)
    if before_id is not None:
        stmt = stmt.where(AuditEntry.id < before_id)
    return stmt.order_by(AuditEntry.id.desc())
