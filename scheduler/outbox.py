"""The outbox: a message is a row written with the change that causes it, sent after commit.

A crash between commit and delivery loses nothing: the row stays ``planned`` (or
``sending`` with a lease that runs out) and is picked up again. Delivery is at least once;
the Message-ID is fixed per row, so the rare resend after a crash is recognisable.

One pass of the worker: claim a batch of due rows in a short write transaction (``FOR
UPDATE SKIP LOCKED`` on PostgreSQL; SQLite has a single writer), check the reminders among
them against the current state (``reminder_checks``: stale ones cancelled, late ones
skipped, one digest per person), render (in a thread) and send outside any transaction,
and record the results in short write transactions as they come in (every
RECORD_INTERVAL), so that a crash resends little.

The clock wakes the loop: after each pass the worker arms an APScheduler date job at the
next due time (``arm``, also called after a commit that plans an earlier reminder); the
clock's periodic sweep is the safety net. Without a clock the loop times its own waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Any

from apscheduler.triggers.date import DateTrigger
from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler import manage_links, reminder_checks
from scheduler.clock import Clock
from scheduler.database import Database
from scheduler.mail import DeliveryError, MailSender
from scheduler.mail_render import KINDS, RenderError, message_id_for, render
from scheduler.models import Event, Notification, Registration, Subscription, utc_now
from scheduler.settings import Settings

log = logging.getLogger("scheduler.outbox")

MAX_RETRY_DELAY = timedelta(hours=1)
RECORD_INTERVAL = 0.05  # seconds between the write transactions recording a batch's results
# Where mailed links point, below the public base URL; {token} is the signed manage token.
MANAGE_PATH = "/registrations/{token}"
CONFIRM_PATH = "/registrations/{token}/confirm"
# A deadline subscription: its page (confirm, unsubscribe) and the one-click unsubscribe.
SUBSCRIPTION_PATH = "/subscriptions/{token}"
UNSUBSCRIBE_PATH = "/api/subscriptions/{token}/unsubscribe"
SUBSCRIPTION_PURPOSE = "sub:"  # signing context of subscription links (see manage_links)
NEXT_DUE_JOB = "outbox-next-due"
_MAX_ERROR_CHARS = 2000


def enqueue(
    session: AsyncSession,
    *,
    kind: str,
    recipient_email: str,
    recipient_name: str,
    language: str,
    time_zone: str,
    context: dict[str, Any],
    registration_id: int | None = None,
    event_id: int | None = None,
    due_at: datetime | None = None,
    dedupe_key: str | None = None,
) -> Notification:
    """Add a planned message to the caller's transaction (nothing is flushed or sent here).

    An unknown kind is refused now rather than failing later in the sender. A second row
    with the same ``dedupe_key`` fails on flush (unique index).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown notification kind {kind!r}")
    note = Notification(
        kind=kind,
        recipient_email=recipient_email,
        recipient_name=recipient_name,
        language=language[:8] or "en",
        time_zone=time_zone or "UTC",
        context=dict(context),
        registration_id=registration_id,
        event_id=event_id,
        status="planned",
        reason="",
        due_at=due_at or utc_now(),
        attempts=0,
        last_error="",
        message_id="",
        dedupe_key=dedupe_key,
    )
    session.add(note)
    return note


async def claim_due(
    session: AsyncSession,
    now: datetime,
    *,
    limit: int,
    lease_seconds: int,
    is_sqlite: bool,
    mail_from: str,
) -> list[Notification]:
    """Take up to ``limit`` due rows (oldest first) for this sender until the lease ends.

    Due: ``planned`` with ``due_at <= now``, or ``sending`` whose lease ran out (its sender
    died). Each claim counts as an attempt and fixes the row's Message-ID.
    """
    stmt = (
        select(Notification)
        .where(
            or_(
                and_(Notification.status == "planned", Notification.due_at <= now),
                and_(Notification.status == "sending", Notification.lease_until < now),
            )
        )
        .order_by(Notification.due_at, Notification.id)
        .limit(limit)
    )
    if not is_sqlite:
        stmt = stmt.with_for_update(skip_locked=True)
    rows = list(await session.scalars(stmt))
    lease_until = now + timedelta(seconds=lease_seconds)
    for note in rows:
        note.status = "sending"
        note.lease_until = lease_until
        note.attempts += 1
        if not note.message_id:
            note.message_id = message_id_for(note.id, note.created_at, mail_from)
    await session.flush()
    return rows


