"""Turns one outbox row into a MIME message: text and HTML parts, ICS where it fits.

Pure: no database, no network, ``now`` passed in. Texts come from
``mail_templates/messages.toml`` in the recipient's language (English if unknown), times are
shown with Babel in the recipient's language and time zone, plus the event's local time when
its zone differs. Names, subjects and titles are flattened to one line before they reach a
header, and addresses go through ``email.headerregistry.Address``, so no input can add a
header.
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime as rfc2822_date
from email.utils import parseaddr
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import babel.dates
import babel.numbers
from babel import Locale, UnknownLocaleError
from jinja2 import Environment, FileSystemLoader, StrictUndefined, Template, select_autoescape

from scheduler.calendars import CalendarEntry, build_calendar
from scheduler.models import Event, Notification
from scheduler.timezones import UnknownTimeZone, zone

TEMPLATES_DIR = Path(__file__).resolve().parent / "mail_templates"
KINDS = (
    "registration_confirm",
    "registration_confirmed",
    "waitlisted",
    "promoted",
    "approval_pending",
    "approved",
    "rejected",
    "cancelled",
    "hold_expired",
    "manage_link",
    "speaker_selected",
    "speaker_declined",
    "event_reminder",
    "speaker_reminder",
    "organizer_reminder",
    "milestone_reminder",
    "reminder_digest",
    "event_changed",
    "event_cancelled",
    "event_postponed",
    "subscription_confirm",
    "pledge_digest",
)
DEFAULT_LANGUAGE = "en"
RTL_LANGUAGES = frozenset({"ar", "fa", "he", "ur"})
# Kinds that may still wait for the double opt-in click; the others never show the button.
_CONFIRMABLE = frozenset(
    {"registration_confirm", "promoted", "approved", "manage_link", "subscription_confirm"}
)
# Kinds that carry the event's current calendar entry (a change replaces the one sent before).
_CALENDAR_KINDS = frozenset(
    {"registration_confirmed", "event_changed", "event_cancelled", "event_postponed"}
)
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
_MAX_HEADER_TEXT = 200
_RANGE = " \u2013 "  # an en dash between start and end


class RenderError(ValueError):
    """The row cannot become a message (bad address, unknown kind); retrying will not help."""


@dataclass(frozen=True, slots=True)
class Detail:
    label: str
    value: str
    href: str = ""


@dataclass(frozen=True, slots=True)
class Link:
    label: str
    url: str


@lru_cache(maxsize=1)
def catalog() -> dict[str, dict[str, dict[str, Any]]]:
    """Language -> ("common" | kind) -> texts; read once per process."""
    with (TEMPLATES_DIR / "messages.toml").open("rb") as f:
        data: dict[str, dict[str, dict[str, Any]]] = tomllib.load(f)
    return data


@lru_cache(maxsize=1)
def _layouts() -> tuple[Template, Template]:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return env.get_template("layout.txt.j2"), env.get_template("layout.html.j2")


def language_of(tag: str) -> str:
    """The catalog language for a tag such as ``fr-CA`` (English when not translated)."""
    base = tag.strip().lower().replace("_", "-").split("-")[0]
    return base if base in catalog() else DEFAULT_LANGUAGE


@lru_cache(maxsize=16)
def mail_domain(mail_from: str) -> str:
    return parseaddr(mail_from)[1].rpartition("@")[2] or "localhost"


def message_id_for(notification_id: int, created_at: datetime, mail_from: str) -> str:
    """Same row, same Message-ID: a resend after a crash is recognisable as a duplicate."""
    stamp = int(created_at.timestamp() * 1_000_000)
    return f"<notification-{notification_id}.{stamp:x}@{mail_domain(mail_from)}>"


def needs_confirmation(notification: Notification) -> bool:
    """Whether the mail asks for the double opt-in click.

    ``needs_confirmation`` in the context decides; without it: always for
    registration_confirm, for promoted and approved while a hold runs, never otherwise.
    """
    kind = notification.kind
    if kind not in _CONFIRMABLE:
        return False
    explicit = (notification.context or {}).get("needs_confirmation")
    if isinstance(explicit, bool):
        return explicit
    if kind in ("registration_confirm", "subscription_confirm"):
        return True
    return kind != "manage_link" and bool((notification.context or {}).get("hold_expires_at"))


def attaches_calendar(notification: Notification) -> bool:
    return notification.kind in _CALENDAR_KINDS or (
        notification.kind == "promoted" and not needs_confirmation(notification)
    )


def one_line(value: object, limit: int = _MAX_HEADER_TEXT) -> str:
    """Text for a single line: no control or line-separator characters."""
    text = "".join(
        " " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch for ch in str(value)
    )
    return " ".join(text.split())[:limit]


def header_text(value: object, limit: int = _MAX_HEADER_TEXT) -> str:
    """Text safe inside a header: one line, and no RFC 2047 encoded word.

    The stdlib decodes ``=?utf-8?q?...=0D=0A...?=`` in a value it is given and, before
    Python 3.11.10 (CVE-2024-6923), folds the decoded CR LF out raw: a new header.
    """
    return one_line(value, limit).replace("=?", "= ?")


@dataclass(frozen=True, slots=True)
class Composed:
    """A message's language, subject and the two bodies, before any MIME."""

    lang: str
    subject: str
    text: str
    html: str
    calendar: bool  # the event's ICS goes along


