"""Pledge feeds over HTTP: the client, the incremental parsers, and the sync itself.

A run claims the feed's lease in a short transaction, then fetches every page and parses it
as it streams in, validating each record and appending it to a scratch file, minus the ones
stored already as they are (looked up a batch at a time): no transaction is open while the
network is slow, and memory holds a page, a batch and the ids seen, never the whole feed.
Then ONE write transaction applies the scratch file, so a run commits all its good changes
or none.
Timeouts, cut-off bodies, 5xx and 429 are retried with backoff (Retry-After honoured);
anything else ends the run with one clear error and the pledges untouched.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import csv
import email.utils
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, cast

import httpx
import msgspec
from msgspec.structs import astuple
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler import __version__, audit, metrics, webhook_events
from scheduler import feeds as feed_rules
from scheduler.clock import Clock
from scheduler.database import Database
from scheduler.errors import NotFound
from scheduler.feeds import Busy, Claim, FeedTarget
from scheduler.gc_pause import collector_paused
from scheduler.models import Feed, FeedRun, utc_now
from scheduler.pledge_writes import (
    Counts,
    Quarantined,
    RowForm,
    Stager,
    any_stored,
    apply_staged,
    enqueue_digest,
    prune_runs,
    quarantined_json,
    stored_hashes,
)
from scheduler.pledges import (
    BadRecord,
    FieldPaths,
    NotPlain,
    field_paths,
    plain_record_type,
    record_type,
    source_id_of,
    validate_fields,
    validate_plain,
)
from scheduler.pledges import validate_record as validate
from scheduler.settings import Settings

log = logging.getLogger("scheduler.feeds")

USER_AGENT = f"ForumScheduler/{__version__} (pledge feeds)"
JSON_TYPES = frozenset({"application/json", "text/json"})
CSV_TYPES = frozenset(
    {
        "text/csv",
        "application/csv",
        "text/plain",
        "application/octet-stream",
        "application/vnd.ms-excel",
    }
)
ITEM_KEYS = ("items", "data", "results", "pledges", "records")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_BACKOFF = 60.0
_MAX_ERROR = 2000


# --- Errors -------------------------------------------------------------------------------


class FeedError(Exception):
    """Ends a run; ``reason`` is what the run records for organizers."""

    def __init__(
        self, reason: str, *, http_status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.http_status = http_status
        self.retry_after = retry_after


class Retryable(FeedError):
    """A failure worth another try: a timeout, a dropped connection, 5xx, 429."""


class MalformedBody(ValueError):
    """The body is not the JSON or CSV it claims to be."""


class LeaseLost(Exception):
    """Another node took the feed over while this run was fetching."""


# --- The client (the one way out) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    allowed_hosts: frozenset[str]
    redirect_other_hosts: bool = False
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    max_bytes: int = 268_435_456
    max_record_bytes: int = 1_048_576
    max_pages: int = 10_000
    max_redirects: int = 5
    max_retries: int = 3
    retry_base: float = 1.0
    max_retry_after: float = 600.0

    @classmethod
    def from_settings(cls, s: Settings) -> FetchPolicy:
        return cls(
            allowed_hosts=feed_rules.parse_hosts(s.feeds_allowed_hosts),
            redirect_other_hosts=s.feeds_redirect_other_hosts,
            connect_timeout=float(s.feeds_connect_timeout_seconds),
            read_timeout=float(s.feeds_read_timeout_seconds),
            max_bytes=s.feeds_max_bytes,
            max_record_bytes=s.feeds_max_record_bytes,
            max_pages=s.feeds_max_pages,
            max_redirects=s.feeds_max_redirects,
            max_retries=s.feeds_max_retries,
            retry_base=s.feeds_retry_base_ms / 1000,
            max_retry_after=float(s.feeds_max_retry_after_seconds),
        )


class FeedClient:
    """Every request to a feed server goes through here: allow-list, redirects, caps.

    Redirects are followed by hand so that each hop is checked against the allow-list (and,
    unless ``redirect_other_hosts``, must stay on the same host); the auth header goes only
    to the host it was configured for. Proxies from the environment are ignored.
    """

    def __init__(
        self, policy: FetchPolicy, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.policy = policy
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=policy.connect_timeout,
                read=policy.read_timeout,
                write=policy.read_timeout,
                pool=policy.connect_timeout,
            ),
            follow_redirects=False,
            trust_env=False,
            transport=transport,
            headers={"User-Agent": USER_AGENT},
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    @asynccontextmanager
    async def get(
        self,
        url: str,
        headers: dict[str, str],
        auth: tuple[str, str] | None = None,
        auth_host: str | None = None,
    ) -> AsyncIterator[tuple[httpx.URL, httpx.Response]]:
        """The response (body not yet read) and the URL it finally came from.

        ``auth`` goes only to ``auth_host`` (default: the host of ``url``), never to a host
        a redirect or a next link leads to.
        """
        current = self._allowed(url)
        auth_host = (auth_host or current.host).lower()
        for _ in range(self.policy.max_redirects + 1):
            sent = dict(headers)
            if auth is not None and current.host.lower() == auth_host:
                sent[auth[0]] = auth[1]
            request = self._http.build_request("GET", current, headers=sent)
            try:
                response = await self._http.send(request, stream=True)
            except httpx.TimeoutException as exc:
                raise Retryable(f"timed out ({_kind(exc)}) on {current.host}") from None
            except httpx.TransportError as exc:
                raise Retryable(f"cannot reach {current.host}: {_kind(exc)}") from None
            location = response.headers.get("location")
            if response.status_code in _REDIRECTS and location:
                await response.aclose()
                current = self._redirect(current, location)
                continue
            try:
                yield current, response
            finally:
                await response.aclose()
            return
        raise FeedError(f"more than {self.policy.max_redirects} redirects")

    async def body(self, response: httpx.Response) -> AsyncIterator[bytes]:
        """The decoded body in chunks, cut off (FeedError) past ``max_bytes``."""
        cap = self.policy.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise FeedError(
                f"the body is {int(declared):,} bytes, more than feeds_max_bytes ({cap:,})"
            )
        size = 0
        try:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > cap:
                    raise FeedError(f"the body is larger than feeds_max_bytes ({cap:,} bytes)")
                yield chunk
        except httpx.TimeoutException as exc:
            raise Retryable(
                f"timed out reading the body after {size:,} bytes ({_kind(exc)})"
            ) from None
        except httpx.DecodingError as exc:
            raise FeedError(f"the body cannot be decompressed: {exc}") from None
        except httpx.TransportError as exc:
            raise Retryable(f"the body was cut off after {size:,} bytes ({_kind(exc)})") from None

    def _allowed(self, url: str) -> httpx.URL:
        try:
            return feed_rules.check_url(url, self.policy.allowed_hosts)
        except ValueError as exc:
            raise FeedError(f"refused to fetch {url[:200]}: {exc}") from None

    def _redirect(self, current: httpx.URL, location: str) -> httpx.URL:
        try:
            target = current.join(location.strip())
        except httpx.InvalidURL:
            raise FeedError(f"redirected to an unusable location {location[:200]!r}") from None
        if not feed_rules.same_origin(current, target) and not self.policy.redirect_other_hosts:
            raise FeedError(
                f"redirected from {current.host} to another host ({target.host}); refused "
                "(feeds_redirect_other_hosts is off)"
            )
        return self._allowed(str(target))


def _kind(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def retry_delay(attempt: int, base: float) -> float:
    """``base`` after the first failure, doubling each time, at most a minute."""
    delay: float = base * 2 ** max(attempt - 1, 0)
    return min(delay, _MAX_BACKOFF)


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date); None if absent."""
    if not value or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


