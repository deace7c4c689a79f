"""Seats, waiting list and accreditation: who gets a seat, who waits, who is promoted.

Pure rules (after pretix's quota logic): counts in, decisions out. The caller holds the
event's lock (the single SQLite writer, or a row lock on PostgreSQL) while it applies them,
so the counts cannot change underneath.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

Placement = Literal["held", "confirmed", "waiting", "pending_approval"]


@dataclass(frozen=True, slots=True)
class SeatCount:
    capacity: int | None
    taken: int  # held + confirmed

    @property
    def free(self) -> int | None:
        return None if self.capacity is None else max(0, self.capacity - self.taken)


def place(
    seats: SeatCount,
    *,
    needs_approval: bool,
    confirmation_required: bool,
    waiting_ahead: int,
) -> Placement:
    """Where a new (or newly approved) registration goes.

    Nobody jumps the queue: with people already waiting, a newcomer waits too even if a
    seat has just been freed (the promotion of the first waiting person takes it).
    """
    if needs_approval:
        return "pending_approval"
    free = seats.free
    if free is None or (free > 0 and waiting_ahead == 0):
        return "held" if confirmation_required else "confirmed"
    return "waiting"


def to_promote(seats: SeatCount, waiting_in_order: list[int]) -> list[int]:
    """The first waiting people who now fit, in waiting-list order."""
    free = seats.free
    if free is None:
        return list(waiting_in_order)
    return waiting_in_order[:free]


def hold_until(now: datetime, hold: timedelta, event_start: datetime) -> datetime:
    """An unconfirmed seat is kept for ``hold``, but never past the event's start."""
    return min(now + hold, max(now, event_start))


def registration_open(
    now: datetime,
    opens_at: datetime | None,
    closes_at: datetime | None,
    event_end: datetime,
    status: str,
) -> str | None:
    """None if people may register now, else the reason they may not."""
    if status in ("draft", "cancelled", "postponed"):
        return f"the event is {status}"
    if opens_at is not None and now < opens_at:
        return f"registration opens at {opens_at.isoformat()}"
    if closes_at is not None and now >= closes_at:
        return f"registration closed at {closes_at.isoformat()}"
    if now >= event_end:
        return "the event is over"
    return None
