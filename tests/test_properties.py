"""Properties of the pure rules, checked on many generated cases (Hypothesis).

Seats and the waiting list (``capacity``): never more seats than capacity, nobody waits
while a seat is free, promotion in arrival order. Cascades (``cascades``): moving the
anchor by some time and back puts everything where it was; pinned items never move, nor
what hangs on them. Recurrence (``recurrence``) across daylight-saving changes: every
occurrence keeps the first one's local wall time and length.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.capacity import SeatCount, hold_until, place, to_promote
from scheduler.cascades import Item, cascade
from scheduler.placement import Placement
from scheduler.recurrence import iter_occurrences, normalize_rrule
from scheduler.timezones import from_local, to_local

ZONES = ["America/New_York", "Europe/Paris", "Australia/Sydney", "America/Santiago", "UTC"]
# Wall times away from any daylight-saving jump in ZONES (they happen between 00:00 and 03:00).
SAFE_TIMES = st.builds(time, st.integers(6, 20), st.sampled_from([0, 15, 30, 45]))
NOW = datetime(2026, 1, 1, tzinfo=UTC)

# --- Seats and the waiting list -------------------------------------------------------------


@dataclass
class Desk:
    """A model event: seat holders and the waiting list, driven only by the pure rules."""

    capacity: int | None
    confirmation: bool
    seated: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)  # in arrival order
    arrivals: int = 0

    def seats(self) -> SeatCount:
        return SeatCount(self.capacity, len(self.seated))

    def register(self) -> str:
        self.arrivals += 1
        who = self.arrivals
        status = place(
            self.seats(),
            needs_approval=False,
            confirmation_required=self.confirmation,
            waiting_ahead=len(self.waiting),
        )
        if status == "waiting":
            self.waiting.append(who)
        else:
            assert status == ("held" if self.confirmation else "confirmed")
            self.seated.append(who)
        return status

    def leave(self, index: int) -> list[int]:
        """Someone leaves (cancels, or a hold expires); freed seats are given at once."""
        everyone = self.seated + self.waiting
        who = everyone[index % len(everyone)]
        if who in self.waiting:
            self.waiting.remove(who)
            return []
        self.seated.remove(who)
        promoted = to_promote(self.seats(), list(self.waiting))
        for p in promoted:
            self.waiting.remove(p)
            self.seated.append(p)
        return promoted


@settings(max_examples=300, deadline=None)
@given(
    capacity=st.one_of(st.none(), st.integers(0, 8)),
    confirmation=st.booleans(),
    steps=st.lists(st.one_of(st.just(-1), st.integers(0, 50)), max_size=80),
)
def test_seats_never_exceed_capacity_and_promotion_is_first_come_first_served(
    capacity: int | None, confirmation: bool, steps: list[int]
) -> None:
    desk = Desk(capacity, confirmation)
    for step in steps:
        waiting_before = list(desk.waiting)
        if step == -1 or not (desk.seated or desk.waiting):
            seats_were_free = desk.seats().free
            status = desk.register()
            # Nobody jumps the queue: a newcomer gets a seat only if nobody was waiting.
            if status != "waiting":
                assert not waiting_before
                assert seats_were_free is None or seats_were_free > 0
        else:
            promoted = desk.leave(step)
            # The first people waiting, in arrival order, and no one else.
            assert promoted == waiting_before[: len(promoted)]
        if capacity is not None:
            assert len(desk.seated) <= capacity
        # Nobody waits while a seat is free.
        free = desk.seats().free
        assert not desk.waiting or free == 0
        assert desk.waiting == sorted(desk.waiting)
        assert len(set(desk.seated) | set(desk.waiting)) == len(desk.seated) + len(desk.waiting)
    if capacity is None:
        assert desk.waiting == []


@given(
    minutes=st.integers(0, 10**6),
    hold_minutes=st.integers(1, 10**5),
    start_offset=st.integers(-(10**6), 10**6),
)
def test_a_hold_never_outlives_its_length_or_the_event_start(
    minutes: int, hold_minutes: int, start_offset: int
) -> None:
    now = NOW + timedelta(minutes=minutes)
    hold = timedelta(minutes=hold_minutes)
    start = now + timedelta(minutes=start_offset)
    until = hold_until(now, hold, start)
    assert now <= until <= now + hold
    assert until <= max(now, start)


# --- Cascades -------------------------------------------------------------------------------


@st.composite
def placements(draw: st.DrawFn) -> Placement:
    at = draw(st.one_of(st.none(), SAFE_TIMES))
    end = draw(st.sampled_from(["none", "duration", "end_at"]))
    if end == "duration":
        return Placement(
            months=draw(st.integers(-3, 3)),
            days=draw(st.integers(-60, 60)),
            at=at,
            duration_minutes=draw(st.integers(15, 600)),
        )
    if end == "end_at" and at is not None:
        end_days = draw(st.integers(0, 3))
        latest = 23 if end_days else at.hour + 1
        end_at = time(draw(st.integers(min(latest, 23), 23)), 30)
        return Placement(days=draw(st.integers(-60, 60)), at=at, end_days=end_days, end_at=end_at)
    return Placement(weeks=draw(st.integers(-8, 8)), days=draw(st.integers(-6, 6)), at=at)


@st.composite
def cycles(draw: st.DrawFn) -> list[Item]:
    """An anchor event (id 1) and a tree of items placed relative to it, by their rules."""
    tz = draw(st.sampled_from(ZONES))
    day = draw(st.dates(date(2024, 1, 1), date(2030, 12, 31)))
    morning = time(draw(st.integers(6, 12)), draw(st.sampled_from([0, 30])))
    anchor_start = from_local(datetime.combine(day, morning), tz)  # a forum's day, 8 hours
    anchor = Item("event", 1, anchor_start, anchor_start + timedelta(hours=8), tz)
    items = [anchor]
    for n in range(draw(st.integers(1, 10))):
        ref = draw(st.sampled_from([i for i in items if i.kind == "event"]))
        kind = draw(st.sampled_from(["event", "milestone"]))
        own_tz = draw(st.sampled_from(ZONES))
        rule = draw(placements())
        start = rule.start(ref.start, ref.time_zone, own_tz)
        end = rule.end(start, own_tz)
        if end is None and kind == "event":
            end = start + timedelta(hours=2)
        items.append(
            Item(
                kind,  # type: ignore[arg-type]
                n + 2,
                start,
                end,
                own_tz,
                relative_to=ref.id,
                placement=rule,
                pinned=draw(st.booleans()) and draw(st.booleans()),  # about one in four
            )
        )
    return items


def applied(items: list[Item], moved_id: int, new_start: datetime) -> list[Item]:
    moves = {(m.kind, m.id): m for m in cascade(items, moved_id, new_start, None, NOW)}
    out = []
    for item in items:
        move = moves.get((item.kind, item.id))
        out.append(item if move is None else replace(item, start=move.new_start, end=move.new_end))
    return out


def hangs_on_a_pin(item: Item, items: list[Item]) -> bool:
    events = {i.id: i for i in items if i.kind == "event"}
    current: Item | None = item
    while current is not None:
        if current.pinned:
            return True
        current = events.get(current.relative_to) if current.relative_to is not None else None
    return False


@settings(max_examples=200, deadline=None)
@given(items=cycles(), days=st.integers(-400, 400))
def test_moving_the_anchor_and_back_restores_every_position(items: list[Item], days: int) -> None:
    """Moves by whole days (24 hours: across a daylight-saving change the anchor's local
    time shifts by the hour). Wall times stay off the night's jumps: an end moved into a
    spring-forward gap is pushed past it, and the move back cannot know it was."""
    anchor = items[0]
    shift = days * 24
    # Start from the positions the rules give (as a template lays a cycle out).
    laid_out = applied(items, 1, anchor.start)
    moved = applied(laid_out, 1, anchor.start + timedelta(hours=shift))
    back = applied(moved, 1, anchor.start)
    assert [(i.start, i.end) for i in back] == [(i.start, i.end) for i in laid_out]

    moves = cascade(laid_out, 1, anchor.start + timedelta(hours=shift), None, NOW)
    assert moves[0].id == 1 and moves[0].kind == "event"
    touched = {(m.kind, m.id) for m in moves[1:]}
    for item in laid_out[1:]:
        if hangs_on_a_pin(item, laid_out):
            # Pinned by hand, or placed relative to something pinned: never moved.
            assert (item.kind, item.id) not in touched
        else:
            assert (item.kind, item.id) in touched
    # Each item keeps its rule's meaning in its own zone after the move.
    by_id = {(i.kind, i.id): i for i in moved}
    for item in moved[1:]:
        if (
            item.placement is not None
            and item.placement.at is not None
            and not hangs_on_a_pin(item, moved)
        ):
            assert to_local(by_id[(item.kind, item.id)].start, item.time_zone).time() == (
                item.placement.at
            )


# --- Recurrence across daylight-saving changes ----------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    tz=st.sampled_from(ZONES),
    day=st.dates(date(2024, 1, 1), date(2030, 12, 31)),
    at=SAFE_TIMES,
    length=st.integers(15, 8 * 60),
    rule=st.sampled_from(
        [
            "FREQ=DAILY;COUNT=400",
            "FREQ=WEEKLY;BYDAY=MO,WE;COUNT=120",
            "FREQ=WEEKLY;INTERVAL=2;COUNT=60",
            "FREQ=MONTHLY;BYMONTHDAY=1,15;COUNT=48",
        ]
    ),
    skip=st.lists(st.integers(1, 40), max_size=4, unique=True),
)
def test_every_occurrence_keeps_its_local_wall_time_across_dst(
    tz: str, day: date, at: time, length: int, rule: str, skip: list[int]
) -> None:
    # Ends on the same day by 22:00 too, away from the night's daylight-saving jumps.
    length = min(length, 22 * 60 - (at.hour * 60 + at.minute))
    start = from_local(datetime.combine(day, at), tz)
    end = start + timedelta(minutes=length)
    canonical = normalize_rrule(rule, tz)
    every = list(iter_occurrences(start, end, tz, canonical, []))
    assert every[0].start >= start  # the first match of the rule on or after the start
    excluded = [every[i].start for i in skip if i < len(every)]
    kept = list(iter_occurrences(start, end, tz, canonical, excluded))
    assert len(kept) == len(every) - len(excluded)
    assert not {o.start for o in kept} & set(excluded)
    offsets = set()
    for occ in kept:
        local_start = to_local(occ.start, tz)
        local_end = to_local(occ.end, tz)
        assert local_start.time() == at
        wall = local_end.replace(tzinfo=None) - local_start.replace(tzinfo=None)
        assert wall == timedelta(minutes=length)
        offsets.add(local_start.utcoffset())
    assert [o.start for o in kept] == sorted(o.start for o in kept)
    # Over a year of occurrences a zone with daylight saving shows both of its offsets.
    if tz != "UTC" and (kept[-1].start - kept[0].start) > timedelta(days=370):
        assert len(offsets) == 2