# --- Incremental parsers (pure: fed text, give records) ------------------------------------

_WS = re.compile(r"[ \t\n\r]*")
_COMMA = re.compile(r"[ \t\n\r]*,[ \t\n\r]*")
_DECODER = json.JSONDecoder()
# Pages the plain record type may refuse in a run before it is no longer tried.
_PLAIN_REFUSALS = 3
# Remembered pages asked at once whether they changed (a few: the source is someone's).
_PROBES_AT_ONCE = 6

# Parser states for one JSON page.
_START, _KEY_OR_END, _KEY, _COLON, _VALUE, _AFTER_VALUE = range(6)
_FIRST, _ELEMENT, _AFTER_ELEMENT, _DONE = range(6, 10)


class JsonPageReader:
    """One JSON page, read as it arrives: each record is decoded as soon as it is complete.

    The page is an array of records, or an object holding them under one of ITEM_KEYS next
    to its paging (``next``, ``links.next``, or ``page`` with ``pages``/``total_pages``).
    Memory holds the unread tail of the text and one record at a time.

    Given a ``record_type`` (pledges.record_type), a page read whole has its records read
    straight into that type when they all fit (``typed`` says so; else they are read as
    usual and ``refused_type`` says so): the same values, at twice the speed. Given a
    ``plain_type`` too (pledges.plain_record_type), that is tried first (``plain`` says it
    took the page; ``refused_plain`` that it did not).
    """

    def __init__(
        self,
        max_record_chars: int = 1_048_576,
        record_type: type[Any] | None = None,
        plain_type: type[Any] | None = None,
    ) -> None:
        self._typed = msgspec.json.Decoder(list[record_type]) if record_type else None  # type: ignore[valid-type]
        self._plain = (
            msgspec.json.Decoder(list[plain_type]) if record_type and plain_type else None  # type: ignore[valid-type]
        )
        self.typed = False
        self.refused_type = False
        self.plain = False
        self.refused_plain = False
        self._buf = ""
        self._pos = 0
        self._dropped = 0
        self._state = _START
        self._key = ""
        self._top_array = False
        self._eof = False
        self._max = max_record_chars
        self.meta: dict[str, Any] = {}
        self.has_items = False

    def feed(self, text: str) -> list[Any]:
        if text:
            if self._pos > 65536:
                self._dropped += self._pos
                self._buf = self._buf[self._pos :]
                self._pos = 0
            self._buf += text
        return self._run()

    def read(self, text: str) -> list[Any]:
        """A whole page at once: the records ``feed(text)`` then ``close()`` give, faster.

        The array of records is decoded in one call when the page is no longer than the
        record cap (so no record can exceed it); anything the one call refuses is read
        record by record again, for the same error at the same place.
        """
        self._eof = True
        return self.feed(text) + self.close()

    def close(self) -> list[Any]:
        self._eof = True
        out = self._run()
        if self._state != _DONE:
            raise MalformedBody(f"the JSON ends early at character {self._at(self._pos)}")
        if not self.has_items:
            raise MalformedBody(
                "no list of records (expected an array, or an object with one of "
                f"{', '.join(ITEM_KEYS)}; found keys: {', '.join(list(self.meta)[:10]) or 'none'})"
            )
        return out

    def next_url(self, current: httpx.URL) -> str | None:
        """The next page, from a ``next`` link (relative to this page) or page numbers."""
        meta = self.meta
        links = meta.get("links")
        if "next" in meta or (isinstance(links, dict) and "next" in links):
            link = meta["next"] if "next" in meta else cast(dict[str, Any], links)["next"]
            if link is None or link == "":
                return None
            if not isinstance(link, str):
                raise MalformedBody(f"next: expected a URL, got {type(link).__name__}")
            return str(current.join(link.strip()))
        page = meta.get("page")
        total = next((meta[k] for k in ("pages", "total_pages", "last_page") if k in meta), None)
        if isinstance(page, int) and isinstance(total, int) and 0 < page < total:
            return str(current.copy_set_param("page", str(page + 1)))
        return None

    def _at(self, pos: int) -> int:
        return self._dropped + pos

    def _bad(self, pos: int, reason: str) -> MalformedBody:
        return MalformedBody(f"{reason} at character {self._at(pos):,}")

    def _decode(self, pos: int) -> tuple[Any, int] | None:
        """One JSON value at ``pos``, or None when it needs more text."""
        buf = self._buf
        try:
            value, end = _DECODER.raw_decode(buf, pos)
        except json.JSONDecodeError as exc:
            if self._eof:
                raise self._bad(exc.pos, exc.msg) from None
            if len(buf) - pos > self._max:
                raise self._bad(
                    pos, f"a record longer than {self._max:,} characters, or {exc.msg}"
                ) from None
            # An error well before the end of what we have cannot be cured by more text.
            if exc.pos < len(buf) - 64 and not exc.msg.startswith("Unterminated string"):
                raise self._bad(exc.pos, exc.msg) from None
            return None
        if end == len(buf) and not self._eof and type(value) in (int, float):
            return None  # a number may go on in the next chunk
        if end - pos > self._max:
            raise self._bad(pos, f"a record longer than {self._max:,} characters")
        return value, end

    def _run(self) -> list[Any]:
        out: list[Any] = []
        while True:
            buf = self._buf
            pos = _WS.match(buf, self._pos).end()  # type: ignore[union-attr]
            self._pos = pos
            if pos >= len(buf):
                return out
            ch = buf[pos]
            state = self._state
            if state in (_FIRST, _ELEMENT):
                if ch == "]" and state == _FIRST:
                    self._end_array(pos)
                    continue
                # Record after record while they are separated by commas alone.
                while True:
                    got = self._decode(pos)
                    if got is None:
                        self._pos = pos
                        self._state = _ELEMENT
                        return out
                    out.append(got[0])
                    comma = _COMMA.match(buf, got[1])
                    if comma is None:
                        break
                    pos = comma.end()
                    if pos >= len(buf):
                        self._pos = pos
                        self._state = _ELEMENT
                        return out
                self._pos = got[1]
                self._state = _AFTER_ELEMENT
            elif state == _AFTER_ELEMENT:
                if ch == ",":
                    self._state = _ELEMENT
                elif ch == "]":
                    self._end_array(pos)
                    continue
                else:
                    raise self._bad(pos, "expected ',' or ']' between records")
                self._pos = pos + 1
            elif state == _START:
                if ch == "[":
                    self._top_array = self.has_items = True
                    if self._whole_array(pos, out):
                        continue
                    self._state = _FIRST
                elif ch == "{":
                    self._state = _KEY_OR_END
                elif ch != "\ufeff":
                    raise self._bad(pos, "expected a JSON object or array")
                self._pos = pos + 1
            elif state in (_KEY_OR_END, _KEY):
                if ch == "}" and state == _KEY_OR_END:
                    self._state = _DONE
                    self._pos = pos + 1
                    continue
                if ch != '"':
                    raise self._bad(pos, "expected a key")
                got = self._decode(pos)
                if got is None:
                    return out
                self._key, self._pos = got
                self._state = _COLON
            elif state == _COLON:
                if ch != ":":
                    raise self._bad(pos, "expected ':'")
                self._state = _VALUE
                self._pos = pos + 1
            elif state == _VALUE:
                if ch == "[" and self._key in ITEM_KEYS and not self.has_items:
                    self.has_items = True
                    if self._whole_array(pos, out):
                        continue
                    self._state = _FIRST
                    self._pos = pos + 1
                    continue
                got = self._decode(pos)
                if got is None:
                    return out
                self.meta[self._key] = got[0]
                self._pos = got[1]
                self._state = _AFTER_VALUE
            elif state == _AFTER_VALUE:
                if ch == ",":
                    self._state = _KEY
                elif ch == "}":
                    self._state = _DONE
                else:
                    raise self._bad(pos, "expected ',' or '}'")
                self._pos = pos + 1
            else:
                raise self._bad(pos, "unexpected text after the end of the JSON")

    def _whole_array(self, pos: int, out: list[Any]) -> bool:
        """The array of records at ``pos`` in one call, when all of it is here and short."""
        buf = self._buf
        if not self._eof or len(buf) - pos > self._max:
            return False
        if self._typed is not None:
            # Most pages end with their records: if the text up to the last "]" is one
            # array, it is this one (a JSON value has one end), else read it as usual.
            end = buf.rfind("]")
            if self._plain is not None:
                try:
                    out.extend(self._plain.decode(buf[pos : end + 1]))
                except msgspec.DecodeError:  # some record not in the common form
                    self.refused_plain = True
                else:
                    self.typed = self.plain = True
                    self._end_array(end)
                    return True
            try:
                out.extend(self._typed.decode(buf[pos : end + 1]))
            except msgspec.DecodeError:  # malformed here, or a record of another shape
                self.refused_type = True
            else:
                self.typed = True
                self._end_array(end)
                return True
        try:
            records, end = _DECODER.raw_decode(buf, pos)
        except json.JSONDecodeError:
            return False  # read record by record, for the error message
        out.extend(records)
        self._end_array(end - 1)
        return True

    def _end_array(self, pos: int) -> None:
        self._state = _DONE if self._top_array else _AFTER_VALUE
        self._pos = pos + 1


