"""Time-zone rules: naming a zone, and turning local wall-clock times into instants.

Pure functions; nothing here reads a clock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class UnknownTimeZone(ValueError):
    pass


# Files in the zoneinfo directory that are not zone names: "localtime" is the host's own
# zone (a link to /etc/localtime), so an item stored with it would move between hosts.
_NOT_ZONES = frozenset({"localtime", "posixrules"})


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    """The IANA zone called ``name``; raises UnknownTimeZone for anything else."""
    if (
        not name
        or name != name.strip()
        or name.startswith(("/", "."))
        or ".." in name
        or name in _NOT_ZONES
    ):
        raise UnknownTimeZone(f"unknown time zone {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise UnknownTimeZone(f"unknown time zone {name!r}") from None


def is_valid_zone(name: str) -> bool:
    try:
        zone(name)
    except UnknownTimeZone:
        return False
    return True


def to_local(instant: datetime, tz_name: str) -> datetime:
    if instant.tzinfo is None:
        raise ValueError("naive datetime")
    return instant.astimezone(zone(tz_name))


def from_local(wall: datetime, tz_name: str) -> datetime:
    """The UTC instant at which the clocks of ``tz_name`` show ``wall``.

    A wall time inside a spring-forward gap is moved forward by the gap (02:30 becomes 03:30),
    as calendar programs do; an ambiguous one takes its first occurrence.
    """
    tz = zone(tz_name)
    naive = wall.replace(tzinfo=None)
    first = naive.replace(tzinfo=tz, fold=0)
    utc = first.astimezone(UTC)
    if utc.astimezone(tz).replace(tzinfo=None) != naive:
        # In a gap: fold=1 gives the instant computed with the offset before the change.
        shifted = naive.replace(tzinfo=tz, fold=1).astimezone(UTC)
        later = naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
        utc = max(shifted, later)
    return utc


def wall_shift(instant: datetime, tz_name: str, delta: timedelta) -> datetime:
    """Move ``instant`` by ``delta`` of local wall-clock time (10:00 stays 10:00 across DST)."""
    local = to_local(instant, tz_name).replace(tzinfo=None)
    return from_local(local + delta, tz_name)


def local_iso(instant: datetime, tz_name: str) -> str:
    return to_local(instant, tz_name).isoformat()
