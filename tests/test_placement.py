from datetime import UTC, datetime, time, timedelta

import pytest

from scheduler.placement import Placement, PlacementError, parse_wall_time
from scheduler.timezones import from_local, to_local

NY = "America/New_York"
ZURICH = "Europe/Zurich"
BANGKOK = "Asia/Bangkok"

# The first IMRF opened on Tuesday 17 May 2022 at 10:00 in New York (14:00Z).
FORUM = from_local(datetime(2022, 5, 17, 10, 0), NY)


def local(instant: datetime, tz: str) -> datetime:
    return to_local(instant, tz).replace(tzinfo=None)


def test_day_before_at_a_given_time() -> None:
    rule = Placement(days=-1, at=time(10, 0), end_at=time(18, 0))
    start = rule.start(FORUM, NY, NY)
    assert start == datetime(2022, 5, 16, 14, 0, tzinfo=UTC)
    assert rule.end(start, NY) == datetime(2022, 5, 16, 22, 0, tzinfo=UTC)
    assert rule.sets_end


def test_without_at_the_reference_wall_time_is_kept() -> None:
    rule = Placement(weeks=-2)
    assert local(rule.start(FORUM, NY, NY), NY) == datetime(2022, 5, 3, 10, 0)
    assert rule.end(FORUM, NY) is None
    assert not rule.sets_end


def test_multi_day_end() -> None:
    rule = Placement(at=time(10, 0), end_days=3, end_at=time(18, 0))
    start = rule.start(FORUM, NY, NY)
    end = rule.end(start, NY)
    assert end is not None
    assert local(end, NY) == datetime(2022, 5, 20, 18, 0)


def test_end_days_zero_is_the_same_day() -> None:
    rule = Placement(at=time(9, 0), end_days=0, end_at=time(17, 0))
    end = rule.end(rule.start(FORUM, NY, NY), NY)
    assert end is not None
    assert local(end, NY) == datetime(2022, 5, 17, 17, 0)


def test_duration_is_elapsed_time() -> None:
    rule = Placement(days=1, at=time(15, 0), duration_minutes=90)
    start = rule.start(FORUM, NY, NY)
    assert rule.end(start, NY) == start + timedelta(minutes=90)


def test_item_in_another_zone_uses_reference_date_and_own_wall_time() -> None:
    # A Geneva meeting "the day before the forum at 09:00" is 09:00 in Geneva on 16 May.
    rule = Placement(days=-1, at=time(9, 0), end_at=time(17, 0))
    start = rule.start(FORUM, NY, ZURICH)
    assert start == datetime(2022, 5, 16, 7, 0, tzinfo=UTC)
    end = rule.end(start, ZURICH)
    assert end == datetime(2022, 5, 16, 15, 0, tzinfo=UTC)


def test_calendar_date_is_taken_in_the_reference_zone() -> None:
    # 20:00 in New York is already the next day in Bangkok; the rule counts from the
    # reference's own date (17 May), so "same day at 09:00" is 17 May 09:00 in Bangkok.
    evening = from_local(datetime(2022, 5, 17, 20, 0), NY)
    assert to_local(evening, BANGKOK).day == 18
    start = Placement(at=time(9, 0)).start(evening, NY, BANGKOK)
    assert local(start, BANGKOK) == datetime(2022, 5, 17, 9, 0)


def test_months_and_years_arithmetic() -> None:
    assert local(Placement(years=-2, months=6).start(FORUM, NY, NY), NY) == datetime(
        2020, 11, 17, 10, 0
    )
    assert local(Placement(years=-1, months=-3).start(FORUM, NY, NY), NY) == datetime(
        2021, 2, 17, 10, 0
    )
    # Month ends are clipped rather than overflowing into the next month.
    jan31 = from_local(datetime(2026, 1, 31, 10, 0), NY)
    assert local(Placement(months=1).start(jan31, NY, NY), NY) == datetime(2026, 2, 28, 10, 0)
    leap = from_local(datetime(2024, 2, 29, 10, 0), NY)
    assert local(Placement(years=1).start(leap, NY, NY), NY) == datetime(2025, 2, 28, 10, 0)


def test_wall_time_is_kept_across_dst() -> None:
    # Ten weeks before a summer forum is in winter time: still 10:00 local, now 15:00Z.
    start = Placement(weeks=-10, at=time(10, 0)).start(FORUM, NY, NY)
    assert start == datetime(2022, 3, 8, 15, 0, tzinfo=UTC)


def test_to_dict_from_dict_round_trip() -> None:
    rules = [
        Placement(),
        Placement(days=-1, at=time(10, 0), end_at=time(18, 0)),
        Placement(years=-2, months=6, at=time(9, 0), end_days=1, end_at=time(17, 0)),
        Placement(weeks=-8, at=time(23, 59)),
        Placement(days=1, at=time(15, 0), duration_minutes=180),
        Placement(at=time(9, 0), end_days=0, end_at=time(17, 30)),
    ]
    for rule in rules:
        assert Placement.from_dict(rule.to_dict()) == rule
    assert rules[0].to_dict() == {}
    assert rules[2].to_dict() == {
        "years": -2,
        "months": 6,
        "end_days": 1,
        "at": "09:00",
        "end_at": "17:00",
    }
    assert rules[5].to_dict()["end_days"] == 0


def test_from_dict_accepts_toml_times() -> None:
    rule = Placement.from_dict({"at": time(10, 0), "end_at": "18:00"})
    assert rule == Placement(at=time(10, 0), end_at=time(18, 0))


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"at": "25:00"}, "ev.at"),
        ({"at": "ten"}, "ev.at"),
        ({"at": 10}, "ev.at"),
        ({"at": "10:00+02:00"}, "ev.at"),
        ({"end_at": "18:00", "duration_minutes": 60}, "ev.duration_minutes"),
        ({"duration_minutes": 0}, "ev.duration_minutes"),
        ({"days": "1"}, "ev.days"),
        ({"days": 1.5}, "ev.days"),
        ({"weeks": True}, "ev.weeks"),
        ({"years": 10**6}, "ev.years"),
        ({"end_days": 1}, "ev.end_at"),
        ({"end_days": -1, "end_at": "18:00"}, "ev.end_days"),
        ({"at": "15:00", "end_at": "13:00"}, "ev.end_at"),
        ({"at": "15:00", "end_at": "15:00"}, "ev.end_at"),
    ],
)
def test_from_dict_errors_name_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(PlacementError) as info:
        Placement.from_dict(data, prefix="ev.")
    assert info.value.field == field
    assert str(info.value).startswith(field + ": ")


def test_end_at_before_at_is_fine_on_a_later_day() -> None:
    rule = Placement(at=time(22, 0), end_days=1, end_at=time(2, 0))
    start = rule.start(FORUM, NY, NY)
    end = rule.end(start, NY)
    assert end is not None
    assert end - start == timedelta(hours=4)


def test_parse_wall_time() -> None:
    assert parse_wall_time("09:30", "at") == time(9, 30)
    assert parse_wall_time(time(9, 30), "at") == time(9, 30)
    with pytest.raises(PlacementError, match=r"^at: "):
        parse_wall_time(None, "at")


def test_placement_is_frozen() -> None:
    rule = Placement(days=1)
    with pytest.raises(AttributeError):
        rule.days = 2  # type: ignore[misc]