@dataclass(frozen=True, slots=True)
class BadRow:
    """A CSV row that does not fit the header."""

    reason: str
    values: dict[str, str]


class CsvReader:
    """A CSV body read as it arrives: rows (as dicts keyed by the header) once complete.

    Only complete records reach the csv module: a line ends a record when the quotes seen
    so far balance, so a quoted field may span lines and chunks. A record longer than
    ``max_record_chars`` is refused however the body arrives: whole in one chunk, or
    unfinished (a line that never ends, a quote never closed) as soon as it passes the cap,
    so memory holds one unfinished record at most.
    """

    def __init__(self, max_record_chars: int = 1_048_576) -> None:
        self._partial = ""
        self._pending: list[str] = []
        self._pending_chars = 0
        self._quoted = False
        self._max = max_record_chars
        self.header: list[str] | None = None

    def feed(self, text: str) -> list[dict[str, str] | BadRow]:
        if not text:
            return []
        joined = self._partial + text
        lines = joined.split("\n")
        self._partial = lines.pop()
        if not self._quoted and not self._pending and '"' not in joined:
            # The common case: no quoting anywhere in this chunk.
            self._check(max(len(self._partial), max(map(len, lines), default=0)))
            return self._rows(lines)
        complete: list[str] = []
        for line in lines:
            if line.count('"') % 2:
                self._quoted = not self._quoted
            if self._quoted:
                self._pending.append(line + "\n")
                self._pending_chars += len(line) + 1
            elif self._pending:
                self._check(self._pending_chars + len(line))
                self._pending.append(line)
                complete.extend(self._pending)
                self._pending = []
                self._pending_chars = 0
            else:
                self._check(len(line))
                complete.append(line)
        self._check(self._pending_chars + len(self._partial))
        return self._rows(complete)

    def _check(self, length: int) -> None:
        if length > self._max:
            raise MalformedBody(
                f"a record longer than {self._max:,} characters (feeds_max_record_bytes)"
            )

    def close(self) -> list[dict[str, str] | BadRow]:
        rows = self.feed("\n") if self._partial else []
        if self._quoted or self._pending:
            raise MalformedBody("a quoted field is never closed (the CSV ends early)")
        if self.header is None:
            raise MalformedBody("no header row")
        return rows

    def _rows(self, lines: list[str]) -> list[dict[str, str] | BadRow]:
        out: list[dict[str, str] | BadRow] = []
        try:
            reader = csv.reader(lines, strict=True)
            for row in reader:
                if not row or row == [""]:
                    continue
                if self.header is None:
                    self.header = [name.strip() for name in row]
                    duplicates = {n for n in self.header if self.header.count(n) > 1}
                    if duplicates:
                        raise MalformedBody(f"the header names {sorted(duplicates)[0]!r} twice")
                    continue
                if len(row) != len(self.header):
                    values = dict(zip(self.header, row, strict=False))
                    reason = f"expected {len(self.header)} fields, got {len(row)}"
                    out.append(BadRow(reason, values))
                    continue
                out.append(dict(zip(self.header, row, strict=True)))
        except csv.Error as exc:
            raise MalformedBody(f"not valid CSV: {exc}") from None
        return out


