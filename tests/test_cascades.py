from datetime import UTC, datetime, time, timedelta

import pytest

from scheduler.cascades import CascadeError, Item, Move, cascade, keep_wall_length
from scheduler.placement import Placement
from scheduler.timezones import from_local, to_local

NY = "America/New_York"
ZURICH = "Europe/Zurich"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def ny(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return from_local(datetime(year, month, day, hour, minute), NY)


def local(instant: datetime | None, tz: str = NY) -> datetime:
    assert instant is not None
    return to_local(instant, tz).replace(tzinfo=None)


def placed(
    kind: str, id: int, ref: Item, rule: Placement, tz: str = NY, pinned: bool = False
) -> Item:
    """An item where ``rule`` puts it relative to ``ref`` (as a template would)."""
    start = rule.start(ref.start, ref.time_zone, tz)
    return Item(
        kind=kind,  # type: ignore[arg-type]
        id=id,
        start=start,
        end=rule.end(start, tz),
        time_zone=tz,
        relative_to=ref.id,
        placement=rule,
        pinned=pinned,
    )


FORUM = Item("event", 1, ny(2026, 5, 5, 10), ny(2026, 5, 8, 18), NY)
HEARING = placed("event", 2, FORUM, Placement(days=-1, at=time(10), end_at=time(18)))
BRIEFING = placed("event", 3, HEARING, Placement(days=-7, at=time(15), duration_minutes=60))
BRIEFING_NOTES = placed("milestone", 30, BRIEFING, Placement(days=-2, at=time(23, 59)))
REGISTRATION = placed("milestone", 20, HEARING, Placement(days=-14, at=time(23, 59)))
DECISION = placed("milestone", 21, FORUM, Placement(days=3, at=time(17)))
GENEVA = placed(
    "event",
    4,
    FORUM,
    Placement(years=-1, months=-3, at=time(9), end_days=1, end_at=time(17)),
    tz=ZURICH,
)
ITEMS = [FORUM, HEARING, BRIEFING, BRIEFING_NOTES, REGISTRATION, DECISION, GENEVA]


def by_key(moves: list[Move]) -> dict[tuple[str, int], Move]:
    return {(m.kind, m.id): m for m in moves}


def test_moving_the_anchor_moves_a_three_level_chain_by_rule() -> None:
    moves = cascade(ITEMS, 1, ny(2026, 5, 12, 10), None, NOW)
    assert moves[0].kind == "event" and moves[0].id == 1  # moved event first
    assert len(moves) == len(ITEMS)
    got = by_key(moves)

    assert local(got["event", 1].new_end) == datetime(2026, 5, 15, 18, 0)
    assert local(got["event", 2].new_start) == datetime(2026, 5, 11, 10, 0)
    assert local(got["event", 2].new_end) == datetime(2026, 5, 11, 18, 0)
    # Level 2: relative to the hearing; level 3: a milestone relative to that.
    assert local(got["event", 3].new_start) == datetime(2026, 5, 4, 15, 0)
    assert got["event", 3].new_end == got["event", 3].new_start + timedelta(minutes=60)
    assert local(got["milestone", 30].new_start) == datetime(2026, 5, 2, 23, 59)
    assert got["milestone", 30].new_end is None
    assert all(m.changed for m in moves)
    old_starts = {(i.kind, i.id): i.start for i in ITEMS}
    assert all(m.old_start == old_starts[m.kind, m.id] for m in moves)


def test_milestones_follow_their_event() -> None:
    got = by_key(cascade(ITEMS, 1, ny(2026, 5, 12, 10), None, NOW))
    assert local(got["milestone", 20].new_start) == datetime(2026, 4, 27, 23, 59)
    assert local(got["milestone", 21].new_start) == datetime(2026, 5, 15, 17, 0)


def test_dependent_in_another_zone_keeps_its_own_wall_time() -> None:
    got = by_key(cascade(ITEMS, 1, ny(2026, 5, 12, 10), None, NOW))
    assert local(GENEVA.start, ZURICH) == datetime(2025, 2, 5, 9, 0)
    assert local(got["event", 4].new_start, ZURICH) == datetime(2025, 2, 12, 9, 0)
    assert local(got["event", 4].new_end, ZURICH) == datetime(2025, 2, 13, 17, 0)


def test_moving_a_middle_event_leaves_its_reference_alone() -> None:
    moves = cascade(ITEMS, 2, ny(2026, 5, 3, 10), None, NOW)
    assert {(m.kind, m.id) for m in moves} == {
        ("event", 2),
        ("event", 3),
        ("milestone", 20),
        ("milestone", 30),
    }
    got = by_key(moves)
    assert local(got["event", 2].new_end) == datetime(2026, 5, 3, 18, 0)
    assert local(got["event", 3].new_start) == datetime(2026, 4, 26, 15, 0)


def test_pinned_dependents_and_their_dependents_stay() -> None:
    pinned_hearing = placed(
        "event", 2, FORUM, Placement(days=-1, at=time(10), end_at=time(18)), pinned=True
    )
    pinned_decision = placed("milestone", 21, FORUM, Placement(days=3, at=time(17)), pinned=True)
    items = [FORUM, pinned_hearing, BRIEFING, BRIEFING_NOTES, REGISTRATION, pinned_decision]
    moves = cascade(items, 1, ny(2026, 5, 12, 10), None, NOW)
    assert [(m.kind, m.id) for m in moves] == [("event", 1)]


def test_item_without_placement_stays() -> None:
    loose = Item("event", 9, ny(2026, 5, 1, 10), ny(2026, 5, 1, 12), NY, relative_to=1)
    moves = cascade([FORUM, loose], 1, ny(2026, 5, 12, 10), None, NOW)
    assert [(m.kind, m.id) for m in moves] == [("event", 1)]


def test_moved_event_keeps_wall_clock_length_across_dst() -> None:
    # 30 Oct 10:00 EDT to 2 Nov 18:00 EST: 3 days 8 hours of wall clock, 3 days 9 real hours.
    forum = Item("event", 1, ny(2026, 10, 30, 10), ny(2026, 11, 2, 18), NY)
    assert forum.end is not None
    assert forum.end - forum.start == timedelta(days=3, hours=9)
    (move,) = cascade([forum], 1, ny(2026, 11, 6, 10), None, NOW)
    assert local(move.new_end) == datetime(2026, 11, 9, 18, 0)
    assert move.new_end is not None
    assert move.new_end - move.new_start == timedelta(days=3, hours=8)
    assert keep_wall_length(forum, ny(2026, 11, 6, 10)) == move.new_end


def test_dependent_without_end_rule_keeps_wall_length_across_dst() -> None:
    # A dependent whose rule sets no end keeps its own wall-clock length: 20:00 to 08:00.
    anchor = Item("event", 1, ny(2026, 3, 14, 10), ny(2026, 3, 14, 18), NY)
    rule = Placement(days=-7, at=time(20))
    overnight = Item(
        "event", 2, ny(2026, 3, 7, 20), ny(2026, 3, 8, 8), NY, relative_to=1, placement=rule
    )
    assert overnight.end is not None
    assert overnight.end - overnight.start == timedelta(hours=11)  # spring-forward night
    got = by_key(cascade([anchor, overnight], 1, ny(2026, 3, 21, 10), None, NOW))
    move = got["event", 2]
    assert local(move.new_start) == datetime(2026, 3, 14, 20, 0)
    assert local(move.new_end) == datetime(2026, 3, 15, 8, 0)
    assert move.new_end is not None
    assert move.new_end - move.new_start == timedelta(hours=12)


def test_explicit_end_is_used() -> None:
    (move,) = cascade([FORUM], 1, ny(2026, 5, 12, 10), ny(2026, 5, 13, 18), NOW)
    assert local(move.new_end) == datetime(2026, 5, 13, 18, 0)


@pytest.mark.parametrize("end", [ny(2026, 5, 12, 9), ny(2026, 5, 12, 10)])
def test_end_not_after_start_raises(end: datetime) -> None:
    with pytest.raises(CascadeError, match="end must be after the start"):
        cascade(ITEMS, 1, ny(2026, 5, 12, 10), end, NOW)


def test_unknown_or_milestone_id_raises() -> None:
    with pytest.raises(CascadeError, match="event 99"):
        cascade(ITEMS, 99, ny(2026, 5, 12, 10), None, NOW)
    with pytest.raises(CascadeError, match="event 20"):
        cascade(ITEMS, 20, ny(2026, 5, 12, 10), None, NOW)


def test_in_past_is_computed_against_now() -> None:
    now = ny(2026, 5, 1, 12)
    got = by_key(cascade(ITEMS, 1, ny(2026, 5, 12, 10), None, now))
    assert not got["event", 1].in_past
    assert not got["event", 2].in_past  # 11 May
    assert got["milestone", 20].in_past  # 27 April
    assert not got["event", 3].in_past  # 4 May
    assert got["event", 4].in_past  # February 2025

    later = by_key(cascade(ITEMS, 1, ny(2026, 5, 12, 10), None, ny(2026, 5, 20)))
    assert all(m.in_past for m in later.values())


def test_unchanged_move_is_not_changed() -> None:
    (move,) = cascade([FORUM], 1, FORUM.start, None, NOW)
    assert not move.changed
    assert move.new_end == FORUM.end
