"""Recurring events (RFC 5545 RRULE with EXDATE), expanded in local wall-clock time.

A meeting at 10:00 America/New_York stays at 10:00 local across the March and November
changes, so its UTC instant moves by an hour. Pure: no clock, no I/O.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time

from dateutil import rrule as du_rrule

from scheduler.timezones import from_local, to_local

ALLOWED_FREQS = ("DAILY", "WEEKLY", "MONTHLY", "YEARLY")
KNOWN_PARTS = (
    "FREQ",
    "INTERVAL",
    "COUNT",
    "UNTIL",
    "BYDAY",
    "BYMONTHDAY",
    "BYMONTH",
    "BYYEARDAY",
    "BYWEEKNO",
    "BYSETPOS",
    "WKST",
)
MAX_OCCURRENCES = 5000


class BadRecurrence(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Occurrence:
    start: datetime
    end: datetime


def normalize_rrule(text: str, tz_name: str) -> str:
    """Check an RRULE and return it in a canonical form with UNTIL in UTC.

    UNTIL given as a local date or date-time is read in ``tz_name`` (RFC 5545 wants UTC
    when DTSTART carries a TZID, and so does every calendar client).
    """
    body = text.strip()
    if body.upper().startswith("RRULE:"):
        body = body[6:]
    if not body or "\n" in body or "\r" in body:
        raise BadRecurrence("empty or multi-line rule")
    parts: dict[str, str] = {}
    for piece in body.split(";"):
        if not piece:
            continue
        key, sep, value = piece.partition("=")
        key = key.strip().upper()
        if not sep or not value.strip():
            raise BadRecurrence(f"{piece!r} is not NAME=VALUE")
        if key not in KNOWN_PARTS:
            raise BadRecurrence(f"unsupported part {key}")
        if key in parts:
            raise BadRecurrence(f"{key} given twice")
        parts[key] = value.strip().upper()
    freq = parts.get("FREQ")
    if freq not in ALLOWED_FREQS:
        raise BadRecurrence(f"FREQ must be one of {', '.join(ALLOWED_FREQS)}")
    if "COUNT" in parts and "UNTIL" in parts:
        raise BadRecurrence("COUNT and UNTIL cannot both be given")
    for name in ("COUNT", "INTERVAL"):
        number = parts.get(name)
        # isascii: str.isdigit() is also true of superscripts and non-Latin digits.
        if number is not None and not (number.isascii() and number.isdigit() and int(number) >= 1):
            raise BadRecurrence(f"{name} must be a positive whole number")
    for name, (low, high) in _RANGES.items():
        for number in parts[name].split(",") if name in parts else []:
            if not _in_range(number, low, high):
                raise BadRecurrence(f"{name} values must be whole numbers from {low} to {high}")
    if "UNTIL" in parts:
        parts["UNTIL"] = _until_utc(parts["UNTIL"], tz_name).strftime("%Y%m%dT%H%M%SZ")
    ordered = ["FREQ"] + [k for k in KNOWN_PARTS if k in parts and k != "FREQ"]
    canonical = ";".join(f"{k}={parts[k]}" for k in ordered)
    probe_start = datetime(2000, 1, 1, 10, 0)  # noqa: DTZ001 (local wall time)
    try:
        built = _build(canonical, probe_start, tz_name)
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadRecurrence(str(exc)) from None
    # A rule such as 30 February never occurs, and dateutil would search until year 9999
    # (seconds of CPU in the event loop) before saying so: refuse it here.
    if "BYMONTH" in parts and "BYMONTHDAY" in parts:
        months = [int(m) for m in parts["BYMONTH"].split(",")]
        days = [abs(int(d)) for d in parts["BYMONTHDAY"].split(",")]
        if not any(d <= calendar.monthrange(2000, m)[1] for m in months for d in days):
            raise BadRecurrence("the rule never produces a date (no such day in those months)")
    bounded = built.replace(count=None, until=probe_start.replace(year=2100))
    if next(iter(bounded), None) is None:
        raise BadRecurrence("the rule never produces a date")
    return canonical


_RANGES = {
    "BYMONTH": (1, 12),
    "BYMONTHDAY": (-31, 31),
    "BYYEARDAY": (-366, 366),
    "BYWEEKNO": (-53, 53),
    "BYSETPOS": (-366, 366),
}


def _in_range(number: str, low: int, high: int) -> bool:
    digits = number[1:] if number[:1] in "+-" else number
    if not (digits.isascii() and digits.isdigit()):
        return False
    value = int(number)
    return value != 0 and low <= value <= high


def _until_utc(value: str, tz_name: str) -> datetime:
    try:
        if value.endswith("Z"):
            return datetime.strptime(value, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        if "T" in value:
            return from_local(datetime.strptime(value, "%Y%m%dT%H%M%S"), tz_name)
        day = datetime.strptime(value, "%Y%m%d").date()
        return from_local(datetime.combine(day, time(23, 59, 59)), tz_name)
    except (ValueError, OverflowError):
        raise BadRecurrence(f"UNTIL {value!r} is not a date or date-time") from None


def _build(rule: str, local_start: datetime, tz_name: str) -> du_rrule.rrule:
    """A dateutil rule over naive local times (UNTIL turned into local wall time)."""
    pieces = []
    for piece in rule.split(";"):
        key, _, value = piece.partition("=")
        if key == "UNTIL":
            until = datetime.strptime(value, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            value = to_local(until, tz_name).strftime("%Y%m%dT%H%M%S")
        pieces.append(f"{key}={value}")
    built = du_rrule.rrulestr(";".join(pieces), dtstart=local_start)
    assert isinstance(built, du_rrule.rrule)
    return built


def iter_occurrences(
    start: datetime, end: datetime, tz_name: str, rule: str | None, exdates: list[datetime]
) -> Iterator[Occurrence]:
    """Every occurrence in order (at most MAX_OCCURRENCES), EXDATEs left out."""
    if rule is None:
        yield Occurrence(start, end)
        return
    local_start = to_local(start, tz_name).replace(tzinfo=None)
    wall_length = to_local(end, tz_name).replace(tzinfo=None) - local_start
    excluded = {d.astimezone(UTC) for d in exdates}
    for count, local in enumerate(_build(rule, local_start, tz_name)):
        if count >= MAX_OCCURRENCES:
            return
        occ_start = from_local(local, tz_name)
        if occ_start in excluded:
            continue
        yield Occurrence(occ_start, from_local(local + wall_length, tz_name))


def occurrences_between(
    start: datetime,
    end: datetime,
    tz_name: str,
    rule: str | None,
    exdates: list[datetime],
    window_start: datetime,
    window_end: datetime,
    limit: int = 500,
) -> list[Occurrence]:
    """Occurrences overlapping [window_start, window_end), at most ``limit`` of them."""
    found: list[Occurrence] = []
    for occ in iter_occurrences(start, end, tz_name, rule, exdates):
        if occ.start >= window_end or len(found) >= limit:
            break
        if occ.end > window_start:
            found.append(occ)
    return found


def last_end(
    start: datetime, end: datetime, tz_name: str, rule: str | None, exdates: list[datetime]
) -> datetime | None:
    """When the series ends; None for a rule without COUNT or UNTIL."""
    if rule is None:
        return end
    if "COUNT=" not in rule and "UNTIL=" not in rule:
        return None
    final = end
    for occ in iter_occurrences(start, end, tz_name, rule, exdates):
        final = occ.end
    return final


def check_exdates(
    start: datetime, end: datetime, tz_name: str, rule: str, exdates: list[datetime]
) -> int | None:
    """Index of the first EXDATE that is not an occurrence of the rule, or None."""
    if not exdates:
        return None
    latest = max(d.astimezone(UTC) for d in exdates)
    starts: set[datetime] = set()
    for occ in iter_occurrences(start, end, tz_name, rule, []):
        if occ.start > latest:
            break
        starts.add(occ.start)
    for index, value in enumerate(exdates):
        if value.astimezone(UTC) not in starts:
            return index
    return None
