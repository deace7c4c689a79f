"""iCalendar (RFC 5545) feeds: VTIMEZONE, RRULE/EXDATE, stable UIDs, SEQUENCE, STATUS.

Pure: the caller hands in what to publish and the time to stamp it with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from icalendar import Calendar, vRecur
from icalendar import Event as VEvent

from scheduler.timezones import to_local

UID_DOMAIN = "forum-scheduler"
_STATUS = {"published": "CONFIRMED", "postponed": "TENTATIVE", "cancelled": "CANCELLED"}


@dataclass(frozen=True, slots=True)
class CalendarEntry:
    uid: str
    sequence: int
    title: str
    start: datetime
    end: datetime | None
    time_zone: str
    status: str
    description: str = ""
    location: str = ""
    url: str = ""
    rrule: str | None = None
    exdates: list[datetime] = field(default_factory=list)
    created: datetime | None = None
    last_modified: datetime | None = None


def build_calendar(name: str, time_zone: str, entries: list[CalendarEntry], now: datetime) -> bytes:
    cal = Calendar()
    cal.add("prodid", "-//Forum Scheduler//forum-scheduler//EN")
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    cal.add("method", "PUBLISH")
    cal.add("x-wr-calname", name)
    cal.add("x-wr-timezone", time_zone)
    for entry in entries:
        cal.add_component(_vevent(entry, now))
    if entries:
        first = min(e.start for e in entries).date() - timedelta(days=366)
        last = max((e.end or e.start) for e in entries).date() + timedelta(days=3 * 366)
        if any(e.rrule for e in entries):
            last = max(last, now.date() + timedelta(days=10 * 366))
        cal.add_missing_timezones(first_date=first, last_date=last)
    else:
        cal.add_missing_timezones(first_date=date(2000, 1, 1), last_date=date(2001, 1, 1))
    data: bytes = cal.to_ical()
    return data


def _vevent(entry: CalendarEntry, now: datetime) -> VEvent:
    ev = VEvent()
    ev.add("uid", f"{entry.uid}@{UID_DOMAIN}")
    ev.add("dtstamp", now)
    ev.add("sequence", entry.sequence)
    ev.add("summary", ("Postponed: " if entry.status == "postponed" else "") + entry.title)
    ev.add("dtstart", to_local(entry.start, entry.time_zone))
    if entry.end is not None:
        ev.add("dtend", to_local(entry.end, entry.time_zone))
    else:
        ev.add("transp", "TRANSPARENT")
    ev.add("status", _STATUS.get(entry.status, "TENTATIVE"))
    if entry.description:
        ev.add("description", entry.description)
    if entry.location:
        ev.add("location", entry.location)
    if entry.url:
        ev.add("url", entry.url)
    if entry.rrule:
        ev.add("rrule", vRecur.from_ical(entry.rrule))
        if entry.exdates:
            ev.add("exdate", [to_local(d, entry.time_zone) for d in entry.exdates])
    if entry.created is not None:
        ev.add("created", entry.created)
    if entry.last_modified is not None:
        ev.add("last-modified", entry.last_modified)
    return ev