def render(
    notification: Notification,
    *,
    event: Event | None,
    links: dict[str, str],
    mail_from: str,
    now: datetime,
) -> EmailMessage:
    """The message for one outbox row.

    ``links`` may hold ``manage_url``, ``confirm_url`` (shown only while confirmation is
    needed), ``event_url`` (the public page, used in the ICS instead of the secret link) and
    ``unsubscribe_url`` (a deadline subscription's one-click unsubscribe, RFC 8058: it goes
    into the List-Unsubscribe headers, and ``manage_url`` then leads to the subscription).
    """
    name = one_line(notification.recipient_name)
    composed = compose(notification, event=event, links=links, now=now, name=name)
    unsubscribe_url = links.get("unsubscribe_url", "")

    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = sender_address(mail_from)
    msg["To"] = recipient_address(notification.recipient_email, header_text(name))
    msg["Subject"] = composed.subject
    msg["Date"] = rfc2822_date(now.astimezone(UTC))
    msg["Message-ID"] = notification.message_id or message_id_for(
        notification.id, notification.created_at, mail_from
    )
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "All"
    if unsubscribe_url:
        # RFC 8058 one-click: mail programs POST "List-Unsubscribe=One-Click" to the URL.
        msg["List-Unsubscribe"] = f"<{one_line(unsubscribe_url, 2000)}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content(composed.text)
    msg.add_alternative(composed.html, subtype="html")
    if composed.calendar and event is not None:
        msg.add_attachment(
            event_ics(event, links.get("event_url", ""), now),
            maintype="text",
            subtype="calendar",
            filename="invite.ics",
            params={"method": "PUBLISH"},
        )
    # After the parts: set_content() drops every Content-* header already there.
    msg["Content-Language"] = composed.lang
    for header in ("From", "To", "Subject", "List-Unsubscribe"):
        # The last line of defence.
        if msg[header] is not None and any(ch in str(msg[header]) for ch in "\r\n"):
            raise RenderError(f"{header} would span lines: {str(msg[header])!r}")
    return msg


