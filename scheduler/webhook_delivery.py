"""Delivering webhooks: the outbox worker's second channel, beside mail.

Deliveries are rows (``webhook_deliveries``) claimed in the worker's own claim transaction
with the same lease, counted, retried and given up on by the same code as mail
(``outbox.claim_rows``, ``outbox.record_result``). Only the sending differs: each claimed
delivery is signed (scheduler/webhook_signatures.py), its host checked again
(scheduler/webhook_targets.py) and POSTed by ``WebhookSender``; every attempt is logged
(``webhook_attempts``). 2xx is delivered; timeouts, connection errors, 429, 5xx and any
other status are retried with backoff and jitter (Retry-After honoured on 429 and 503); an
address that is no longer allowed fails at once. A webhook whose deliveries keep failing
without one success for ``webhooks_disable_after_hours`` is disabled, with the reason, and
its waiting deliveries cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler import __version__, audit, job_locks, metrics, outbox, webhook_signatures, webhooks
from scheduler.clock import Clock
from scheduler.database import Database
from scheduler.feeds import parse_hosts
from scheduler.models import Webhook, WebhookAttempt, WebhookDelivery, utc_now
from scheduler.pledge_feed import retry_after_seconds
from scheduler.settings import Settings
from scheduler.webhook_events import PING
from scheduler.webhook_targets import (
    RESOLVE_TIMEOUT,
    Refused,
    Unresolved,
    addresses,
    check_url,
)

log = logging.getLogger("scheduler.webhooks")

USER_AGENT = f"ForumScheduler/{__version__} (webhooks)"
RESPONSE_CAP = 1024  # bytes of the receiver's answer read, at most
MAX_ADDRESSES = 3  # of a host's addresses, tried in turn while each refuses the connection
PRUNE_JOB = "webhook-prune"
PRUNE_BATCH = 1000
EXCERPT_SECONDS = 1.0  # how long the first bytes of an answer are waited for
_EXCERPT_CHARS = 500


class SendError(Exception):
    """No answer: timed out or the connection failed (worth trying again later);
    ``unconnected``: refused or unreachable at once (another address may do)."""

    def __init__(self, reason: str, *, unconnected: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unconnected = unconnected


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    retry_after: str | None
    excerpt: str


class WebhookSender:
    """Every webhook request goes through here: to the address that was checked, within
    the timeouts, without following redirects or environment proxies, reading at most
    RESPONSE_CAP bytes of the answer.

    Connections are not kept alive: the request URL carries the checked address, and a
    pooled connection to that address may have been opened for another host name.
    """

    def __init__(
        self,
        connect_timeout: float,
        timeout: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={"User-Agent": USER_AGENT},
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def post(
        self, url: httpx.URL, address: str, headers: dict[str, str], body: bytes
    ) -> Reply:
        request = self._http.build_request(
            "POST",
            url.copy_with(host=address),
            content=body,
            headers={
                **headers,
                "Host": url.netloc.decode("ascii"),
                "Content-Type": "application/json",
            },
            # TLS still names (SNI) and verifies the host, not the address.
            extensions={"sni_hostname": url.host} if url.scheme == "https" else {},
        )
        try:
            async with asyncio.timeout(self.timeout):
                response = await self._http.send(request, stream=True)
        except (TimeoutError, httpx.TimeoutException):
            raise SendError(f"timed out after {self.timeout:g} s waiting for {url.host}") from None
        except httpx.TransportError as exc:
            detail = str(exc) or type(exc).__name__
            raise SendError(
                f"cannot reach {url.host} ({address}): {detail}",
                unconnected=isinstance(exc, httpx.ConnectError),
            ) from None
        try:
            async with asyncio.timeout(EXCERPT_SECONDS):
                excerpt = await _first_bytes(response)
        except (TimeoutError, httpx.HTTPError):
            excerpt = b""
        finally:
            await response.aclose()
        text = excerpt.decode("utf-8", errors="replace").replace("\x00", "")
        return Reply(
            response.status_code, response.headers.get("retry-after"), text[:_EXCERPT_CHARS]
        )


async def _first_bytes(response: httpx.Response) -> bytes:
    data = b""
    async for chunk in response.aiter_raw():
        data += chunk
        if len(data) >= RESPONSE_CAP:
            break
    return data[:RESPONSE_CAP]


@dataclass(slots=True)
class Call:
    """One claimed delivery: what its attempt needs, then how it went."""

    id: int
    lease_until: datetime | None
    webhook_id: int
    url: str
    secrets: list[str]
    message_id: str
    body: bytes
    attempted_at: datetime | None = None  # None: not tried (back to planned, no attempt)
    duration_ms: int = 0
    http_status: int | None = None
    error: str = ""
    permanent: bool = False
    retry_after: float | None = None
    excerpt: str = ""
    sent: bool = False


def signing_secrets(hook: Webhook, now: datetime) -> list[str]:
    """The current secret, and the previous one during its grace period after a rotation."""
    keep_old = (
        hook.previous_secret and hook.previous_secret_until and hook.previous_secret_until > now
    )
    return [hook.secret, hook.previous_secret] if keep_old else [hook.secret]


class WebhookChannel:
    """Claims, sends and records webhook deliveries for the outbox worker."""

    def __init__(
        self, db: Database, settings: Settings, sender: WebhookSender | None = None
    ) -> None:
        self.db = db
        self.settings = settings
        self.allowed = parse_hosts(settings.webhooks_allowed_hosts)
        self.only_allowed = settings.webhooks_only_allowed_hosts
        self.sender = sender or WebhookSender(
            float(settings.webhooks_connect_timeout_seconds),
            float(settings.webhooks_timeout_seconds),
        )

    async def close(self) -> None:
        await self.sender.aclose()

    def schedule(self, clock: Clock) -> None:
        """Prune the delivery log daily (the first time a few minutes after start)."""
        if self.settings.webhooks_keep_days <= 0:
            return

        async def prune() -> None:
            await self.prune(utc_now())

        clock.scheduler.add_job(
            prune,
            "interval",
            hours=24,
            next_run_time=utc_now() + timedelta(minutes=7),
            id=PRUNE_JOB,
            replace_existing=True,
        )

    async def prune(self, now: datetime) -> int:
        """Delete deliveries finished more than ``webhooks_keep_days`` ago, with their
        attempts (one node at a time, in short batches); the number deleted."""
        if self.settings.webhooks_keep_days <= 0:
            return 0
        cutoff = now - timedelta(days=self.settings.webhooks_keep_days)
        done = 0
        while True:
            async with self.db.writer.begin() as session:
                if not await job_locks.run_alone(session, PRUNE_JOB):
                    return done  # another node is on it
                old = (
                    select(WebhookDelivery.id)
                    .where(
                        WebhookDelivery.status.in_(("sent", "failed", "cancelled")),
                        # Its last attempt's due time: read from the (status, due_at) index.
                        WebhookDelivery.due_at < cutoff,
                    )
                    .limit(PRUNE_BATCH)
                )
                ids = list(await session.scalars(old))
                if ids:
                    await session.execute(
                        delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(ids))
                    )
                    await session.execute(
                        delete(WebhookDelivery).where(WebhookDelivery.id.in_(ids))
                    )
            done += len(ids)
            if len(ids) < PRUNE_BATCH:
                return done

    async def claim(self, session: AsyncSession, now: datetime) -> list[Call]:
        """Take due deliveries in the worker's claim transaction (see outbox.claim_rows);
        those of a disabled or deleted webhook are cancelled, pings excepted."""
        s = self.settings
        rows = await outbox.claim_rows(
            session,
            WebhookDelivery,
            now,
            limit=s.webhooks_batch_size,
            lease_seconds=s.webhooks_lease_seconds,
            is_sqlite=self.db.is_sqlite,
        )
        rows = outbox.give_up_expired(rows, s.webhooks_max_attempts)
        hooks = {
            h.id: h
            for h in await session.scalars(
                select(Webhook).where(Webhook.id.in_({r.webhook_id for r in rows}))
            )
        }
        calls = []
        for row in rows:
            hook = hooks.get(row.webhook_id)
            if hook is None or (not hook.active and row.event_type != PING):
                row.status, row.lease_until = "cancelled", None
                row.attempts -= 1  # claimed, never tried
                row.last_error = webhooks.CANCELLED_WHEN_OFF
                continue
            calls.append(
                Call(
                    row.id,
                    row.lease_until,
                    hook.id,
                    hook.url,
                    signing_secrets(hook, now),
                    row.message_id,
                    row.payload.encode("utf-8"),
                )
            )
        await session.flush()
        return calls

    async def send(self, calls: list[Call], now: datetime) -> int:
        """Attempt the calls, ``webhooks_concurrency`` at a time, and record the results;
        the number delivered. Attempts not started before the lease nears its end are left
        for the next pass (not counted)."""
        if not calls:
            return 0
        s = self.settings
        started = time.monotonic()
        # The last attempt started (name lookup, request, first bytes) ends in the lease.
        longest = RESOLVE_TIMEOUT + s.webhooks_timeout_seconds + EXCERPT_SECONDS
        deadline = started + s.webhooks_lease_seconds - s.webhooks_timeout_seconds - longest
        gate = asyncio.Semaphore(s.webhooks_concurrency)

        async def attempt(call: Call) -> None:
            async with gate:
                if time.monotonic() > deadline:
                    return
                # The pass's clock plus the time spent: real time on the loop, the test's
                # time in tests.
                call.attempted_at = now + timedelta(seconds=time.monotonic() - started)
                await self._attempt(call)

        await asyncio.gather(*(attempt(c) for c in calls))
        await self._record(calls, now)
        return sum(1 for c in calls if c.sent)

    async def _attempt(self, call: Call) -> None:
        started = time.monotonic()
        try:
            target = check_url(call.url, self.allowed, only_allowed=self.only_allowed)
            found = await addresses(target)
            # The signed timestamp is the wall clock's: receivers compare it with theirs.
            stamp = int(time.time())
            headers = webhook_signatures.headers(call.secrets, call.message_id, stamp, call.body)
            reply = await self._post(target.url, found, headers, call.body)
        except Refused as exc:
            call.error, call.permanent = f"refused: {exc.reason}", True
        except (Unresolved, SendError) as exc:
            call.error = exc.reason
        except Exception as exc:
            log.exception("webhook delivery %s failed unexpectedly", call.id)
            call.error = f"unexpected error: {exc!r}"
        else:
            call.http_status, call.excerpt = reply.status, reply.excerpt
            if 200 <= reply.status < 300:
                call.sent = True
            else:
                call.error = f"HTTP {reply.status}"
                if 300 <= reply.status < 400:
                    call.error += " (redirects are not followed)"
                if reply.status in (429, 503):
                    call.retry_after = retry_after_seconds(reply.retry_after, utc_now())
                    if call.retry_after is not None:
                        call.error += f" (Retry-After {call.retry_after:.0f} s)"
        finally:
            call.duration_ms = int((time.monotonic() - started) * 1000)

    async def _post(
        self, url: httpx.URL, found: list[str], headers: dict[str, str], body: bytes
    ) -> Reply:
        """To the first of the host's (checked) addresses that takes the connection: a host
        whose IPv6 address this machine cannot reach still gets its IPv4 one."""
        tried = found[:MAX_ADDRESSES]
        for address in tried[:-1]:
            try:
                return await self.sender.post(url, address, headers, body)
            except SendError as exc:
                if not exc.unconnected:
                    raise
        return await self.sender.post(url, tried[-1], headers, body)

    async def _record(self, calls: list[Call], now: datetime) -> None:
        s = self.settings
        cap = timedelta(seconds=s.webhooks_max_retry_seconds)
        async with self.db.writer.begin() as session:
            # The webhooks first, then their deliveries: the order a webhook's deletion
            # takes them in (its cascade), so the two cannot deadlock. In id order, as on
            # every node; NO KEY UPDATE, so that changes announcing events (which share-lock
            # the webhooks they plan deliveries for) are not held up.
            hooks_stmt = (
                select(Webhook)
                .where(Webhook.id.in_({c.webhook_id for c in calls}))
                .order_by(Webhook.id)
            )
            stmt = select(WebhookDelivery).where(WebhookDelivery.id.in_([c.id for c in calls]))
            if not self.db.is_sqlite:
                hooks_stmt = hooks_stmt.with_for_update(key_share=True)
                stmt = stmt.with_for_update()
            hooks = {h.id: h for h in await session.scalars(hooks_stmt)}
            rows = {r.id: r for r in await session.scalars(stmt)}
            attempts: list[dict[str, Any]] = []
            tried: list[Call] = []
            for call in calls:
                row = rows.get(call.id)
                if not outbox.still_leased(row, call.lease_until):
                    log.warning("webhook delivery %s changed hands while being sent", call.id)
                    continue
                assert row is not None
                not_before = None
                if call.retry_after is not None:
                    not_before = now + min(timedelta(seconds=call.retry_after), cap)
                outbox.record_result(
                    row,
                    now,
                    sent=call.sent,
                    error=call.error if call.attempted_at is not None else None,
                    permanent=call.permanent,
                    max_attempts=s.webhooks_max_attempts,
                    retry_seconds=s.webhooks_retry_seconds,
                    max_delay=cap,
                    not_before=not_before,
                    jitter=random.random(),  # noqa: S311 (spreading retries, not a secret)
                )
                if call.attempted_at is None:
                    continue
                tried.append(call)
                metrics.webhook_attempts.inc(
                    outcome=row.status if row.status != "planned" else "retry"
                )
                attempts.append(
                    {
                        "delivery_id": call.id,
                        "attempted_at": call.attempted_at,
                        "duration_ms": call.duration_ms,
                        "http_status": call.http_status,
                        "error": call.error.replace("\x00", ""),
                        "response_excerpt": call.excerpt,
                    }
                )
            if attempts:
                await session.execute(insert(WebhookAttempt), attempts)
            await self._track_health(session, hooks, tried, now)

    async def _track_health(
        self, session: AsyncSession, hooks: dict[int, Webhook], calls: list[Call], now: datetime
    ) -> None:
        """A success clears a webhook's failing streak; a failure starts one, and a streak
        longer than ``webhooks_disable_after_hours`` disables the webhook."""
        limit = timedelta(hours=self.settings.webhooks_disable_after_hours)
        for hook_id, hook in hooks.items():
            mine = [c for c in calls if c.webhook_id == hook_id]
            if not mine:
                continue
            if any(c.sent for c in mine):
                hook.failing_since = None
                continue
            first = min(c.attempted_at or now for c in mine)
            hook.failing_since = hook.failing_since or first
            if hook.active and limit and now - hook.failing_since >= limit:
                since = f"{hook.failing_since:%Y-%m-%d %H:%M} UTC"
                reason = f"every delivery since {since} failed (last: {mine[-1].error})"
                async with audit.acting_as(session, audit.WEBHOOK_DELIVERY):
                    await webhooks.disable(session, hook, reason, now)
                log.warning("webhook %s disabled: %s", hook.id, reason)
