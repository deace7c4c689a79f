"""Pledge feeds: registering them, their schedule, and the lease that runs each sync once.

The URL rules and the schedule are pure (``now`` passed in). The services take a session
and never commit. A run, on any node, first claims the feed's lease in a short transaction
(``UPDATE ... WHERE the lease has expired``); only the node whose update hit the row runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Annotated, Any, Literal, cast

import httpx
import msgspec
from apscheduler.triggers.cron import CronTrigger
from msgspec import UNSET, Meta, UnsetType
from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler import fields as f
from scheduler.errors import Conflict, Invalid, NotFound
from scheduler.models import Feed, FeedRun
from scheduler.pledges import check_field_map

FeedFormat = Literal["json", "csv"]
FeedName = Annotated[str, Meta(min_length=1, max_length=200, examples=["gcm-pledges"])]
FeedUrl = Annotated[str, Meta(min_length=1, max_length=2000)]
Cron = Annotated[str, Meta(min_length=1, max_length=100, examples=["0 */6 * * *"])]
Interval = Annotated[int, Meta(ge=1, le=366 * 86400)]
HeaderName = Annotated[
    str, Meta(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$", examples=["Authorization"])
]
HeaderValue = Annotated[str, Meta(min_length=1, max_length=2000, pattern=r"^[^\r\n\x00]*$")]

# Headers the client sets itself, or that would change how the request is framed or routed.
_RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "upgrade",
        "te",
        "trailer",
        "keep-alive",
        "accept-encoding",
        "if-none-match",
        "if-modified-since",
        "user-agent",
    }
)


class AuthHeader(msgspec.Struct, forbid_unknown_fields=True):
    """Sent with each request to the feed's host; stored, never shown back."""

    name: HeaderName
    value: HeaderValue


class FeedCreate(msgspec.Struct, forbid_unknown_fields=True):
    process_id: f.Id
    name: FeedName
    url: FeedUrl
    format: FeedFormat
    interval_seconds: Interval | None = None
    cron: Cron | None = None
    field_map: dict[str, str] = {}
    auth_header: AuthHeader | None = None
    enabled: bool = True


class FeedPatch(msgspec.Struct, forbid_unknown_fields=True):
    """Fields left out stay as they are; ``auth_header: null`` removes the header."""

    name: FeedName | UnsetType = UNSET
    url: FeedUrl | UnsetType = UNSET
    format: FeedFormat | UnsetType = UNSET
    interval_seconds: Interval | None | UnsetType = UNSET
    cron: Cron | None | UnsetType = UNSET
    field_map: dict[str, str] | UnsetType = UNSET
    auth_header: AuthHeader | None | UnsetType = UNSET
    enabled: bool | UnsetType = UNSET


# --- Rules --------------------------------------------------------------------------------


def parse_hosts(text: str) -> frozenset[str]:
    """The allow-list setting ("a.org, *.b.org") as lower-case entries."""
    return frozenset(h.strip().lower().rstrip(".") for h in text.split(",") if h.strip())


def host_allowed(host: str, allowed: frozenset[str]) -> bool:
    """Exact names, or ``*.example.org`` for its subdomains (not example.org itself)."""
    host = host.lower().rstrip(".")
    if host in allowed:
        return True
    return any(e.startswith("*.") and host.endswith(e[1:]) and host != e[2:] for e in allowed)