def compose(
    notification: Notification,
    *,
    event: Event | None,
    links: dict[str, str],
    now: datetime,
    name: str,
) -> Composed:
    """The texts of one message; ``name`` is the recipient's, already on one line.

    Pure in its arguments (and ``now`` only through ``lead_text``), so that every
    recipient of the same kind, language, zone, event and context can share one result.
    """
    kind = notification.kind
    lang = language_of(notification.language or DEFAULT_LANGUAGE)
    texts = catalog()[lang]
    if kind not in texts:
        raise RenderError(f"no mail text for kind {kind!r}")
    common: dict[str, str] = texts["common"]
    locale = locale_of(notification.language or DEFAULT_LANGUAGE)
    ctx = notification.context or {}
    reader_tz = _zone_or_utc(notification.time_zone)
    event_tz = _zone_or_utc(
        str(ctx.get("event_time_zone") or (event.time_zone if event else "") or reader_tz.key)
    )

    start = _instant(ctx.get("event_start")) or (event.starts_at if event else None)
    end = _instant(ctx.get("event_end")) or (event.ends_at if event else None)
    hold = _instant(ctx.get("hold_expires_at"))
    slot_start = _instant(ctx.get("slot_start"))
    slot_end = _instant(ctx.get("slot_end"))
    title = one_line(ctx.get("event_title") or (event.title if event else ""), 300)
    position = ctx.get("position")
    due = _instant(ctx.get("due"))
    items = [i for i in ctx.get("items") or [] if isinstance(i, dict)]
    values = {
        "name": name,
        "event_title": title,
        "position": babel.numbers.format_decimal(position, locale=locale)
        if isinstance(position, int) and not isinstance(position, bool)
        else "",
        "hold_expires_at": _when(hold, None, reader_tz, locale) if hold else "",
        "reason": " ".join(str(ctx.get("reason") or notification.reason or "").split()),
        # A speaking slot: in the reader's zone, and at the event when its clocks differ.
        "slot": _when(slot_start, slot_end, reader_tz, locale) if slot_start else "",
        "slot_event_time": _when(slot_start, slot_end, event_tz, locale)
        if slot_start and _offset(slot_start, event_tz) != _offset(slot_start, reader_tz)
        else "",
        "lead": lead_text(notification, event, now),
        "milestone_title": one_line(ctx.get("milestone_title") or "", 300),
        "due": _when(due, None, reader_tz, locale) if due else "",
        "process_name": one_line(ctx.get("process_name") or "", 300),
        "count": babel.numbers.format_decimal(len(items), locale=locale) if items else "",
        **_pledge_values(ctx, locale),
    }

    confirm = needs_confirmation(notification)
    calendar = attaches_calendar(notification) and event is not None
    paragraphs = _fill_all(texts[kind]["paragraphs"], values)
    if confirm:
        paragraphs += _fill_all([common["confirm_by"]], values)
    if calendar:
        paragraphs.append(common["calendar_attached"])

    details: list[Detail] = []
    if due is not None:
        details.append(Detail(common["due"], values["due"]))
    for item in items:  # a digest: one line per reminder, nothing about one event
        details.append(_digest_detail(item, reader_tz, locale, common))
    if start is not None and not items:
        details.append(Detail(common["when"], _when(start, end, reader_tz, locale)))
        if _offset(start, event_tz) != _offset(start, reader_tz):
            details.append(Detail(common["event_time"], _when(start, end, event_tz, locale)))
    venue = one_line(ctx.get("venue") or (event.venue if event else ""), 300)
    if venue and not items:
        details.append(Detail(common["where"], venue))
    online = str(ctx.get("online_url") or (event.online_url if event else "")).strip()
    if online and not items:
        href = online if online.startswith(("https://", "http://")) else ""
        details.append(Detail(common["online"], one_line(online, 2000), href))

    subject = header_text(_fill(texts[kind]["subject"], values), 300)
    greeting = _fill(common["greeting"], values) if name else common["greeting_anonymous"]
    manage_url = links.get("manage_url", "")
    confirm_url = links.get("confirm_url", "")
    subscribed = bool(links.get("unsubscribe_url", ""))
    page = {
        "lang": lang,
        "dir": "rtl" if lang in RTL_LANGUAGES else "ltr",
        "align": "right" if lang in RTL_LANGUAGES else "left",
        "subject": subject,
        "greeting": greeting,
        "paragraphs": paragraphs,
        "details": details,
        "confirm": Link(
            common["confirm_subscription" if kind == "subscription_confirm" else "confirm"],
            confirm_url,
        )
        if confirm and confirm_url
        else None,
        "manage": Link(common["manage_subscription" if subscribed else "manage"], manage_url)
        if manage_url
        else None,
        "footer": common["footer"],
    }
    text_layout, html_layout = _layouts()
    return Composed(lang, subject, text_layout.render(page), html_layout.render(page), calendar)


