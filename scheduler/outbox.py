"""The outbox: a message is a row written with the change that causes it, sent after commit.

A crash between commit and delivery loses nothing: the row stays ``planned`` (or
``sending`` with a lease that runs out) and is picked up again. Delivery is at least once;
the Message-ID is fixed per row, so the rare resend after a crash is recognisable.

One pass of the worker: claim a batch of due rows in a short write transaction (``FOR
UPDATE SKIP LOCKED`` on PostgreSQL; SQLite has a single writer), check the reminders among
them against the current state (``reminder_checks``: stale ones cancelled, late ones
skipped, one digest per person), render them as bytes (``mail_bytes`` composes each shape
of message once and fills in each recipient, tens of microseconds a message, so it is done
in the loop a few messages at a time, never holding it long) and send them outside any
transaction over the SMTP pool's connections at once, and record the results in short write
transactions as they come in (every RECORD_INTERVAL), so that a crash resends little. In a
wave the next batch is claimed and rendered while the current one is on the wire; at most
IN_FLIGHT_BATCHES are, so memory and the rows under lease stay bounded however many are due.

Webhook deliveries are the same kind of row in their own table (``webhook_deliveries``),
claimed in the same transaction by the same code (``claim_rows``), their results recorded
by the same rules (``record_result``): only their sending is theirs
(scheduler/webhook_delivery.py). One batch of them is on the wire at a time, beside the
mail, so a slow receiver never holds up mail.

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
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from apscheduler.triggers.date import DateTrigger
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler import audit, manage_links, metrics, reminder_checks, webhook_events
from scheduler.clock import Clock
from scheduler.database import Database
from scheduler.mail import DeliveryError, MailSender
from scheduler.mail_bytes import MessageFactory, Outgoing
from scheduler.mail_render import KINDS, RenderError, message_id_for
from scheduler.models import (
    Event,
    Notification,
    Registration,
    Subscription,
    WebhookDelivery,
    utc_now,
)
from scheduler.reminders import DIGEST_KIND
from scheduler.settings import Settings

if TYPE_CHECKING:
    from scheduler.webhook_delivery import Call, WebhookChannel

log = logging.getLogger("scheduler.outbox")

MAX_RETRY_DELAY = timedelta(hours=1)
RECORD_INTERVAL = 0.05  # seconds between the write transactions recording a batch's results
IN_FLIGHT_BATCHES = 2  # batches being sent while the loop claims and renders the next one
RENDER_STEP = 10  # messages rendered between two turns of the event loop
# Where mailed links point, below the public base URL; {token} is the signed manage token.
MANAGE_PATH = "/registrations/{token}"
CONFIRM_PATH = "/registrations/{token}/confirm"
# A deadline subscription: its page (confirm, unsubscribe) and the one-click unsubscribe.
SUBSCRIPTION_PATH = "/subscriptions/{token}"
UNSUBSCRIBE_PATH = "/api/subscriptions/{token}/unsubscribe"
SUBSCRIPTION_PURPOSE = "sub:"  # signing context of subscription links (see manage_links)
NEXT_DUE_JOB = "outbox-next-due"
_MAX_ERROR_CHARS = 2000
# The rows the worker claims under a lease: messages and webhook deliveries.
Leased = TypeVar("Leased", Notification, WebhookDelivery)


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


async def claim_rows(
    session: AsyncSession,
    table: type[Leased],
    now: datetime,
    *,
    limit: int,
    lease_seconds: int,
    is_sqlite: bool,
) -> list[Leased]:
    """Take up to ``limit`` due rows of ``table`` for this sender until the lease ends.

    Due: ``sending`` whose lease ran out (its sender died; these come first, they are late
    already), then ``planned`` with ``due_at <= now``, oldest first. Each claim counts as an
    attempt. The caller flushes.

    Two queries rather than one with OR: each reads only the head of the (status, due_at)
    index, while the OR made both databases read every due row and sort them, on every
    claim of a wave. Ties in ``due_at`` are not ordered by id: on PostgreSQL that would sort
    a whole wave due at the same second (SQLite's index gives id order anyway).
    """
    rows: list[Leased] = []
    for status, due in (
        ("sending", table.lease_until < now),
        ("planned", table.due_at <= now),
    ):
        stmt = (
            select(table)
            .where(table.status == status, due)
            .order_by(table.due_at)
            .limit(limit - len(rows))
        )
        if not is_sqlite:
            stmt = stmt.with_for_update(skip_locked=True)
        rows += await session.scalars(stmt)
        if len(rows) >= limit:
            break
    lease_until = now + timedelta(seconds=lease_seconds)
    for row in rows:
        row.status = "sending"
        row.lease_until = lease_until
        row.attempts += 1
    return rows


async def claim_due(
    session: AsyncSession,
    now: datetime,
    *,
    limit: int,
    lease_seconds: int,
    is_sqlite: bool,
    mail_from: str,
) -> list[Notification]:
    """Claim due messages (``claim_rows``); each claim fixes the row's Message-ID."""
    rows = await claim_rows(
        session, Notification, now, limit=limit, lease_seconds=lease_seconds, is_sqlite=is_sqlite
    )
    for note in rows:
        if not note.message_id:
            note.message_id = message_id_for(note.id, note.created_at, mail_from)
    await session.flush()
    return rows


def give_up_expired(rows: list[Leased], max_attempts: int) -> list[Leased]:
    """Fail the claimed rows whose earlier senders all died holding them (each lease ran
    out, ``max_attempts`` times); the others, still to be tried."""
    due: list[Leased] = []
    for row in rows:
        if row.attempts > max_attempts:
            row.status = "failed"
            row.lease_until = None
            row.last_error = f"gave up after {row.attempts - 1} attempts: lease expired"
        else:
            due.append(row)
    return due


def still_leased(row: Notification | WebhookDelivery | None, lease_until: datetime | None) -> bool:
    """Whether a claimed row is still this sender's (no other sender took it over after
    the lease ran out): only then is its result recorded."""
    return row is not None and row.status == "sending" and row.lease_until == lease_until


def record_result(
    row: Leased,
    now: datetime,
    *,
    sent: bool,
    error: str | None,
    permanent: bool = False,
    max_attempts: int,
    retry_seconds: int,
    max_delay: timedelta = MAX_RETRY_DELAY,
    not_before: datetime | None = None,
    jitter: float = 0.0,
) -> None:
    """Where a claimed row goes after its attempt: sent; back to planned as it was when it
    was not tried (``error`` None: stopping, or too near the lease's end); failed for good
    (``permanent``, or the last attempt); or planned again after the backoff, and not
    before ``not_before`` (a receiver's Retry-After)."""
    row.lease_until = None
    if sent:
        row.status = "sent"
        row.sent_at = now
        row.last_error = ""
    elif error is None:
        row.status = "planned"
        row.attempts -= 1
    else:
        reason = error[:_MAX_ERROR_CHARS]
        if permanent:
            row.status = "failed"
            row.last_error = reason
        elif row.attempts >= max_attempts:
            row.status = "failed"
            row.last_error = f"gave up after {row.attempts} attempts: {reason}"
        else:
            row.status = "planned"
            due = now + retry_delay(row.attempts, retry_seconds, max_delay, jitter)
            row.due_at = max(due, not_before) if not_before is not None else due
            row.last_error = reason


def retry_delay(
    attempts: int, retry_seconds: int, cap: timedelta = MAX_RETRY_DELAY, jitter: float = 0.0
) -> timedelta:
    """``retry_seconds`` after the first attempt, doubling each time, at most ``cap`` (one
    hour for mail). ``jitter`` (0 to 1) takes up to a quarter off, so that receivers that
    failed together are not retried all at the same second."""
    exponent = min(max(attempts - 1, 0), 30)
    delay = min(timedelta(seconds=retry_seconds * 2**exponent), cap)
    return delay * (1 - 0.25 * min(max(jitter, 0.0), 1.0))


async def next_due(session: AsyncSession, table: type[Leased]) -> datetime | None:
    """When the next row of ``table`` falls due or the next lease runs out."""
    due = await session.scalar(select(func.min(table.due_at)).where(table.status == "planned"))
    lease = await session.scalar(
        select(func.min(table.lease_until)).where(table.status == "sending")
    )
    # A lease counts as ended strictly after lease_until: wake just past it.
    times = [t for t in (due, lease + timedelta(milliseconds=10) if lease else None) if t]
    return min(times) if times else None


@dataclass(slots=True)
class _Job:
    id: int
    lease_until: datetime | None
    kind: str
    outgoing: Outgoing | None = None
    error: DeliveryError | None = None
    sent: bool = False


@dataclass(slots=True)
class _Batch:
    """Rows claimed at ``now``: how many, the messages to send before ``deadline``, and
    the webhook deliveries claimed with them."""

    claimed: int
    now: datetime
    jobs: list[_Job]
    deadline: float = 0.0
    calls: list[Call] = field(default_factory=list)


class OutboxWorker:
    """Delivers due outbox rows, mail and webhooks; one per process. ``kick()`` after
    committing new rows."""

    def __init__(
        self,
        db: Database,
        sender: MailSender,
        settings: Settings,
        secret: bytes,
        base_url: str,
        webhooks: WebhookChannel | None = None,
    ) -> None:
        self.db = db
        self.sender = sender
        self.settings = settings
        self.secret = secret
        self.base_url = base_url.rstrip("/")
        self.webhooks = webhooks
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._clock: Clock | None = None
        self._armed_at: datetime | None = None
        self.factory = MessageFactory(settings.mail_from)

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
        """Start the delivery loop in the running event loop (no-op if neither mail nor
        webhooks are enabled)."""
        if (not self.settings.mail_enabled and self.webhooks is None) or self._task is not None:
            return
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._sweeping(), name="outbox")

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
        if self.webhooks is not None:
            await self.webhooks.close()

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
        """One pass at ``now``, sent and recorded; the number of messages and webhook
        deliveries delivered."""
        batch = await self._take(now, webhooks=True)
        delivered = await self._send(batch)
        if self.webhooks is not None and batch.calls:
            delivered += await self.webhooks.send(batch.calls, now)
        return delivered

    async def _sweeping(self) -> None:
        # The loop writes only messages (not in the audit trail); anything else it ever
        # changed would be the reminder sweep's.
        with audit.acting(audit.REMINDER_SWEEP):
            await self._loop()

    async def _loop(self) -> None:
        size = self.settings.mail_batch_size
        sending: set[asyncio.Task[int]] = set()
        hooks: asyncio.Task[None] | None = None  # the webhook batch on the wire
        try:
            while not self._stopping:
                self._wake.clear()
                claimed = 0
                hooks_idle = hooks is None or hooks.done()
                try:
                    batch = await self._take(utc_now(), webhooks=hooks_idle)
                    claimed = batch.claimed
                    if batch.jobs:
                        sending.add(asyncio.ensure_future(self._send_logged(batch)))
                    if batch.calls:
                        hooks = asyncio.ensure_future(self._send_hooks(batch))
                        hooks_idle = False
                except Exception:
                    log.exception("outbox pass failed; trying again after the sweep interval")
                while len(sending) >= IN_FLIGHT_BATCHES:
                    _, sending = await asyncio.wait(sending, return_when=asyncio.FIRST_COMPLETED)
                if self._stopping:
                    break
                if claimed >= size:
                    await asyncio.sleep(0)
                    continue
                delay = await self._idle_seconds(utc_now(), webhooks=hooks_idle)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
        finally:
            # On stop, sends already started finish and the rest go back to planned (_deliver);
            # cancelling the loop cancels them, their rows keep the lease until it runs out.
            if sending:
                await asyncio.gather(*sending)
            if hooks is not None:
                await asyncio.gather(hooks)

    async def _send_hooks(self, batch: _Batch) -> None:
        """A webhook batch in the background; then the loop looks again (more may be due:
        while a batch is out, its due times are left out of the loop's waits)."""
        assert self.webhooks is not None
        try:
            await self.webhooks.send(batch.calls, utc_now())
        except Exception:
            log.exception("sending webhooks failed; their rows are claimed again after the lease")
        self.kick()

    async def _send_logged(self, batch: _Batch) -> int:
        """``_send`` in the background: a failure is logged, its rows wait for the lease."""
        try:
            return await self._send(batch)
        except Exception:
            log.exception("sending a batch failed; its rows are claimed again after the lease")
            return 0

    async def _idle_seconds(self, now: datetime, *, webhooks: bool) -> float:
        """How long to wait: the sweep interval when the clock is armed for the next due
        time, else until that time (at most the sweep interval)."""
        sweep = float(self.settings.mail_sweep_seconds)
        wake_at = await self._next_wake(now, webhooks=webhooks)
        if wake_at is None:
            return sweep
        clock = self._clock
        if clock is not None and clock.running and wake_at > now:
            self.arm(wake_at)
            return sweep
        return min(max((wake_at - now).total_seconds(), 0.0), sweep)

    async def _next_wake(self, now: datetime, *, webhooks: bool) -> datetime | None:
        """When the next row falls due or the next lease runs out (mail if enabled, and
        webhook deliveries when ``webhooks``)."""
        times: list[datetime | None] = []
        try:
            async with self.db.reader() as session:
                if self.settings.mail_enabled:
                    times.append(await next_due(session, Notification))
                if webhooks and self.webhooks is not None:
                    times.append(await next_due(session, WebhookDelivery))
        except Exception:
            log.exception("cannot read the next due time")
            return None
        found = [t for t in times if t is not None]
        return min(found) if found else None

    async def _take(self, now: datetime, *, webhooks: bool) -> _Batch:
        """Claim and check a batch of due rows, and render their messages; with
        ``webhooks``, claim due webhook deliveries in the same transaction."""
        s = self.settings
        calls: list[Call] = []
        rows: list[Notification] = []
        due: list[Notification] = []
        async with self.db.writer.begin() as session:
            if s.mail_enabled:
                rows = await claim_due(
                    session,
                    now,
                    limit=s.mail_batch_size,
                    lease_seconds=s.mail_lease_seconds,
                    is_sqlite=self.db.is_sqlite,
                    mail_from=s.mail_from,
                )
                due = give_up_expired(rows, s.mail_max_attempts)
                given_up = [note for note in rows if note.status == "failed"]
                await reminder_checks.settle_digests(session, given_up, now)
                await webhook_events.mails_failed(session, given_up, now)
                due = await reminder_checks.screen(
                    session,
                    due,
                    now,
                    lease_until=now + timedelta(seconds=s.mail_lease_seconds),
                    is_sqlite=self.db.is_sqlite,
                    mail_from=s.mail_from,
                )
            if webhooks and self.webhooks is not None:
                calls = await self.webhooks.claim(session, now)
        if not due:
            return _Batch(len(rows), now, [], calls=calls)
        # Stop starting sends well before the lease ends, so no other sender takes them over.
        margin = min(float(s.smtp_timeout_seconds), s.mail_lease_seconds / 2)
        deadline = time.monotonic() + s.mail_lease_seconds - margin
        nonces, events, subscriptions = await self._load(due)
        jobs: list[_Job] = []
        for start in range(0, len(due), RENDER_STEP):
            step = due[start : start + RENDER_STEP]
            jobs += self._render_all(step, nonces, events, subscriptions, now)
            await asyncio.sleep(0)  # the batch on the wire and the API go on in between
        return _Batch(len(rows), now, jobs, deadline, calls)

    async def _send(self, batch: _Batch) -> int:
        """Deliver a batch over the pool's connections at once, recording results as they
        come in, not once at the end: a crash then resends only what was delivered in the
        last RECORD_INTERVAL, not the whole batch. The number delivered."""
        if not batch.jobs:
            return 0
        todo = iter(batch.jobs)
        finished: list[_Job] = []

        async def deliver_in_turn() -> None:
            for job in todo:  # shared: each job is taken by one of the connections
                await self._deliver(job, batch.deadline)
                finished.append(job)

        width = min(self.settings.smtp_pool_size, len(batch.jobs))
        running = {asyncio.ensure_future(deliver_in_turn()) for _ in range(width)}
        try:
            while running:
                _, running = await asyncio.wait(running, timeout=RECORD_INTERVAL)
                if finished:
                    results, finished[:] = finished[:], []
                    await self._record(results, batch.now)
        finally:
            for task in running:
                task.cancel()  # the rows keep their lease and are claimed again later
        return sum(1 for job in batch.jobs if job.sent)

    async def _load(
        self, notes: list[Notification]
    ) -> tuple[dict[int, str], dict[int, Event], dict[int, Subscription]]:
        """What the messages need besides their rows: registrations' link nonces (only
        those: a wave has one registration per row), events and subscriptions."""
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
            result = await session.execute(
                select(Registration.id, Registration.token_nonce).where(
                    Registration.id.in_(registration_ids)
                )
            )
            nonces = {registration_id: nonce for registration_id, nonce in result}
            events = {
                e.id: e for e in await session.scalars(select(Event).where(Event.id.in_(event_ids)))
            }
        return nonces, events, subscriptions

    def _links(
        self,
        note: Notification,
        registration_nonce: str | None,
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
        elif registration_nonce is not None and note.registration_id is not None:
            token = manage_links.sign(note.registration_id, registration_nonce, self.secret)
            links["manage_url"] = self.base_url + MANAGE_PATH.format(token=token)
            links["confirm_url"] = self.base_url + CONFIRM_PATH.format(token=token)
        if note.event_id is not None:
            links["event_url"] = f"{self.base_url}/events/{note.event_id}"
        return links

    def _render_all(
        self,
        notes: Iterable[Notification],
        nonces: dict[int, str],
        events: dict[int, Event],
        subscriptions: dict[int, Subscription],
        now: datetime,
    ) -> list[_Job]:
        """The first message of each shape costs a few milliseconds of CPU (Babel, Jinja,
        MIME), each further one tens of microseconds."""
        jobs = []
        for note in notes:
            job = _Job(note.id, note.lease_until, note.kind)
            nonce = nonces.get(note.registration_id or 0)
            try:
                job.outgoing = self.factory.build(
                    note,
                    event=events.get(note.event_id or 0),
                    links=self._links(note, nonce, subscriptions.get(note.subscription_id or 0)),
                    now=now,
                )
            except RenderError as exc:
                job.error = DeliveryError(f"cannot render: {exc}", permanent=True)
            except Exception as exc:
                log.exception("rendering notification %s failed", note.id)
                job.error = DeliveryError(f"cannot render: {exc!r}", permanent=True)
            jobs.append(job)
        return jobs

    async def _deliver(self, job: _Job, deadline: float) -> None:
        out = job.outgoing
        if out is None:
            return
        if self._stopping or time.monotonic() > deadline:
            return  # left for the next pass, see _record
        try:
            await self.sender.send_bytes(out.data, out.mail_from, out.recipients)
        except DeliveryError as exc:
            job.error = exc
        except Exception as exc:
            log.exception("sending notification %s failed", job.id)
            job.error = DeliveryError(f"unexpected error: {exc!r}", permanent=False)
        else:
            job.sent = True

    async def _record(self, jobs: list[_Job], now: datetime) -> None:
        # Plain deliveries (nearly all of a wave) in one statement per lease; the rest (digest
        # carriers, failures, sends not tried) row by row below.
        delivered = [j for j in jobs if j.sent and j.kind != DIGEST_KIND]
        others = [j for j in jobs if not j.sent or j.kind == DIGEST_KIND]
        async with self.db.writer.begin() as session:
            for lease in {j.lease_until for j in delivered}:
                await self._record_delivered(
                    session, [j for j in delivered if j.lease_until == lease], now
                )
            if others:
                await self._record_each(session, others, now)

    async def _record_delivered(
        self, session: AsyncSession, jobs: list[_Job], now: datetime
    ) -> None:
        """Mark sent the rows still ours (same lease); log those another sender took over."""
        lease = jobs[0].lease_until
        result = await session.execute(
            update(Notification)
            .where(
                Notification.id.in_([j.id for j in jobs]),
                # "status || ''": found by id, not through the (status, due_at) index, which
                # SQLite would otherwise walk over every row being sent.
                Notification.status.concat("") == "sending",
                Notification.lease_until == lease,
            )
            .values(status="sent", sent_at=now, lease_until=None, last_error="")
            .returning(Notification.id, Notification.kind, Notification.due_at)
            .execution_options(synchronize_session=False)
        )
        recorded = set()
        for note_id, kind, due_at in result:
            recorded.add(note_id)
            metrics.mail_result(Notification(kind=kind, status="sent", due_at=due_at), now)
        for job in jobs:
            if job.id not in recorded:
                log.warning("notification %s changed hands while being sent", job.id)

    async def _record_each(self, session: AsyncSession, jobs: list[_Job], now: datetime) -> None:
        s = self.settings
        stmt = select(Notification).where(Notification.id.in_([j.id for j in jobs]))
        if not self.db.is_sqlite:
            stmt = stmt.with_for_update()
        rows = {n.id: n for n in await session.scalars(stmt)}
        recorded: list[Notification] = []
        for job in jobs:
            note = rows.get(job.id)
            if note is None or not still_leased(note, job.lease_until):
                # Another sender took it over after our lease ran out; its result counts.
                log.warning("notification %s changed hands while being sent", job.id)
                continue
            record_result(
                note,
                now,
                sent=job.sent,
                error=job.error.reason if job.error is not None else None,
                permanent=job.error is not None and job.error.permanent,
                max_attempts=s.mail_max_attempts,
                retry_seconds=s.mail_retry_seconds,
            )
            metrics.mail_result(note, now)
            recorded.append(note)
        # Reminders carried by a digest follow it once it is sent or has failed for good.
        await reminder_checks.settle_digests(session, list(rows.values()), now)
        await webhook_events.mails_failed(session, recorded, now)


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