def retry_delay(attempts: int, retry_seconds: int) -> timedelta:
    """``retry_seconds`` after the first attempt, doubling each time, at most one hour."""
    exponent = min(max(attempts - 1, 0), 30)
    return min(timedelta(seconds=retry_seconds * 2**exponent), MAX_RETRY_DELAY)


@dataclass(slots=True)
class _Job:
    id: int
    lease_until: datetime | None
    message: EmailMessage | None = None
    error: DeliveryError | None = None
    sent: bool = False


class OutboxWorker:
    """Delivers due outbox rows; one per process. ``kick()`` after committing new mail."""

    def __init__(
        self,
        db: Database,
        sender: MailSender,
        settings: Settings,
        secret: bytes,
        base_url: str,
    ) -> None:
        self.db = db
        self.sender = sender
        self.settings = settings
        self.secret = secret
        self.base_url = base_url.rstrip("/")
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._clock: Clock | None = None
        self._armed_at: datetime | None = None

    def kick(self) -> None:
        """Wake the loop soon (call from the event loop, after the commit)."""
        self._wake.set()

    def arm(self, due_at: datetime | None) -> None:
        """Wake the loop at ``due_at`` (a date job on the clock) unless it wakes earlier.

        Call after a commit that planned something; a time already past wakes it now.
        Without a running clock the loop times its own waits, so it is simply kicked.
        """
        if due_at is None:
            return
        clock = self._clock
        if clock is None or not clock.running or due_at <= utc_now():
            self.kick()
            return
        armed = self._armed_at
        if armed is not None and armed <= due_at and clock.scheduler.get_job(NEXT_DUE_JOB):
            return
        self._armed_at = due_at
        clock.scheduler.add_job(
            self._fire,
            DateTrigger(run_date=due_at),
            id=NEXT_DUE_JOB,
            replace_existing=True,
            misfire_grace_time=None,  # late (a busy loop) is still worth waking for
        )

    @property
    def armed_at(self) -> datetime | None:
        """When the clock will next wake the loop (None: only the sweep will)."""
        return self._armed_at

    async def _fire(self) -> None:
        self._armed_at = None
        self.kick()

    def start(self) -> None:
        """Start the delivery loop in the running event loop (no-op if mail is disabled)."""
        if not self.settings.mail_enabled or self._task is not None:
            return
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="outbox")

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Let the current pass finish (rows cut off keep their lease), then close the sender."""
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), grace_seconds)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.sender.close()

    def schedule(self, clock: Clock) -> None:
        """Let the clock wake the loop at each next due time, and sweep as well, so that a
        missed wake delays mail by one interval at most."""
        self._clock = clock
        clock.scheduler.add_job(
            self._sweep,
            "interval",
            seconds=self.settings.mail_sweep_seconds,
            id="outbox-sweep",
            replace_existing=True,
        )

    async def _sweep(self) -> None:
        # A coroutine so that APScheduler runs it in the loop, not in a thread.
        self.kick()

    async def run_once(self, now: datetime) -> int:
        """One pass at ``now``; the number of messages delivered."""
        _, sent = await self._pass(now)
        return sent

    async def _loop(self) -> None:
        batch = self.settings.mail_batch_size
        while not self._stopping:
            self._wake.clear()
            claimed = 0
            try:
                claimed, _ = await self._pass(utc_now())
            except Exception:
                log.exception("outbox pass failed; trying again after the sweep interval")
            if self._stopping:
                break
            if claimed >= batch:
                await asyncio.sleep(0)
                continue
            delay = await self._idle_seconds(utc_now())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _idle_seconds(self, now: datetime) -> float:
        """How long to wait: the sweep interval when the clock is armed for the next due
        time, else until that time (at most the sweep interval)."""
        sweep = float(self.settings.mail_sweep_seconds)
        wake_at = await self._next_wake(now)
        if wake_at is None:
            return sweep
        clock = self._clock
        if clock is not None and clock.running and wake_at > now:
            self.arm(wake_at)
            return sweep
        return min(max((wake_at - now).total_seconds(), 0.0), sweep)

    async def _next_wake(self, now: datetime) -> datetime | None:
        """When the next row falls due or the next lease runs out."""
        try:
            async with self.db.reader() as session:
                due = await session.scalar(
                    select(func.min(Notification.due_at)).where(Notification.status == "planned")
                )
                lease = await session.scalar(
                    select(func.min(Notification.lease_until)).where(
                        Notification.status == "sending"
                    )
                )
        except Exception:
            log.exception("cannot read the next due time")
            return None
        # A lease counts as ended strictly after lease_until: wake just past it.
        times = [t for t in (due, lease + timedelta(milliseconds=10) if lease else None) if t]
        return min(times) if times else None

    async def _pass(self, now: datetime) -> tuple[int, int]:
        if not self.settings.mail_enabled:
            return 0, 0
        s = self.settings
        async with self.db.writer.begin() as session:
            rows = await claim_due(
                session,
                now,
                limit=s.mail_batch_size,
                lease_seconds=s.mail_lease_seconds,
                is_sqlite=self.db.is_sqlite,
                mail_from=s.mail_from,
            )
            due: list[Notification] = []
            given_up: list[Notification] = []
            for note in rows:
                if note.attempts > s.mail_max_attempts:
                    # Its earlier senders died holding it (the lease ran out each time).
                    note.status = "failed"
                    note.lease_until = None
                    note.last_error = f"gave up after {note.attempts - 1} attempts: lease expired"
                    given_up.append(note)
                else:
                    due.append(note)
            await reminder_checks.settle_digests(session, given_up, now)
            due = await reminder_checks.screen(
                session,
                due,
                now,
                lease_until=now + timedelta(seconds=s.mail_lease_seconds),
                is_sqlite=self.db.is_sqlite,
                mail_from=s.mail_from,
            )
        if not rows:
            return 0, 0
        if not due:
            return len(rows), 0
        # Stop starting sends well before the lease ends, so no other sender takes them over.
        margin = min(float(s.smtp_timeout_seconds), s.mail_lease_seconds / 2)
        deadline = time.monotonic() + s.mail_lease_seconds - margin
        registrations, events, subscriptions = await self._load(due)
        jobs = await asyncio.to_thread(
            self._render_all, due, registrations, events, subscriptions, now
        )
        slots = asyncio.Semaphore(s.smtp_pool_size)
        pending = {asyncio.ensure_future(self._deliver(job, slots, deadline)): job for job in jobs}
        try:
            # Record as results come in, not once at the end: a crash then resends only what
            # was delivered in the last RECORD_INTERVAL, not the whole batch.
            while pending:
                done, _ = await asyncio.wait(pending, timeout=RECORD_INTERVAL)
                if done:
                    await self._record([pending.pop(task) for task in done], now)
        finally:
            for task in pending:
                task.cancel()  # the rows keep their lease and are claimed again later
        return len(rows), sum(1 for job in jobs if job.sent)

    async def _load(
        self, notes: list[Notification]
    ) -> tuple[dict[int, Registration], dict[int, Event], dict[int, Subscription]]:
        registration_ids = {n.registration_id for n in notes if n.registration_id is not None}
        event_ids = {n.event_id for n in notes if n.event_id is not None}
        subscription_ids = {n.subscription_id for n in notes if n.subscription_id is not None}
        subscriptions: dict[int, Subscription] = {}
        async with self.db.reader() as session:
            if subscription_ids:
                subscriptions = {
                    sub.id: sub
                    for sub in await session.scalars(
                        select(Subscription).where(Subscription.id.in_(subscription_ids))
                    )
                }
            registrations = {
                r.id: r
                for r in await session.scalars(
                    select(Registration).where(Registration.id.in_(registration_ids))
                )
            }
            events = {
                e.id: e for e in await session.scalars(select(Event).where(Event.id.in_(event_ids)))
            }
        return registrations, events, subscriptions

    def _links(
        self,
        note: Notification,
        registration: Registration | None,
        subscription: Subscription | None = None,
    ) -> dict[str, str]:
        links: dict[str, str] = {}
        if subscription is not None:
            token = manage_links.sign(
                subscription.id, subscription.token_nonce, self.secret, SUBSCRIPTION_PURPOSE
            )
            page = self.base_url + SUBSCRIPTION_PATH.format(token=token)
            links["manage_url"] = links["confirm_url"] = page
            links["unsubscribe_url"] = self.base_url + UNSUBSCRIBE_PATH.format(token=token)
        elif registration is not None:
            token = manage_links.sign(registration.id, registration.token_nonce, self.secret)
            links["manage_url"] = self.base_url + MANAGE_PATH.format(token=token)
            links["confirm_url"] = self.base_url + CONFIRM_PATH.format(token=token)
        if note.event_id is not None:
            links["event_url"] = f"{self.base_url}/api/events/{note.event_id}"
        return links

    def _render_all(
        self,
        notes: Iterable[Notification],
        registrations: dict[int, Registration],
        events: dict[int, Event],
        subscriptions: dict[int, Subscription],
        now: datetime,
    ) -> list[_Job]:
        """Runs in a worker thread: a message costs a few milliseconds of CPU (MIME, ICS)."""
        jobs = []
        for note in notes:
            job = _Job(note.id, note.lease_until)
            registration = registrations.get(note.registration_id or 0)
            try:
                job.message = render(
                    note,
                    event=events.get(note.event_id or 0),
                    links=self._links(
                        note, registration, subscriptions.get(note.subscription_id or 0)
                    ),
                    mail_from=self.settings.mail_from,
                    now=now,
                )
            except RenderError as exc:
                job.error = DeliveryError(f"cannot render: {exc}", permanent=True)
            except Exception as exc:
                log.exception("rendering notification %s failed", note.id)
                job.error = DeliveryError(f"cannot render: {exc!r}", permanent=True)
            jobs.append(job)
        return jobs

    async def _deliver(self, job: _Job, slots: asyncio.Semaphore, deadline: float) -> None:
        if job.message is None:
            return
        async with slots:
            if self._stopping or time.monotonic() > deadline:
                return  # left for the next pass, see _record
            try:
                await self.sender.send(job.message)
            except DeliveryError as exc:
                job.error = exc
            except Exception as exc:
                log.exception("sending notification %s failed", job.id)
                job.error = DeliveryError(f"unexpected error: {exc!r}", permanent=False)
            else:
                job.sent = True

    async def _record(self, jobs: list[_Job], now: datetime) -> None:
        s = self.settings
        async with self.db.writer.begin() as session:
            stmt = select(Notification).where(Notification.id.in_([j.id for j in jobs]))
            if not self.db.is_sqlite:
                stmt = stmt.with_for_update()
            rows = {n.id: n for n in await session.scalars(stmt)}
            for job in jobs:
                note = rows.get(job.id)
                if note is None or note.status != "sending" or note.lease_until != job.lease_until:
                    # Another sender took it over after our lease ran out; its result counts.
                    log.warning("notification %s changed hands while being sent", job.id)
                    continue
                note.lease_until = None
                if job.sent:
                    note.status = "sent"
                    note.sent_at = now
                    note.last_error = ""
                elif job.error is None:
                    # Not tried (stopping, or too close to the lease end): it is not an attempt.
                    note.status = "planned"
                    note.attempts -= 1
                else:
                    reason = job.error.reason[:_MAX_ERROR_CHARS]
                    if job.error.permanent:
                        note.status = "failed"
                        note.last_error = reason
                    elif note.attempts >= s.mail_max_attempts:
                        note.status = "failed"
                        note.last_error = f"gave up after {note.attempts} attempts: {reason}"
                    else:
                        note.status = "planned"
                        note.due_at = now + retry_delay(note.attempts, s.mail_retry_seconds)
                        note.last_error = reason
            # Reminders carried by a digest follow it once it is sent or has failed for good.
            await reminder_checks.settle_digests(session, list(rows.values()), now)


def planned_row(
    *,
    kind: str,
    recipient_email: str,
    recipient_name: str,
    language: str,
    time_zone: str,
    context: dict[str, Any],
    now: datetime,
    registration_id: int | None = None,
    event_id: int | None = None,
    due_at: datetime | None = None,
    dedupe_key: str | None = None,
) -> dict[str, Any]:
    """The columns of a planned message, for a multi-row INSERT in the caller's transaction."""
    if kind not in KINDS:
        raise ValueError(f"unknown notification kind {kind!r}")
    return {
        "kind": kind,
        "recipient_email": recipient_email,
        "recipient_name": recipient_name,
        "language": language[:8] or "en",
        "time_zone": time_zone or "UTC",
        "context": context,
        "registration_id": registration_id,
        "event_id": event_id,
        "status": "planned",
        "reason": "",
        "due_at": due_at or now,
        "attempts": 0,
        "last_error": "",
        "message_id": "",
        "dedupe_key": dedupe_key,
        "created_at": now,
    }