def lead_text(notification: Notification, event: Event | None, now: datetime) -> str:
    """How long until the start (a deadline's due time), counted from ``now``, the moment
    of sending: a late reminder says the truth. Empty once that time has come."""
    ctx = notification.context or {}
    if notification.kind == "milestone_reminder":
        ahead = _instant(ctx.get("due"))
    else:
        ahead = _instant(ctx.get("event_start")) or (event.starts_at if event else None)
    if ahead is None or ahead <= now:
        return ""
    return _lead(ahead, now, locale_of(notification.language or DEFAULT_LANGUAGE))


@lru_cache(maxsize=256)  # a batch of reminders of one event asks the same question
def _lead(instant: datetime, now: datetime, locale: Locale) -> str:
    """``in 1 hour``, ``dans 7 jours``: how long until ``instant``, in the reader's language."""
    text: str = babel.dates.format_timedelta(instant - now, add_direction=True, locale=locale)
    return text


def _digest_detail(
    item: dict[str, Any], reader_tz: ZoneInfo, locale: Locale, common: dict[str, str]
) -> Detail:
    """One reminder of a digest: its title, and when (the speaking slot when there is one)."""
    title = one_line(item.get("title") or "", 300)
    slot = _instant(item.get("slot_start"))
    if slot is not None:
        return Detail(
            f"{title} ({common['speaking_slot']})",
            _when(slot, _instant(item.get("slot_end")), reader_tz, locale),
        )
    start = _instant(item.get("start"))
    when = _when(start, _instant(item.get("end")), reader_tz, locale) if start else ""
    return Detail(title, when)


