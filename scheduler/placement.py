"""Where an item sits relative to another event's start, in local calendar terms.

"The hearing is the day before the forum at 10:00 local" is ``Placement(days=-1, at=10:00)``.
Calendar arithmetic happens on the reference's local date; the wall time is read in the
item's own zone, so a rule keeps meaning the same thing across daylight-saving changes.
A frozen value object, like APScheduler's triggers: pure, no clock, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any

from dateutil.relativedelta import relativedelta

from scheduler.timezones import from_local, to_local

_INT_FIELDS = ("years", "months", "weeks", "days", "end_days", "duration_minutes")
_TIME_FIELDS = ("at", "end_at")
FIELDS = _INT_FIELDS + _TIME_FIELDS


class PlacementError(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Placement:
    years: int = 0
    months: int = 0
    weeks: int = 0
    days: int = 0
    at: time | None = None
    end_days: int | None = None
    end_at: time | None = None
    duration_minutes: int | None = None

    def __post_init__(self) -> None:
        if self.duration_minutes is not None and (
            self.end_at is not None or self.end_days is not None
        ):
            raise PlacementError("duration_minutes", "give either duration_minutes or end_at")
        if self.duration_minutes is not None and self.duration_minutes <= 0:
            raise PlacementError("duration_minutes", "must be positive")
        if self.end_days is not None and self.end_days < 0:
            raise PlacementError("end_days", "must not be negative")
        if self.end_days is not None and self.end_at is None:
            raise PlacementError("end_at", "needed with end_days")
        if (
            self.at is not None
            and self.end_at is not None
            and not self.end_days
            and self.end_at <= self.at
        ):
            raise PlacementError("end_at", "must be after at (or give end_days)")

    @property
    def sets_end(self) -> bool:
        return self.end_at is not None or self.duration_minutes is not None

    def start(self, reference_start: datetime, reference_tz: str, own_tz: str) -> datetime:
        ref_local = to_local(reference_start, reference_tz)
        day = ref_local.date() + relativedelta(
            years=self.years, months=self.months, weeks=self.weeks, days=self.days
        )
        wall = self.at if self.at is not None else ref_local.time().replace(tzinfo=None)
        return from_local(datetime.combine(day, wall), own_tz)

    def end(self, start: datetime, own_tz: str) -> datetime | None:
        """The end this rule gives for an item starting at ``start``; None if it sets none."""
        if self.duration_minutes is not None:
            return start + timedelta(minutes=self.duration_minutes)
        if self.end_at is None:
            return None
        local_day = to_local(start, own_tz).date() + timedelta(days=self.end_days or 0)
        return from_local(datetime.combine(local_day, self.end_at), own_tz)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if value not in (None, 0) or (name == "end_days" and value is not None):
                data[name] = value
        for name in _TIME_FIELDS:
            value = getattr(self, name)
            if value is not None:
                data[name] = value.strftime("%H:%M")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], prefix: str = "") -> Placement:
        """Build from JSON or TOML; errors name the offending key (after ``prefix``)."""
        values: dict[str, Any] = {}
        for name in _INT_FIELDS:
            if name in data and data[name] is not None:
                raw = data[name]
                if isinstance(raw, bool) or not isinstance(raw, int):
                    raise PlacementError(prefix + name, "must be a whole number")
                if abs(raw) > 100_000:
                    raise PlacementError(prefix + name, "is out of range")
                values[name] = raw
        for name in _TIME_FIELDS:
            if name in data and data[name] is not None:
                values[name] = parse_wall_time(data[name], prefix + name)
        try:
            return cls(**values)
        except PlacementError as exc:
            raise PlacementError(prefix + exc.field, exc.reason) from None


def parse_wall_time(raw: Any, field: str) -> time:
    if isinstance(raw, time):
        return raw.replace(tzinfo=None)
    if not isinstance(raw, str):
        raise PlacementError(field, "must be a local time like 10:00")
    try:
        parsed = time.fromisoformat(raw)
    except ValueError:
        raise PlacementError(field, f"{raw!r} is not a local time like 10:00") from None
    if parsed.tzinfo is not None:
        raise PlacementError(field, "is a local wall time and takes no offset")
    return parsed
