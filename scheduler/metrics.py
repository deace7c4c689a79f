"""Prometheus metrics at ``GET /metrics``: a few counters and histograms, kept in memory.

Each node counts what it did itself, so Prometheus scrapes every node, not the proxy. The
text format is small enough to write here rather than pull in a client library; only the
outbox backlog is read from the database, at scrape time, and is the same on every node.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import datetime

from litestar import Response, get
from litestar.di import NamedDependency
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from sqlalchemy import and_, func, or_, select

from scheduler import __version__
from scheduler.database import Database
from scheduler.models import Notification, utc_now
from scheduler.reminders import DIGEST_KIND, REMINDER_KINDS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENESS_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 900, 1800, 3600, 7200, 21600, 86400)
LATE_KINDS = frozenset((*REMINDER_KINDS, DIGEST_KIND))  # kinds whose lateness is measured

Labels = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    pairs = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if value != int(value) else str(int(value))


class Counter:
    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(labels)
        self._values: dict[Labels, float] = {}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(labels[n] for n in self.label_names)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(tuple(labels[n] for n in self.label_names), 0.0)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        with self._lock:
            items = sorted(self._values.items())
        for key, value in items:
            yield f"{self.name}{_labels(self.label_names, key)} {_number(value)}"


class Histogram:
    def __init__(
        self,
        name: str,
        help_text: str,
        buckets: Sequence[float],
        labels: Sequence[str] = (),
    ) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(labels)
        self.buckets = tuple(sorted(buckets))
        # Per label set: a count per bucket (not cumulative), then the sum.
        self._values: dict[Labels, tuple[list[int], list[float]]] = {}
        self._lock = threading.Lock()

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(labels[n] for n in self.label_names)
        index = next((i for i, b in enumerate(self.buckets) if value <= b), len(self.buckets))
        with self._lock:
            counts, total = self._values.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
            counts[index] += 1
            total[0] += value

    def count(self, **labels: str) -> int:
        with self._lock:
            entry = self._values.get(tuple(labels[n] for n in self.label_names))
            return sum(entry[0]) if entry else 0

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        with self._lock:
            items = sorted((k, (list(c), t[0])) for k, (c, t) in self._values.items())
        for key, (counts, total) in items:
            running = 0
            for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
                running += count
                le = 'le="' + _number(bound) + '"'
                yield f"{self.name}_bucket{_labels(self.label_names, key, le)} {running}"
            yield f"{self.name}_sum{_labels(self.label_names, key)} {_number(total)}"
            yield f"{self.name}_count{_labels(self.label_names, key)} {running}"


http_requests = Counter(
    "scheduler_http_requests_total",
    "HTTP requests answered, by route template, method and status.",
    ("route", "method", "status"),
)
http_latency = Histogram(
    "scheduler_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template and method.",
    LATENCY_BUCKETS,
    ("route", "method"),
)
mail_sent = Counter("scheduler_mail_sent_total", "Messages delivered, by kind.", ("kind",))
mail_failed = Counter(
    "scheduler_mail_failed_total", "Messages given up on for good, by kind.", ("kind",)
)
reminder_lateness = Histogram(
    "scheduler_reminder_lateness_seconds",
    "How long after its due time a reminder was delivered (sent_at - due_at), by kind.",
    LATENESS_BUCKETS,
    ("kind",),
)
feed_runs = Counter(
    "scheduler_feed_runs_total", "Pledge feed runs finished on this node, by outcome.", ("outcome",)
)
webhook_attempts = Counter(
    "scheduler_webhook_attempts_total",
    "Webhook delivery attempts made by this node, by result (sent, retry, failed).",
    ("outcome",),
)
_STARTED = time.time()
METRICS = (
    http_requests,
    http_latency,
    mail_sent,
    mail_failed,
    reminder_lateness,
    feed_runs,
    webhook_attempts,
)


def mail_result(note: Notification, now: datetime) -> None:
    """Count one outbox row whose result this node has just recorded (outbox._record)."""
    if note.status == "sent":
        mail_sent.inc(kind=note.kind)
        if note.kind in LATE_KINDS:
            reminder_lateness.observe(max((now - note.due_at).total_seconds(), 0.0), kind=note.kind)
    elif note.status == "failed":
        mail_failed.inc(kind=note.kind)


def http_metrics(app: ASGIApp) -> ASGIApp:
    """Middleware: count and time each routed HTTP request by its route template."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # a request that dies before answering counts as a server error

        async def send_counting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await app(scope, receive, send_counting)
        finally:
            route = str(scope.get("path_template") or "unmatched")
            method = str(scope.get("method", "GET"))
            http_requests.inc(route=route, method=method, status=str(status))
            http_latency.observe(time.perf_counter() - started, route=route, method=method)

    return middleware


async def _outbox_due(db: Database) -> float:
    """Messages due and not yet claimed (or whose sender's lease ran out): the backlog."""
    now = utc_now()
    async with db.reader() as session:
        due = await session.scalar(
            select(func.count()).where(
                or_(
                    and_(Notification.status == "planned", Notification.due_at <= now),
                    and_(Notification.status == "sending", Notification.lease_until < now),
                )
            )
        )
    return float(due or 0)


def render(backlog: float | None) -> str:
    lines = [
        "# HELP scheduler_info The running version.",
        "# TYPE scheduler_info gauge",
        f'scheduler_info{{version="{_escape(__version__)}"}} 1',
        "# HELP scheduler_start_time_seconds When this node started (Unix time).",
        "# TYPE scheduler_start_time_seconds gauge",
        f"scheduler_start_time_seconds {_STARTED:.3f}",
    ]
    if backlog is not None:
        lines += [
            "# HELP scheduler_outbox_due Messages due now and not being sent (whole cluster).",
            "# TYPE scheduler_outbox_due gauge",
            f"scheduler_outbox_due {_number(backlog)}",
        ]
    for metric in METRICS:
        lines.extend(metric.render())
    return "\n".join(lines) + "\n"


@get("/metrics", include_in_schema=False, cache=False)
async def metrics_page(db: NamedDependency[Database]) -> Response[str]:
    try:
        backlog: float | None = await _outbox_due(db)
    except Exception:  # the counters are still worth answering with
        backlog = None
    return Response(render(backlog), media_type=CONTENT_TYPE)