def _fill(template: str, values: dict[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def _fill_all(templates: list[str], values: dict[str, str]) -> list[str]:
    """Fill each paragraph; leave out the ones about something this mail does not have."""
    return [_fill(t, values) for t in templates if all(values[k] for k in _PLACEHOLDER.findall(t))]


@lru_cache(maxsize=256)
def locale_of(tag: str) -> Locale:
    """Babel's locale for the full tag (``fr-CA``) when it is one of the catalog language's,
    else that language's (parsing a locale is slow; a wave asks for the same few)."""
    return _locale(tag, language_of(tag))


def _locale(tag: str, lang: str) -> Locale:
    """Babel's locale for the full tag (``fr-CA``) when it is one of ``lang``, else ``lang``."""
    try:
        full = Locale.parse(tag.strip().replace("-", "_"))
    except (UnknownLocaleError, ValueError, TypeError):
        return Locale.parse(lang)
    return full if full.language == lang else Locale.parse(lang)


def _zone_or_utc(name: str) -> ZoneInfo:
    try:
        return zone(name)
    except UnknownTimeZone:
        return zone("UTC")


def _instant(value: object) -> datetime | None:
    """An aware UTC datetime from an ISO string (naive means UTC) or a datetime."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _offset(instant: datetime, tz: ZoneInfo) -> timedelta | None:
    return instant.astimezone(tz).utcoffset()


@lru_cache(maxsize=64)
def _patterns(locale: Locale) -> tuple[str, str]:
    """(full date + short time, short time) in the locale's own order and punctuation."""
    date = locale.date_formats["full"].pattern
    time = locale.time_formats["short"].pattern
    glue = str(locale.datetime_formats["full"])
    return glue.replace("{1}", date).replace("{0}", time), time


def _when(start: datetime, end: datetime | None, tz: ZoneInfo, locale: Locale) -> str:
    """``Tuesday, May 12, 2026, 4:00 PM - 7:00 PM (Central European Summer Time)``."""
    full, time_only = _patterns(locale)
    text = babel.dates.format_datetime(start, full, tzinfo=tz, locale=locale)
    if end is not None and end > start:
        same_day = start.astimezone(tz).date() == end.astimezone(tz).date()
        text += _RANGE + babel.dates.format_datetime(
            end, time_only if same_day else full, tzinfo=tz, locale=locale
        )
    zone_name = babel.dates.get_timezone_name(start.astimezone(tz), "long", locale=locale)
    return f"{text} ({zone_name})"


def sender_address(mail_from: str) -> Address:
    name, addr = parseaddr(mail_from)
    return _address(addr, header_text(name))


def recipient_address(email: str, name: str) -> Address:
    return _address(email.strip(), name)


def _address(email: str, name: str) -> Address:
    if not email or any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in email):
        raise RenderError(f"not a usable address: {email!r}")
    try:
        return Address(display_name=name, addr_spec=email)
    except (ValueError, IndexError):
        pass
    # Internationalised addresses (é@exämple.org) are valid with SMTPUTF8 but the parser
    # behind addr_spec refuses them; build them from their two halves.
    local, at, domain = email.rpartition("@")
    if not at or not local or not domain or "@" in local or '"' in email:
        raise RenderError(f"not a usable address: {email!r}")
    try:
        return Address(display_name=name, username=local, domain=domain)
    except ValueError as exc:
        raise RenderError(f"not a usable address: {email!r}") from exc


def event_ics(event: Event, url: str, now: datetime) -> bytes:
    location = ", ".join(x for x in (event.venue, event.online_url) if x)
    return _calendar_bytes(
        event.uid,
        event.sequence,
        event.title,
        event.starts_at,
        event.ends_at,
        event.time_zone,
        event.status,
        event.description,
        location,
        url,
        event.rrule,
        tuple(event.exdates),
        event.created_at,
        event.updated_at,
        now,
    )


@lru_cache(maxsize=32)
def _calendar_bytes(
    uid: str,
    sequence: int,
    title: str,
    start: datetime,
    end: datetime,
    time_zone: str,
    status: str,
    description: str,
    location: str,
    url: str,
    rrule: str | None,
    exdates: tuple[str, ...],
    created: datetime | None,
    modified: datetime | None,
    now: datetime,
) -> bytes:
    """One event's ICS, memoised: a batch (one ``now``) often mails many people one event,
    and the VTIMEZONE makes this half the cost of a message."""
    entry = CalendarEntry(
        uid=uid,
        sequence=sequence,
        title=title,
        start=start,
        end=end,
        time_zone=time_zone,
        status=status,
        description=description,
        location=location,
        url=url,
        rrule=rrule,
        exdates=[d for d in map(_instant, exdates) if d is not None],
        created=created,
        last_modified=modified,
    )
    return build_calendar(title, time_zone, [entry], now)


def _pledge_values(ctx: dict[str, Any], locale: Locale) -> dict[str, str]:
    """Placeholders of the pledge feed digest; a zero count leaves its paragraph out."""

    def count(key: str) -> str:
        value = ctx.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return str(babel.numbers.format_decimal(value, locale=locale))
        return ""

    return {
        "feed_name": one_line(ctx.get("feed_name") or "", 200),
        "new_count": count("new_count"),
        "updated_count": count("updated_count"),
        "withdrawn_count": count("withdrawn_count"),
        "quarantined_count": count("quarantined_count"),
        "pledge_titles": one_line(ctx.get("pledge_titles") or "", 1200),
        "dashboard_url": one_line(ctx.get("dashboard_url") or "", 2000),
    }
