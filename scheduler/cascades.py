"""Moving an event moves everything placed relative to it, except what was pinned by hand.

Pure: it takes the current positions and answers with the moves, so the same code gives
the preview an organizer sees and the change that is written.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from scheduler.placement import Placement
from scheduler.timezones import to_local, wall_shift

ItemKind = Literal["event", "milestone"]


@dataclass(frozen=True, slots=True)
class Item:
    kind: ItemKind
    id: int
    start: datetime
    end: datetime | None
    time_zone: str
    relative_to: int | None = None
    placement: Placement | None = None
    pinned: bool = False


@dataclass(frozen=True, slots=True)
class Move:
    kind: ItemKind
    id: int
    old_start: datetime
    new_start: datetime
    old_end: datetime | None
    new_end: datetime | None
    in_past: bool

    @property
    def changed(self) -> bool:
        return self.old_start != self.new_start or self.old_end != self.new_end


class CascadeError(ValueError):
    pass


def keep_wall_length(item: Item, new_start: datetime) -> datetime | None:
    """The end that keeps the item's local wall-clock length (a 10:00-18:00 day stays one)."""
    if item.end is None:
        return None
    length = to_local(item.end, item.time_zone).replace(tzinfo=None) - to_local(
        item.start, item.time_zone
    ).replace(tzinfo=None)
    return wall_shift(new_start, item.time_zone, length)


def cascade(
    items: list[Item],
    moved_id: int,
    new_start: datetime,
    new_end: datetime | None,
    now: datetime,
) -> list[Move]:
    """The moves caused by putting event ``moved_id`` at ``new_start``; moved event first.

    Dependents are placed again by their own rule from their reference's new start; a
    pinned dependent stays, and so do the items placed relative to it.
    """
    new_start = new_start.astimezone(UTC)
    new_end = new_end.astimezone(UTC) if new_end is not None else None
    events = {i.id: i for i in items if i.kind == "event"}
    if moved_id not in events:
        raise CascadeError(f"event {moved_id} is not part of this process")
    moved = events[moved_id]
    end = new_end if new_end is not None else keep_wall_length(moved, new_start)
    if end is not None and end <= new_start:
        raise CascadeError("the end must be after the start")
    dependents: dict[int, list[Item]] = defaultdict(list)
    for item in items:
        if item.relative_to is not None and not item.pinned and item.placement is not None:
            dependents[item.relative_to].append(item)

    moves = [_move(moved, new_start, end, now)]
    new_starts = {moved_id: new_start}
    queue = [moved_id]
    seen: set[tuple[ItemKind, int]] = {("event", moved_id)}
    while queue:
        ref_id = queue.pop(0)
        ref = events[ref_id]
        for dep in sorted(dependents.get(ref_id, []), key=lambda i: (i.kind, i.id)):
            if (dep.kind, dep.id) in seen:
                continue
            seen.add((dep.kind, dep.id))
            assert dep.placement is not None
            start = dep.placement.start(new_starts[ref_id], ref.time_zone, dep.time_zone)
            dep_end = dep.placement.end(start, dep.time_zone)
            if dep_end is None:
                dep_end = keep_wall_length(dep, start)
            moves.append(_move(dep, start, dep_end, now))
            if dep.kind == "event":
                new_starts[dep.id] = start
                queue.append(dep.id)
    return moves


def _move(item: Item, start: datetime, end: datetime | None, now: datetime) -> Move:
    return Move(
        kind=item.kind,
        id=item.id,
        old_start=item.start,
        new_start=start,
        old_end=item.end,
        new_end=end,
        in_past=start < now,
    )
