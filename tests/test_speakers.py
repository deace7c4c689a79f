"""Requests to speak, the pure rules: selection under quotas, slot times, fitting the event."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from scheduler.speakers import Candidate, assign_slots, outside_event, select_speakers
from scheduler.timezones import local_iso

NY = "America/New_York"


def c(id: int, constituency: str = "civil_society", region: str = "Africa") -> Candidate:
    return Candidate(id, constituency, region)


def ids(chosen: list[Candidate]) -> list[int]:
    return [x.id for x in chosen]


# --- Selection ----------------------------------------------------------------------------


def test_without_quotas_first_come_first_served() -> None:
    requests = [c(i) for i in range(1, 6)]
    assert ids(select_speakers(requests, count=3)) == [1, 2, 3]
    assert ids(select_speakers(requests, count=10)) == [1, 2, 3, 4, 5]
    assert select_speakers(requests, count=0) == []
    assert select_speakers([], count=3) == []


def test_a_constituency_quota_skips_only_the_requests_over_it() -> None:
    requests = [
        c(1, "civil_society"),
        c(2, "civil_society"),
        c(3, "civil_society"),
        c(4, "member_state"),
        c(5, "academia"),
        c(6, "civil_society"),
    ]
    chosen = select_speakers(requests, count=4, quotas_by_constituency={"civil_society": 2})
    assert ids(chosen) == [1, 2, 4, 5]
    # A quota of zero keeps a constituency off the list; other groups are unlimited.
    chosen = select_speakers(requests, count=4, quotas_by_constituency={"civil_society": 0})
    assert ids(chosen) == [4, 5]


def test_region_quotas_ignore_case_and_spacing() -> None:
    requests = [
        c(1, region="Africa"),
        c(2, region=" africa "),
        c(3, region="Latin  America"),
        c(4, region="latin america"),
        c(5, region="Asia"),
    ]
    chosen = select_speakers(requests, count=5, quotas_by_region={"AFRICA": 1, "Latin America": 1})
    assert ids(chosen) == [1, 3, 5]


def test_both_quotas_apply_at_once() -> None:
    requests = [
        c(1, "civil_society", "Africa"),
        c(2, "civil_society", "Europe"),
        c(3, "member_state", "Africa"),
        c(4, "member_state", "Europe"),
        c(5, "academia", "Asia"),
        c(6, "civil_society", "Asia"),
    ]
    chosen = select_speakers(
        requests,
        count=4,
        quotas_by_constituency={"civil_society": 1, "member_state": 1},
        quotas_by_region={"Africa": 1},
    )
    # 2: civil society is full; 3: Africa is full; 6: civil society is full.
    assert ids(chosen) == [1, 4, 5]


def test_speakers_already_selected_stay_and_count() -> None:
    already = [c(10, "civil_society", "Africa"), c(11, "civil_society", "Africa")]
    requests = [c(10, "civil_society", "Africa"), c(1, "civil_society"), c(2, "academia")]
    chosen = select_speakers(
        requests, count=3, quotas_by_constituency={"civil_society": 1}, already=already
    )
    # Over the quota already: both kept, no one else from civil society, no duplicate.
    assert ids(chosen) == [10, 11, 2]
    assert ids(select_speakers(requests, count=1, already=already)) == [10, 11]


def test_selection_is_deterministic_and_follows_the_given_order() -> None:
    rng = random.Random(7)
    constituencies = ["civil_society", "member_state", "academia", "trade_union"]
    regions = ["Africa", "Europe", "Asia", "Americas"]
    requests = [c(i, rng.choice(constituencies), rng.choice(regions)) for i in range(1, 60)]
    quotas = {"civil_society": 3, "member_state": 2, "academia": 4}
    region_quotas = {"Africa": 3, "Europe": 2, "Asia": 3}
    first = select_speakers(
        requests, count=9, quotas_by_constituency=quotas, quotas_by_region=region_quotas
    )
    for _ in range(5):
        again = select_speakers(
            requests,
            count=9,
            quotas_by_constituency=dict(reversed(quotas.items())),
            quotas_by_region=dict(reversed(region_quotas.items())),
        )
        assert again == first
    positions = [requests.index(x) for x in first]
    assert positions == sorted(positions)
    for name, limit in quotas.items():
        assert sum(x.constituency == name for x in first) <= limit
    for name, limit in region_quotas.items():
        assert sum(x.region == name for x in first) <= limit
    # A different priority order is honoured just the same.
    reverse = select_speakers(list(reversed(requests)), count=3)
    assert ids(reverse) == [59, 58, 57]


def test_negative_count_or_quota_is_refused() -> None:
    with pytest.raises(ValueError):
        select_speakers([c(1)], count=-1)
    with pytest.raises(ValueError):
        select_speakers([c(1)], count=1, quotas_by_region={"Africa": -1})


# --- Slots --------------------------------------------------------------------------------


def test_slots_follow_each_other_with_gaps_in_utc() -> None:
    start = datetime(2030, 5, 14, 10, 0, tzinfo=ZoneInfo(NY))
    slots = assign_slots(["a", "b", "c"], start, 7, 3)
    assert slots == [
        (datetime(2030, 5, 14, 14, 0, tzinfo=UTC), datetime(2030, 5, 14, 14, 7, tzinfo=UTC)),
        (datetime(2030, 5, 14, 14, 10, tzinfo=UTC), datetime(2030, 5, 14, 14, 17, tzinfo=UTC)),
        (datetime(2030, 5, 14, 14, 20, tzinfo=UTC), datetime(2030, 5, 14, 14, 27, tzinfo=UTC)),
    ]
    assert all(s.tzinfo is UTC and e.tzinfo is UTC for s, e in slots)
    assert assign_slots([], start, 5, 0) == []


def test_slots_across_spring_forward_keep_their_length() -> None:
    """New York, 10 March 2030: clocks go from 02:00 EST to 03:00 EDT."""
    start = datetime(2030, 3, 10, 1, 40, tzinfo=ZoneInfo(NY))
    slots = assign_slots(range(6), start, 15, 5)
    local = [(local_iso(s, NY), local_iso(e, NY)) for s, e in slots[:3]]
    assert local == [
        ("2030-03-10T01:40:00-05:00", "2030-03-10T01:55:00-05:00"),
        ("2030-03-10T03:00:00-04:00", "2030-03-10T03:15:00-04:00"),
        ("2030-03-10T03:20:00-04:00", "2030-03-10T03:35:00-04:00"),
    ]
    assert all(e - s == timedelta(minutes=15) for s, e in slots)
    # Wall-clock arithmetic in the zone would have started the sixth speaker an hour early.
    assert local_iso(slots[5][0], NY) == "2030-03-10T04:20:00-04:00"
    wall = start + timedelta(minutes=100)
    assert slots[5][0] - wall.astimezone(UTC) == timedelta(hours=1)


def test_slots_across_fall_back_keep_their_length() -> None:
    """New York, 3 November 2030: 01:00-02:00 happens twice (EDT, then EST)."""
    start = datetime(2030, 11, 3, 0, 50, tzinfo=ZoneInfo(NY))
    slots = assign_slots(range(3), start, 30, 0)
    local = [(local_iso(s, NY), local_iso(e, NY)) for s, e in slots]
    assert local == [
        ("2030-11-03T00:50:00-04:00", "2030-11-03T01:20:00-04:00"),
        ("2030-11-03T01:20:00-04:00", "2030-11-03T01:50:00-04:00"),
        ("2030-11-03T01:50:00-04:00", "2030-11-03T01:20:00-05:00"),
    ]
    assert slots[-1][1] - slots[0][0] == timedelta(minutes=90)


def test_slot_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        assign_slots([1], datetime(2030, 1, 1, 10, 0), 5, 0)
    with pytest.raises(ValueError):
        assign_slots([1], datetime(2030, 1, 1, 10, 0, tzinfo=UTC), 0, 0)
    with pytest.raises(ValueError):
        assign_slots([1], datetime(2030, 1, 1, 10, 0, tzinfo=UTC), 5, -1)


def test_slots_must_fit_inside_the_event() -> None:
    event_start = datetime(2030, 5, 14, 14, 0, tzinfo=UTC)
    event_end = datetime(2030, 5, 14, 15, 0, tzinfo=UTC)

    def check(start: datetime, n: int, minutes: int) -> tuple[str, str] | None:
        return outside_event(
            start, assign_slots(range(n), start, minutes, 0), event_start, event_end, NY
        )

    assert check(event_start, 6, 10) is None  # the last slot ends as the event ends
    assert check(event_start, 0, 10) is None
    early = check(event_start - timedelta(minutes=1), 1, 10)
    assert early is not None and early[0] == "start"
    assert "2030-05-14T10:00:00-04:00" in early[1]  # told in the event's local time
    late = check(event_end, 1, 10)
    assert late is not None and late[0] == "start"
    over = check(event_start, 7, 10)
    assert over is not None and over[0] == "slot_minutes"
    assert "2030-05-14T11:10:00-04:00" in over[1]