def check_url(url: str, allowed: frozenset[str]) -> httpx.URL:
    """The parsed URL if the feed may fetch it, else ValueError saying why.

    Only http(s), no credentials in the URL (use the auth header), and a host on the
    allow-list: the service never sends a request to an address the operator did not list.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise ValueError(f"not a usable URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise ValueError("must start with https:// or http://")
    if not parsed.host:
        raise ValueError("has no host")
    if parsed.userinfo:
        raise ValueError("must not carry a user name or password (use auth_header)")
    if not host_allowed(parsed.host, allowed):
        raise ValueError(f"host {parsed.host!r} is not in the feeds_allowed_hosts setting")
    return parsed


def same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    """Same host and port, allowing the upgrade from http to https on the default ports."""
    if a.host.lower() != b.host.lower():
        return False
    if a.scheme == b.scheme:
        return a.port == b.port
    return a.scheme == "http" and b.scheme == "https" and a.port in (None, 80) and b.port is None


_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def cron_trigger(expression: str) -> Any:
    """APScheduler's trigger for a five-field crontab line in UTC, or ValueError.

    Day-of-week numbers follow crontab (0 or 7 is Sunday); APScheduler 3 counts from
    Monday, so the field is spelled out in day names before it gets there.
    """
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError("not a five-field cron expression (minute hour day month weekday)")
    minute, hour, day, month, weekday = fields
    try:
        return CronTrigger(
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=_weekdays(weekday),
            timezone="UTC",
        )
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a valid cron expression: {exc}") from None


def _weekdays(field: str) -> str:
    """A crontab weekday field (``1-5``, ``0,6``, ``*/2``, ``mon``) as day names."""
    if field in ("*", "?"):
        return "*"
    days: set[int] = set()
    for part in field.lower().split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else None
        if step_text and step is None:
            raise ValueError(f"bad weekday step in {part!r}")
        if span == "*":
            first, last = 0, 6
        else:
            low, _, high = span.partition("-")
            first = _weekday(low)
            last = _weekday(high) if high else (6 if step else first)
            if high and last == 0 and first > 0:
                last = 7  # fri-sun
        if last < first:
            raise ValueError(f"weekday range {span!r} runs backwards")
        days.update(d % 7 for d in range(first, last + 1, step or 1))
    return ",".join(_DAYS[d] for d in sorted(days))


def _weekday(text: str) -> int:
    if text.isdigit() and int(text) <= 7:
        return int(text)  # 7 is Sunday too (days are taken modulo 7)
    if text[:3] in _DAYS:
        return _DAYS.index(text[:3])
    raise ValueError(f"{text!r} is not a weekday (0-7 or sun-sat)")


def next_run_at(interval_seconds: int | None, cron: str | None, now: datetime) -> datetime:
    """When the next scheduled run is due after ``now``."""
    if cron:
        trigger = cron_trigger(cron)
        fire: datetime | None = trigger.get_next_fire_time(None, now)
        if fire is not None and fire <= now:  # now itself matches: the next one after it
            fire = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
        if fire is None:
            raise ValueError("cron expression never fires")
        return fire
    assert interval_seconds is not None
    return now + timedelta(seconds=interval_seconds)


def check_schedule(
    interval_seconds: int | None, cron: str | None, min_interval: int, now: datetime
) -> datetime:
    """The first run time for a schedule, or Invalid naming the field."""
    if (interval_seconds is None) == (cron is None):
        raise Invalid("schedule", "give either interval_seconds or cron")
    if interval_seconds is not None and interval_seconds < min_interval:
        raise Invalid("interval_seconds", f"must be at least {min_interval}")
    if cron is not None:
        try:
            trigger = cron_trigger(cron)
        except ValueError as exc:
            raise Invalid("cron", str(exc)) from None
        fires: list[datetime] = []
        fire: datetime | None = trigger.get_next_fire_time(None, now)
        while fire is not None and len(fires) < 50:
            fires.append(fire)
            fire = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
        if not fires:
            raise Invalid("cron", "never fires")
        if any((b - a).total_seconds() < min_interval for a, b in pairwise(fires)):
            raise Invalid("cron", f"fires more often than every {min_interval} seconds")
    return next_run_at(interval_seconds, cron, now)


def check_header(header: AuthHeader) -> None:
    if header.name.lower() in _RESERVED_HEADERS or header.name.lower().startswith("proxy-"):
        raise Invalid("auth_header", f"{header.name} is set by the client itself")


# --- Services -----------------------------------------------------------------------------


async def get_feed(session: AsyncSession, feed_id: int, process_ids: set[int]) -> Feed:
    """A feed of one of ``process_ids`` (others are hidden: 404)."""
    feed = await session.get(Feed, feed_id)
    if feed is None or feed.process_id not in process_ids:
        raise NotFound(f"no feed {feed_id}")
    return feed


async def list_feeds(session: AsyncSession, process_ids: set[int]) -> list[Feed]:
    rows = await session.scalars(
        select(Feed).where(Feed.process_id.in_(process_ids)).order_by(Feed.id)
    )
    return list(rows)


async def create_feed(
    session: AsyncSession,
    data: FeedCreate,
    allowed: frozenset[str],
    min_interval: int,
    now: datetime,
) -> Feed:
    _check_url(data.url, allowed)
    first = check_schedule(data.interval_seconds, data.cron, min_interval, now)
    field_map = _field_map(data.field_map)
    if data.auth_header is not None:
        check_header(data.auth_header)
    await _check_name_free(session, data.name.strip(), None)
    feed = Feed(
        process_id=data.process_id,
        name=data.name.strip(),
        url=data.url.strip(),
        format=data.format,
        interval_seconds=data.interval_seconds,
        cron=data.cron.strip() if data.cron else None,
        field_map=field_map,
        auth_header_name=data.auth_header.name if data.auth_header else "",
        auth_header_value=data.auth_header.value if data.auth_header else "",
        enabled=data.enabled,
        etag="",
        last_modified="",
        next_pages=[],
        next_run_at=first,
        lease_until=None,
        created_at=now,
        updated_at=now,
    )
    session.add(feed)
    await session.flush()
    return feed


async def update_feed(
    session: AsyncSession,
    feed: Feed,
    data: FeedPatch,
    allowed: frozenset[str],
    min_interval: int,
    now: datetime,
) -> None:
    if not isinstance(data.name, UnsetType) and data.name.strip() != feed.name:
        await _check_name_free(session, data.name.strip(), feed.id)
        feed.name = data.name.strip()
    source_changed = False
    if not isinstance(data.url, UnsetType) and data.url.strip() != feed.url:
        _check_url(data.url, allowed)
        feed.url = data.url.strip()
        source_changed = True
    if not isinstance(data.format, UnsetType) and data.format != feed.format:
        feed.format = data.format
        source_changed = True
    if not isinstance(data.field_map, UnsetType):
        field_map = _field_map(data.field_map)
        source_changed = source_changed or field_map != feed.field_map
        feed.field_map = field_map
    if source_changed:
        # What the server last said no longer describes what we would read.
        feed.etag = ""
        feed.last_modified = ""
        feed.next_pages = []
    if not isinstance(data.auth_header, UnsetType):
        if data.auth_header is None:
            feed.auth_header_name = feed.auth_header_value = ""
        else:
            check_header(data.auth_header)
            feed.auth_header_name = data.auth_header.name
            feed.auth_header_value = data.auth_header.value
    interval = feed.interval_seconds if isinstance(data.interval_seconds, UnsetType) else None
    cron = feed.cron if isinstance(data.cron, UnsetType) else None
    if not isinstance(data.interval_seconds, UnsetType):
        interval = data.interval_seconds
        if data.interval_seconds is not None and isinstance(data.cron, UnsetType):
            cron = None  # switching to an interval
    if not isinstance(data.cron, UnsetType):
        cron = data.cron.strip() if data.cron else None
        if data.cron is not None and isinstance(data.interval_seconds, UnsetType):
            interval = None  # switching to cron
    if (interval, cron) != (feed.interval_seconds, feed.cron):
        feed.next_run_at = check_schedule(interval, cron, min_interval, now)
        feed.interval_seconds, feed.cron = interval, cron
    if not isinstance(data.enabled, UnsetType):
        if data.enabled and not feed.enabled:
            feed.next_run_at = next_run_at(feed.interval_seconds, feed.cron, now)
        feed.enabled = data.enabled
    feed.updated_at = now
    await session.flush()


async def delete_feed(session: AsyncSession, feed: Feed) -> None:
    """The feed, its runs and its pledges go (to keep the pledges, disable the feed)."""
    await session.delete(feed)
    await session.flush()


async def _check_name_free(session: AsyncSession, name: str, own_id: int | None) -> None:
    other = await session.scalar(select(Feed.id).where(Feed.name == name))
    if other is not None and other != own_id:
        raise Conflict("already used by another feed", field="name")


def _check_url(url: str, allowed: frozenset[str]) -> None:
    try:
        check_url(url.strip(), allowed)
    except ValueError as exc:
        raise Invalid("url", str(exc)) from None


def _field_map(field_map: dict[str, str]) -> dict[str, str]:
    try:
        return check_field_map(field_map)
    except ValueError as exc:
        raise Invalid("field_map", str(exc)) from None


# --- The lease ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedTarget:
    """What a run needs to know about its feed, read when the lease was claimed."""

    id: int
    process_id: int
    name: str
    url: str
    format: str
    field_map: dict[str, str]
    auth_header_name: str
    auth_header_value: str
    etag: str
    last_modified: str
    # (URL, ETag, Last-Modified) of each page after the first, as the last run read them.
    next_pages: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Claim:
    target: FeedTarget
    run_id: int
    lease_until: datetime
    started_at: datetime


class Busy(Exception):
    """Another run of this feed holds the lease."""


async def claim(
    session: AsyncSession, feed_id: int, now: datetime, lease_seconds: int, *, due_only: bool
) -> Claim | None:
    """Take the feed's lease and open a run, or None when it is not ours to run now.

    Scheduled runs (``due_only``) also need the feed enabled and due, so that a node whose
    timer fires after another node already ran the feed does not run it again.
    """
    conditions = [Feed.id == feed_id, or_(Feed.lease_until.is_(None), Feed.lease_until < now)]
    if due_only:
        conditions += [Feed.enabled.is_(True), Feed.next_run_at <= now]
    lease_until = now + timedelta(seconds=lease_seconds)
    claimed = await session.scalar(
        update(Feed)
        .where(*conditions)
        .values(lease_until=lease_until)
        .returning(Feed.id)
        .execution_options(synchronize_session=False)
    )
    if claimed is None:
        return None
    feed = await session.scalar(
        select(Feed).where(Feed.id == feed_id).execution_options(populate_existing=True)
    )
    assert feed is not None
    # A run left "running" had its node die: its lease ran out, or we could not claim.
    await session.execute(
        update(FeedRun)
        .where(FeedRun.feed_id == feed_id, FeedRun.outcome == "running")
        .values(outcome="failed", finished_at=now, error="interrupted: its node stopped")
        .execution_options(synchronize_session=False)
    )
    run = FeedRun(
        feed_id=feed_id,
        started_at=now,
        outcome="running",
        new=0,
        updated=0,
        unchanged=0,
        withdrawn=0,
        quarantined=0,
        error="",
    )
    session.add(run)
    await session.flush()
    target = FeedTarget(
        id=feed.id,
        process_id=feed.process_id,
        name=feed.name,
        url=feed.url,
        format=feed.format,
        field_map=dict(feed.field_map or {}),
        auth_header_name=feed.auth_header_name,
        auth_header_value=feed.auth_header_value,
        etag=feed.etag,
        last_modified=feed.last_modified,
        next_pages=tuple(_page_validators(feed.next_pages)),
    )
    return Claim(target, run.id, lease_until, now)


def _page_validators(stored: Any) -> list[tuple[str, str, str]]:
    """The stored list of [url, etag, last_modified], or nothing when it is not that."""
    if not isinstance(stored, list):
        return []
    pages = [tuple(p) for p in stored if isinstance(p, list) and len(p) == 3]
    if len(pages) != len(stored) or not all(isinstance(v, str) for p in pages for v in p):
        return []
    return cast(list[tuple[str, str, str]], pages)


async def extend_lease(
    session: AsyncSession, feed_id: int, ours: datetime, until: datetime
) -> bool:
    """Move our lease on; False if it is no longer ours (another node took the feed)."""
    hit = await session.scalar(
        update(Feed)
        .where(Feed.id == feed_id, Feed.lease_until == ours)
        .values(lease_until=until)
        .returning(Feed.id)
        .execution_options(synchronize_session=False)
    )
    return hit is not None


async def release(
    session: AsyncSession,
    feed_id: int,
    ours: datetime,
    now: datetime,
    *,
    validators: tuple[str, str, tuple[tuple[str, str, str], ...]] | None = None,
    not_before: datetime | None = None,
) -> Feed | None:
    """End our lease and schedule the next run; None if the lease is no longer ours.

    ``validators`` (ETag, Last-Modified, and those of the later pages) replace the stored
    ones; ``not_before`` pushes the next run out (a server that asked us to come back later).
    """
    values: dict[str, Any] = {"lease_until": None}
    if validators is not None:
        values["etag"], values["last_modified"], later = validators
        values["next_pages"] = [list(page) for page in later]
    hit = await session.scalar(
        update(Feed)
        .where(Feed.id == feed_id, Feed.lease_until == ours)
        .values(**values)
        .returning(Feed.id)
        .execution_options(synchronize_session=False)
    )
    if hit is None:
        return None
    feed = await session.scalar(
        select(Feed).where(Feed.id == feed_id).execution_options(populate_existing=True)
    )
    assert feed is not None
    if feed.interval_seconds is not None or feed.cron:
        due = next_run_at(feed.interval_seconds, feed.cron, now)
        feed.next_run_at = max(due, not_before) if not_before is not None else due
        await session.flush()
    return feed
