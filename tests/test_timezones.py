from datetime import UTC, datetime, timedelta

import pytest

from scheduler.timezones import (
    UnknownTimeZone,
    from_local,
    is_valid_zone,
    local_iso,
    to_local,
    wall_shift,
    zone,
)

NY = "America/New_York"


def test_zone_knows_iana_names() -> None:
    assert zone(NY).key == NY
    assert zone("Europe/Zurich").key == "Europe/Zurich"
    assert is_valid_zone("Asia/Beirut")


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Mars/Olympus_Mons",
        "america/new_york",
        "Europe/Geneva",  # Geneva keeps Zurich time; there is no such IANA zone
        " America/New_York",
        "America/New_York ",
        "America/New_York\x00",
        "America//New_York",
        "America",  # a directory
        "/etc/passwd",
        "../../../../etc/passwd",
        "America/../../../etc/passwd",
        "./UTC",
        "localtime",  # the host's own zone, not a zone name
        "posixrules",
        "A" * 300,
    ],
)
def test_zone_rejects_unknown_and_malicious_names(name: str) -> None:
    with pytest.raises(UnknownTimeZone):
        zone(name)
    assert not is_valid_zone(name)


def test_from_local_normal_times() -> None:
    assert from_local(datetime(2026, 1, 15, 10, 0), NY) == datetime(2026, 1, 15, 15, 0, tzinfo=UTC)
    assert from_local(datetime(2026, 7, 15, 10, 0), NY) == datetime(2026, 7, 15, 14, 0, tzinfo=UTC)
    assert from_local(datetime(2026, 7, 15, 10, 0), "Asia/Bangkok") == datetime(
        2026, 7, 15, 3, 0, tzinfo=UTC
    )


def test_from_local_ignores_an_attached_tzinfo() -> None:
    # The argument is a wall time in the named zone, whatever tzinfo it carries.
    wall = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)
    assert from_local(wall, NY) == datetime(2026, 1, 15, 15, 0, tzinfo=UTC)


def test_from_local_spring_forward_gap_moves_forward() -> None:
    # 2026-03-08 02:30 does not exist in New York: clocks jump from 02:00 EST to 03:00 EDT.
    instant = from_local(datetime(2026, 3, 8, 2, 30), NY)
    assert instant == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)
    local = to_local(instant, NY)
    assert (local.hour, local.minute) == (3, 30)
    assert local.utcoffset() == timedelta(hours=-4)


def test_from_local_fall_back_takes_first_occurrence() -> None:
    # 2026-11-01 01:30 happens twice in New York: 05:30Z (EDT) then 06:30Z (EST).
    instant = from_local(datetime(2026, 11, 1, 1, 30), NY)
    assert instant == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)
    assert to_local(instant, NY).utcoffset() == timedelta(hours=-4)


def test_to_local_refuses_naive() -> None:
    with pytest.raises(ValueError, match="naive"):
        to_local(datetime(2026, 1, 1, 10, 0), NY)


def test_wall_shift_keeps_ten_o_clock_across_dst() -> None:
    before = from_local(datetime(2026, 3, 6, 10, 0), NY)  # Friday, EST
    after = wall_shift(before, NY, timedelta(days=7))  # Friday after the change, EDT
    assert to_local(after, NY).replace(tzinfo=None) == datetime(2026, 3, 13, 10, 0)
    assert after - before == timedelta(days=7, hours=-1)  # 23-hour day in between

    back = wall_shift(from_local(datetime(2026, 10, 30, 10, 0), NY), NY, timedelta(days=3))
    assert back == datetime(2026, 11, 2, 15, 0, tzinfo=UTC)
    assert local_iso(back, NY) == "2026-11-02T10:00:00-05:00"