# --- Fetching -----------------------------------------------------------------------------


@dataclass
class Progress:
    """What a run has done so far, for a progress line."""

    feed: str
    phase: str = "fetch"
    pages: int = 0
    records: int = 0
    quarantined: int = 0
    bytes: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


ProgressFn = Callable[[Progress], None]


# A page after the first, as last read: its URL, ETag and Last-Modified.
PageValidators = tuple[str, str, str]
# Beyond this many pages, a feed is read again in full each time (no validators kept).
MAX_PAGES_REMEMBERED = 1000


@dataclass(frozen=True, slots=True)
class Fetched:
    not_modified: bool
    http_status: int | None
    etag: str = ""
    last_modified: str = ""
    pages: int = 0
    # Validators of the pages after the first (when every page had one).
    next_pages: tuple[PageValidators, ...] = ()


@dataclass(frozen=True, slots=True)
class _Page:
    not_modified: bool
    status: int
    etag: str = ""
    last_modified: str = ""
    next_url: str | None = None


class Fetcher:
    """Reads every page of one feed into a Stager, with retries per page."""

    def __init__(
        self,
        client: FeedClient,
        target: FeedTarget,
        stager: Stager,
        now: datetime,
        *,
        progress: Progress | None = None,
        on_progress: ProgressFn | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.client = client
        self.policy = client.policy
        self.target = target
        self.stager = stager
        self.now = now
        self.progress = progress or Progress(target.name)
        self.on_progress = on_progress
        self.sleep = sleep
        self.paths: FieldPaths = field_paths(target.field_map, nested=target.format == "json")
        # Records read straight into a type, until a page does not fit it (then, as usual);
        # first into the plain one, until it has refused a few pages.
        self._record_type = record_type(self.paths) if target.format == "json" else None
        self._plain_type = plain_record_type(self.paths) if self._record_type else None
        self._plain_refusals = 0
        self._auth = (
            (target.auth_header_name, target.auth_header_value) if target.auth_header_name else None
        )
        try:
            self._auth_host: str | None = httpx.URL(target.url).host  # never any other host
        except httpx.InvalidURL:
            self._auth_host = None  # refused by the client anyway
        self._reported = 0.0

    async def fetch(self) -> Fetched:
        """Every page, read and staged; or 304 when the server says nothing changed.

        A feed of several pages is unchanged when every page is: the first page is asked
        with its validators, and if it answers 304, so is each later page remembered from
        the last run (each page's body holds the link to the next, so unchanged pages mean
        an unchanged chain), a few at a time. The first later page that has changed ends
        the asking, and the feed is read again in full.
        """
        return await self._read_all(bool(self.target.etag or self.target.last_modified))

    async def _later_pages_unchanged(self) -> bool:
        """Whether every remembered page after the first answers 304.

        The pages are asked _PROBES_AT_ONCE at a time (a hundred pages one after the other
        cost a round trip each), and judged in page order: the first that is not a 304
        decides, and the asking of the pages after it (a retry's wait too) is given up.

        A page the server no longer has (a 4xx: gone, not found, refused) is not known to
        be unchanged: the feed is read again from page 1, whose links lead wherever the
        pages are now (a remembered link may be a cursor the server has since let go).
        Trouble that passes (timeouts, 5xx, 429) fails the run as on any page.
        """
        pages = list(enumerate(self.target.next_pages, start=2))
        for at in range(0, len(pages), _PROBES_AT_ONCE):
            probes = [
                asyncio.ensure_future(
                    self._with_retries(url, _conditional(etag, modified), number, self._probe)
                )
                for number, (url, etag, modified) in pages[at : at + _PROBES_AT_ONCE]
            ]
            try:
                for probe in probes:  # as soon as a page decides, the later ones are let go
                    try:
                        page = await probe
                    except FeedError as exc:
                        status = exc.http_status or 0
                        if not 400 <= status < 500 or status == 429 or exc.retry_after is not None:
                            raise  # trouble that a full read would meet again
                        log.info("feed %s: %s; reading it in full", self.target.name, exc.reason)
                        return False
                    if not page.not_modified:
                        return False
            finally:
                for probe in probes:
                    probe.cancel()
                await asyncio.gather(*probes, return_exceptions=True)
        return True

    async def _read_all(self, conditional: bool) -> Fetched:
        url: str | None = self.target.url
        seen: set[str] = set()
        first: _Page | None = None
        later: list[PageValidators] = []
        while url is not None:
            number = len(seen) + 1
            if number > self.policy.max_pages:
                raise FeedError(f"more than {self.policy.max_pages:,} pages (feeds_max_pages)")
            if url in seen:
                raise FeedError(f"page {number}: the next link leads back to {url[:200]}")
            seen.add(url)
            headers: dict[str, str] = {}
            if first is None and conditional:
                headers = _conditional(self.target.etag, self.target.last_modified)
            page = await self._with_retries(url, headers, number)
            if page.not_modified:
                if first is None and headers:
                    if await self._later_pages_unchanged():
                        return Fetched(True, 304)
                    return await self._read_all(conditional=False)  # changed further on
                raise FeedError(f"page {number}: 304 Not Modified to a plain request")
            if first is None:
                first = page
            else:
                later.append((url, page.etag[:500], page.last_modified[:100]))
            self.progress.pages = number
            self._report(force=True)
            url = page.next_url
        assert first is not None
        pages = len(seen)
        every_page = [("", first.etag, first.last_modified), *later]
        if pages > 1 and (
            pages > MAX_PAGES_REMEMBERED or not all(etag or lm for _, etag, lm in every_page)
        ):
            # Some page cannot be asked "changed?": the next run reads every page again.
            return Fetched(False, first.status, "", "", pages)
        return Fetched(
            False,
            first.status,
            first.etag[:500],
            first.last_modified[:100],
            pages,
            tuple(later),
        )

    async def _with_retries(
        self,
        url: str,
        headers: dict[str, str],
        number: int,
        read: Callable[[str, dict[str, str]], Awaitable[_Page]] | None = None,
    ) -> _Page:
        """``read`` (default: the whole page, staged) with retries on trouble that passes."""
        read = read or self._page
        attempt = 0
        while True:
            attempt += 1
            mark = await self.stager.mark()
            try:
                return await read(url, headers)
            except Retryable as exc:
                self.stager.rewind(mark)
                reason = f"page {number}: {exc.reason}"
                if attempt > self.policy.max_retries:
                    raise FeedError(
                        f"{reason} (gave up after {attempt} attempts)",
                        http_status=exc.http_status,
                        retry_after=exc.retry_after,
                    ) from None
                wait = exc.retry_after
                if wait is not None and wait > self.policy.max_retry_after:
                    raise FeedError(
                        f"{reason}; the server asks to wait {wait:.0f} s, longer than "
                        f"feeds_max_retry_after_seconds ({self.policy.max_retry_after:.0f})",
                        http_status=exc.http_status,
                        retry_after=wait,
                    ) from None
                if wait is None:
                    wait = retry_delay(attempt, self.policy.retry_base)
                log.info("feed %s: %s; retrying in %.2f s", self.target.name, reason, wait)
                await self.sleep(wait)
            except FeedError as exc:
                raise FeedError(
                    f"page {number}: {exc.reason}",
                    http_status=exc.http_status,
                    retry_after=exc.retry_after,
                ) from None

    async def _probe(self, url: str, headers: dict[str, str]) -> _Page:
        """Whether the page changed (304 or 200), its body left unread."""
        async with self.client.get(url, headers, self._auth, self._auth_host) as (_, response):
            if response.status_code == 304:
                return _Page(True, 304)
            _check_status(response)
            return _Page(False, response.status_code)

    async def _page(self, url: str, headers: dict[str, str]) -> _Page:
        got = self.client.get(url, headers, self._auth, self._auth_host)
        async with got as (final_url, response):
            status = response.status_code
            if status == 304:
                return _Page(True, status)
            _check_status(response)
            decoder = self._decoder(response)
            reader: JsonPageReader | CsvReader
            if self.target.format == "json":
                reader = JsonPageReader(
                    self.policy.max_record_bytes, self._record_type, self._plain_type
                )
            else:
                reader = CsvReader(self.policy.max_record_bytes)
            size = 0
            # A JSON page no longer than the record cap is read whole, in one go.
            whole: list[str] | None = [] if isinstance(reader, JsonPageReader) else None
            held = 0
            try:
                async for chunk in self.client.body(response):
                    size += len(chunk)
                    self.progress.bytes += len(chunk)
                    text = decoder.decode(chunk)
                    if whole is not None:
                        whole.append(text)
                        held += len(text)
                        if held <= self.policy.max_record_bytes:
                            continue
                        text, whole = "".join(whole), None
                    await self._take(partial(reader.feed, text))
                if size == 0:
                    raise FeedError("the body is empty", http_status=status)
                tail = decoder.decode(b"", final=True)
                if whole is not None and isinstance(reader, JsonPageReader):
                    page = "".join(whole) + tail
                    records = self._read_whole(reader, page)
                    if reader.refused_type:
                        self._record_type = self._plain_type = None

                    def untyped() -> list[Any]:
                        return JsonPageReader(self.policy.max_record_bytes).read(page)

                    if records is None:
                        await self._after_taking()
                    else:
                        if reader.plain or reader.refused_plain:
                            self._plain_refused()
                        taken = records
                        await self._take(lambda: taken, untyped if reader.typed else None)
                else:
                    await self._take(partial(reader.feed, tail))
                    await self._take(reader.close)
                next_url = (
                    reader.next_url(final_url) if isinstance(reader, JsonPageReader) else None
                )
            except MalformedBody as exc:
                kind = "JSON" if self.target.format == "json" else "CSV"
                raise FeedError(f"malformed {kind}: {exc}", http_status=status) from None
            except UnicodeDecodeError as exc:
                raise FeedError(
                    f"not valid {exc.encoding} text ({exc.reason})", http_status=status
                ) from None
            return _Page(
                False,
                status,
                response.headers.get("etag", ""),
                response.headers.get("last-modified", ""),
                next_url,
            )

    def _decoder(self, response: httpx.Response) -> codecs.IncrementalDecoder:
        header = response.headers.get("content-type", "")
        media = header.split(";", 1)[0].strip().lower()
        if self.target.format == "json":
            ok = not media or media in JSON_TYPES or media.endswith("+json")
        else:
            ok = not media or media in CSV_TYPES
        if not ok:
            raise FeedError(
                f"expected {self.target.format.upper()}, got content type {media!r}",
                http_status=response.status_code,
            )
        charset = "utf-8"
        for param in header.split(";")[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "charset" and value.strip():
                charset = value.strip().strip('"').lower()
        try:
            info = codecs.lookup(charset)
        except LookupError:
            raise FeedError(f"unknown charset {charset!r}") from None
        if info.name == "utf-8":
            info = codecs.lookup("utf-8-sig")
        return info.incrementaldecoder("strict")

    def _read_whole(self, reader: JsonPageReader, page: str) -> list[Any] | None:
        """A whole page's records; None when they were all taken at once (read into the
        plain type, validated and staged, in one pause of the collector)."""
        with collector_paused():
            records = reader.read(page)
            if reader.plain and self._take_plain(records):
                return None
            return records

    def _take_plain(self, rows: list[Any]) -> bool:
        """A page read into the plain type, validated at once and staged; False when some
        record needs the record-by-record checks (then nothing of it is staged)."""
        try:
            records = validate_plain(rows, self.now)
        except NotPlain:
            return False
        self.stager.add_all(records)
        return True

    def _plain_refused(self) -> None:
        """A page not all plain: after a few, a feed is not read into the plain type."""
        self._plain_refusals += 1
        if self._plain_refusals >= _PLAIN_REFUSALS:
            self._plain_type = None

    async def _after_taking(self) -> None:
        if self.stager.full:
            await self.stager.flush()
        self._report()

    async def _take(
        self, read: Callable[[], list[Any]], untyped: Callable[[], list[Any]] | None = None
    ) -> None:
        """Validate and stage the records ``read`` gives, read and checked in one pause of
        the collector; ``untyped``: the same page read as plain JSON objects (given when
        the records were read into the record type)."""
        with collector_paused():
            taken = self._stage(read(), untyped)
        if taken:
            await self._after_taking()

    def _stage(self, rows: list[Any], untyped: Callable[[], list[Any]] | None) -> bool:
        """``_take``'s checks: whether there were any records."""
        stager = self.stager
        now = self.now
        paths = self.paths
        start = 0
        if untyped is not None:
            for start, row in enumerate(rows):  # noqa: B007 (where the plain reading goes on)
                try:
                    stager.add(validate_fields(astuple(row), now))
                except BadRecord:
                    # A quarantined record keeps the whole object it came as (unknown fields
                    # too): the rest of this page, and the pages after, are read as usual.
                    self._record_type = None
                    rows = untyped()
                    break
            else:
                start = len(rows)
        for raw in rows[start:] if start else rows:
            if isinstance(raw, BadRow):
                stager.add_bad(
                    Quarantined(
                        stager.records + 1,
                        source_id_of(raw.values, paths),
                        raw.reason,
                        quarantined_json(raw.values),
                    )
                )
                continue
            try:
                stager.add(validate(raw, paths, now))
            except BadRecord as exc:
                position = stager.records + 1
                stager.add_bad(
                    Quarantined(position, exc.source_id, exc.reason, quarantined_json(raw))
                )
        return bool(rows)

    def _report(self, force: bool = False) -> None:
        self.progress.records = self.stager.records
        self.progress.quarantined = self.stager.bad
        if self.on_progress is None:
            return
        now = time.monotonic()
        if force or now - self._reported >= 0.2:
            self._reported = now
            self.on_progress(self.progress)


def _check_status(response: httpx.Response) -> None:
    """Retryable for trouble that passes (429, 5xx), FeedError for any other status but 200."""
    status = response.status_code
    if status in (429, 503):
        wait = retry_after_seconds(response.headers.get("retry-after"), utc_now())
        raise Retryable(f"HTTP {status}", http_status=status, retry_after=wait)
    if status >= 500:
        raise Retryable(f"HTTP {status}", http_status=status)
    if status != 200:
        raise FeedError(f"HTTP {status} {response.reason_phrase}".rstrip(), http_status=status)


def _conditional(etag: str, last_modified: str) -> dict[str, str]:
    """The headers that ask a server whether a page changed since it gave these."""
    headers = {}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    return headers


# --- The runner (owns its transactions) -----------------------------------------------------


@dataclass
class _Lease:
    until: datetime
    lost: bool = False


class FeedRunner:
    """Runs syncs, by hand or on the clock; each run happens once across all nodes.

    The clock keeps one job per enabled feed at the feed's ``next_run_at``; the rows are
    the truth, so the jobs are rebuilt at start and re-read every ``feeds_reconcile_seconds``
    (another node may have changed or run a feed).
    """

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        client_factory: Callable[[], FeedClient] | None = None,
        after_commit: Callable[[], None] | None = None,
        after_change: Callable[[int], Awaitable[None]] | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        """``after_commit``: mail or webhooks are waiting. ``after_change``: a run changed
        the pledges of this process (committed); never fails the run."""
        self.db = db
        self.settings = settings
        self.policy = FetchPolicy.from_settings(settings)
        self._client_factory = client_factory or (lambda: FeedClient(self.policy))
        self._after_commit = after_commit
        self._after_change = after_change
        self._sleep = sleep
        self._clock: Clock | None = None
        self._running: set[int] = set()

    async def run(
        self, feed_id: int, *, manual: bool = True, on_progress: ProgressFn | None = None
    ) -> FeedRun | None:
        """One run of one feed; None when it was not this node's to run (scheduled runs).

        By hand (``manual``) the feed runs whether due or enabled, but never twice at
        once: NotFound for an unknown feed, Busy while another run holds the lease. A run
        by hand is the caller's (an organizer's request, the CLI) in the audit trail; one on
        the schedule is feed-sync's.
        """
        if manual:
            return await self._run(feed_id, manual, on_progress)
        with audit.acting(audit.FEED_SYNC):
            return await self._run(feed_id, manual, on_progress)

    async def _run(
        self, feed_id: int, manual: bool, on_progress: ProgressFn | None
    ) -> FeedRun | None:
        s = self.settings
        now = utc_now()
        async with self.db.writer.begin() as session:
            claim = await feed_rules.claim(
                session, feed_id, now, s.feeds_lease_seconds, due_only=not manual
            )
            if claim is None and manual:
                if await session.get(Feed, feed_id) is None:
                    raise NotFound(f"no feed {feed_id}")
                raise Busy(f"feed {feed_id} is being synced right now")
        if claim is None:
            return None
        progress = Progress(claim.target.name)
        lease = _Lease(claim.lease_until)
        feed_id = claim.target.id

        stored: bool | None = None  # whether the feed has pledges to compare with

        async def known(source_ids: list[str]) -> dict[str, str]:
            nonlocal stored
            if stored is False:
                return {}  # a first sync: nothing to look up
            async with self.db.reader() as session:
                if stored is None:
                    stored = await any_stored(session, feed_id)
                    if not stored:
                        return {}
                return await stored_hashes(session, feed_id, source_ids)

        async def known_to_have_pledges() -> bool:
            async with self.db.reader() as session:
                return await any_stored(session, feed_id)

        form = RowForm(self.db.writer_engine.dialect, claim.target, claim.started_at)
        stager = Stager(s.data_dir / "feeds", s.feeds_batch_size, form, known)
        try:
            try:
                fetched = await self._fetch(claim, lease, stager, progress, on_progress)
            except TimeoutError:
                raise FeedError(
                    f"the run took longer than {s.feeds_run_timeout_seconds} s "
                    "(feeds_run_timeout_seconds)"
                ) from None
            if lease.lost:
                raise LeaseLost
            if fetched.not_modified:
                return await self._finish(claim, lease, progress, fetched, None)
            if stager.records == 0 and await known_to_have_pledges():
                # A source that suddenly sends nothing is far more often broken than
                # emptied: withdrawing every pledge would empty the dashboards.
                raise FeedError(
                    "the feed sent no records at all: its pledges are kept, none withdrawn "
                    "(if the source is empty on purpose, disable or delete the feed)",
                    http_status=fetched.http_status,
                )
            progress.phase = "apply"
            if on_progress is not None:
                on_progress(progress)
            return await self._finish(claim, lease, progress, fetched, stager)
        except FeedError as exc:
            return await self._fail(
                claim, lease, progress, exc.reason, exc.http_status, exc.retry_after
            )
        except LeaseLost:
            return await self._fail(
                claim, lease, progress, "another node took the feed over (lease lost)", None, None
            )
        except Exception as exc:
            log.exception("feed %s: run %s failed", claim.target.name, claim.run_id)
            return await self._fail(claim, lease, progress, f"internal error: {exc!r}", None, None)
        finally:
            stager.close()

    async def _fetch(
        self,
        claim: Claim,
        lease: _Lease,
        stager: Stager,
        progress: Progress,
        on_progress: ProgressFn | None,
    ) -> Fetched:
        heartbeat = asyncio.ensure_future(self._heartbeat(claim.target.id, lease))
        client = self._client_factory()
        try:
            async with asyncio.timeout(self.settings.feeds_run_timeout_seconds):
                fetcher = Fetcher(
                    client,
                    claim.target,
                    stager,
                    claim.started_at,
                    progress=progress,
                    on_progress=on_progress,
                    sleep=self._sleep,
                )
                return await fetcher.fetch()
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await client.aclose()

    async def _heartbeat(self, feed_id: int, lease: _Lease) -> None:
        """Renew the lease while the fetch lasts; note when another node has taken it."""
        seconds = self.settings.feeds_lease_seconds
        while True:
            await asyncio.sleep(max(seconds / 3, 0.5))
            until = utc_now() + timedelta(seconds=seconds)
            try:
                async with self.db.writer.begin() as session:
                    kept = await feed_rules.extend_lease(session, feed_id, lease.until, until)
            except Exception:
                log.exception("feed %s: cannot renew the lease", feed_id)
                continue
            if not kept:
                lease.lost = True
                return
            lease.until = until

    async def _finish(
        self,
        claim: Claim,
        lease: _Lease,
        progress: Progress,
        fetched: Fetched,
        stager: Stager | None,
    ) -> FeedRun:
        target = claim.target
        digests = 0
        async with self.db.writer.begin() as session:
            # First, that the lease is still ours (on PostgreSQL this also locks the row), and
            # a full lease for the writing. Until this commits, the stored lease is still
            # ``lease.until``: what _fail releases if the writing fails.
            until = utc_now() + timedelta(seconds=self.settings.feeds_lease_seconds)
            if not await feed_rules.extend_lease(session, target.id, lease.until, until):
                raise LeaseLost
            counts = Counts()
            if stager is not None:
                counts = await apply_staged(
                    session,
                    target,
                    claim.run_id,
                    stager,
                    claim.started_at,
                    quarantine_limit=self.settings.feeds_quarantine_limit,
                )
            finished = utc_now()
            run = await session.get(FeedRun, claim.run_id)
            assert run is not None
            run.outcome = "not_modified" if fetched.not_modified else "success"
            run.http_status = fetched.http_status
            run.new, run.updated, run.unchanged = counts.new, counts.updated, counts.unchanged
            run.withdrawn, run.quarantined = counts.withdrawn, counts.quarantined
            run.error = counts.note
            run.finished_at = finished
            run.duration_ms = int(progress.seconds * 1000)
            validators = (
                None
                if fetched.not_modified
                else (fetched.etag, fetched.last_modified, fetched.next_pages)
            )
            await feed_rules.release(session, target.id, until, finished, validators=validators)
            await prune_runs(session, target.id, self.settings.feeds_keep_runs)
            record_run(session, target, run)
            if counts.changed:
                digests = await enqueue_digest(
                    session, target, run, counts, self.settings.public_base_url
                )
            digests += await self._announce(session, target, run, finished)
        if digests and self._after_commit is not None:
            self._after_commit()
        if counts.changed and self._after_change is not None:
            try:
                await self._after_change(target.process_id)
            except Exception:
                log.exception("feed %s: after the run, the change hook failed", target.name)
        metrics.feed_runs.inc(outcome=run.outcome)
        return run

    async def _fail(
        self,
        claim: Claim,
        lease: _Lease,
        progress: Progress,
        reason: str,
        http_status: int | None,
        retry_after: float | None,
    ) -> FeedRun:
        log.warning("feed %s: run %s failed: %s", claim.target.name, claim.run_id, reason)
        async with self.db.writer.begin() as session:
            finished = utc_now()
            run = await session.get(FeedRun, claim.run_id)
            assert run is not None
            run.outcome = "failed"
            run.error = reason[:_MAX_ERROR]
            run.http_status = http_status
            run.finished_at = finished
            run.duration_ms = int(progress.seconds * 1000)
            not_before = finished + timedelta(seconds=retry_after) if retry_after else None
            await feed_rules.release(
                session, claim.target.id, lease.until, finished, not_before=not_before
            )
            await prune_runs(session, claim.target.id, self.settings.feeds_keep_runs)
            record_run(session, claim.target, run)
            announced = await self._announce(session, claim.target, run, finished)
        if announced and self._after_commit is not None:
            self._after_commit()
        metrics.feed_runs.inc(outcome=run.outcome)
        return run

    @staticmethod
    async def _announce(
        session: AsyncSession, target: FeedTarget, run: FeedRun, now: datetime
    ) -> int:
        """``feed.run_finished`` to the process's webhooks, with the run's outcome."""
        finished = webhook_events.feed_run_finished(target.process_id, target.name, run)
        return await webhook_events.emit(session, [finished], now)

    # --- On the clock ---------------------------------------------------------------------

    def schedule(self, clock: Clock) -> None:
        """Rebuild the feeds' jobs from the rows now, and again every reconcile interval."""
        self._clock = clock
        clock.scheduler.add_job(
            self.reconcile,
            "interval",
            seconds=self.settings.feeds_reconcile_seconds,
            id="feeds-reconcile",
            replace_existing=True,
            next_run_time=utc_now(),
        )

    async def reconcile(self) -> None:
        """One job per enabled feed, at its next_run_at; no job for any other feed."""
        if self._clock is None:
            return
        async with self.db.reader() as session:
            rows = (
                await session.execute(
                    select(Feed.id, Feed.enabled, Feed.next_run_at, Feed.lease_until)
                )
            ).all()
        wanted = {f"feed-{r.id}": r for r in rows if r.enabled and r.next_run_at is not None}
        scheduler = self._clock.scheduler
        for job in scheduler.get_jobs():
            if str(job.id).startswith("feed-") and job.id not in wanted:
                job.remove()
        now = utc_now()
        for row in wanted.values():
            self._plan(row.id, _due_time(row.next_run_at, row.lease_until, now))

    async def feed_changed(self, feed_id: int) -> None:
        """Re-plan one feed's job after a change committed on this node."""
        if self._clock is None:
            return
        async with self.db.reader() as session:
            row = (
                await session.execute(
                    select(Feed.enabled, Feed.next_run_at, Feed.lease_until).where(
                        Feed.id == feed_id
                    )
                )
            ).first()
        job_id = f"feed-{feed_id}"
        if row is None or not row.enabled or row.next_run_at is None:
            if self._clock.scheduler.get_job(job_id) is not None:
                self._clock.scheduler.remove_job(job_id)
            return
        self._plan(feed_id, _due_time(row.next_run_at, row.lease_until, utc_now()))

    def _plan(self, feed_id: int, when: datetime) -> None:
        if self._clock is None or feed_id in self._running:
            return
        scheduler = self._clock.scheduler
        job_id = f"feed-{feed_id}"
        job = scheduler.get_job(job_id)
        if job is not None and job.next_run_time == when:
            return
        scheduler.add_job(
            self._due, "date", run_date=when, args=[feed_id], id=job_id, replace_existing=True
        )

    async def _due(self, feed_id: int) -> None:
        self._running.add(feed_id)
        try:
            await self.run(feed_id, manual=False)
        except Exception:
            log.exception("feed %s: scheduled run failed", feed_id)
        finally:
            self._running.discard(feed_id)
        try:
            await self.feed_changed(feed_id)
        except Exception:
            log.exception("feed %s: cannot plan the next run", feed_id)


def record_run(session: AsyncSession, target: FeedTarget, run: FeedRun) -> None:
    """One audit entry per run: its pledges are too many to list (the counts say it all)."""
    audit.record(
        session,
        action="feed.run",
        entity_type="feed",
        entity_id=target.id,
        process_id=target.process_id,
        after={
            "run_id": run.id,
            "outcome": run.outcome,
            "http_status": run.http_status,
            "new": run.new,
            "updated": run.updated,
            "unchanged": run.unchanged,
            "withdrawn": run.withdrawn,
            "quarantined": run.quarantined,
            "error": run.error[:500],
        },
    )


def _due_time(next_run_at: datetime, lease_until: datetime | None, now: datetime) -> datetime:
    """When to try: the next run time, or when another node's lease ends if it is running."""
    when = next_run_at
    if lease_until is not None and lease_until > now and when <= lease_until:
        when = lease_until + timedelta(seconds=1)
    return max(when, now)
