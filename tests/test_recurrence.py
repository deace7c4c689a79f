from datetime import UTC, datetime, timedelta

import pytest

from scheduler.recurrence import (
    MAX_OCCURRENCES,
    BadRecurrence,
    check_exdates,
    iter_occurrences,
    last_end,
    normalize_rrule,
    occurrences_between,
)
from scheduler.timezones import from_local, to_local, zone

NY = "America/New_York"


def ny(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return from_local(datetime(year, month, day, hour, minute), NY)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# Weekly, Mondays 10:00-11:00 New York, from 2 March 2026 (EST) across 8 March (EDT).
MONDAY = ny(2026, 3, 2, 10, 0)
MONDAY_END = ny(2026, 3, 2, 11, 0)


# --- normalize_rrule ------------------------------------------------------------------------


def test_normalize_rrule_canonical_form() -> None:
    assert (
        normalize_rrule("rrule:byday=mo,we;count=10;freq=weekly;interval=2", NY)
        == "FREQ=WEEKLY;INTERVAL=2;COUNT=10;BYDAY=MO,WE"
    )
    assert normalize_rrule("  FREQ=YEARLY;COUNT=4;  ", NY) == "FREQ=YEARLY;COUNT=4"


def test_normalize_rrule_until_local_date_is_end_of_that_day_in_utc() -> None:
    # 2026-03-31 23:59:59 EDT is 2026-04-01 03:59:59Z.
    assert normalize_rrule("FREQ=WEEKLY;UNTIL=20260331", NY) == "FREQ=WEEKLY;UNTIL=20260401T035959Z"
    # In winter the offset is five hours.
    assert normalize_rrule("FREQ=DAILY;UNTIL=20260115", NY) == "FREQ=DAILY;UNTIL=20260116T045959Z"
    # A local date-time is read in the zone; a UTC one is kept.
    assert (
        normalize_rrule("FREQ=DAILY;UNTIL=20260115T120000", NY)
        == "FREQ=DAILY;UNTIL=20260115T170000Z"
    )
    assert (
        normalize_rrule("FREQ=DAILY;UNTIL=20260115T120000Z", NY)
        == "FREQ=DAILY;UNTIL=20260115T120000Z"
    )


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("FREQ=SECONDLY", "FREQ must be one of"),
        ("FREQ=HOURLY", "FREQ must be one of"),
        ("COUNT=3", "FREQ must be one of"),
        ("FREQ=DAILY;COUNT=3;UNTIL=20260101", "COUNT and UNTIL"),
        ("hello world", "is not NAME=VALUE"),
        ("FREQ=DAILY;COUNT=", "is not NAME=VALUE"),
        ("", "empty"),
        ("FREQ=DAILY\nRRULE:FREQ=WEEKLY", "multi-line"),
        ("FREQ=DAILY;BYHOUR=10", "unsupported part BYHOUR"),
        ("FREQ=DAILY;X-NAME=1", "unsupported part X-NAME"),
        ("FREQ=DAILY;FREQ=WEEKLY", "FREQ given twice"),
        ("FREQ=DAILY;COUNT=0", "COUNT must be a positive"),
        ("FREQ=DAILY;COUNT=-1", "COUNT must be a positive"),
        ("FREQ=DAILY;COUNT=\u00b2", "COUNT must be a positive"),  # "²".isdigit() is True
        ("FREQ=DAILY;INTERVAL=0", "INTERVAL must be a positive"),
        ("FREQ=DAILY;UNTIL=tomorrow", "UNTIL 'TOMORROW' is not a date"),
        ("FREQ=DAILY;UNTIL=20261301", "is not a date"),
        ("FREQ=WEEKLY;BYDAY=XX", "invalid 'BYDAY'"),  # refused by dateutil
        ("FREQ=MONTHLY;BYMONTHDAY=abc", "BYMONTHDAY values must be whole numbers"),
        ("FREQ=MONTHLY;BYMONTH=13", "BYMONTH values must be whole numbers from 1 to 12"),
        ("FREQ=MONTHLY;BYMONTHDAY=40", "BYMONTHDAY values must be whole numbers"),
        ("FREQ=MONTHLY;BYMONTHDAY=0", "BYMONTHDAY values must be whole numbers"),
        ("FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30", "never produces a date"),
        ("FREQ=YEARLY;BYMONTH=4,6;BYMONTHDAY=31,-31", "never produces a date"),
        ("FREQ=WEEKLY;WKST=XX", "invalid 'WKST'"),
    ],
)
def test_normalize_rrule_rejects(rule: str, message: str) -> None:
    with pytest.raises(BadRecurrence, match=message):
        normalize_rrule(rule, NY)


# --- expansion across daylight-saving changes -------------------------------------------------


def test_weekly_meeting_keeps_local_time_across_both_dst_changes() -> None:
    rule = normalize_rrule("FREQ=WEEKLY;UNTIL=20261110", NY)
    occs = list(iter_occurrences(MONDAY, MONDAY_END, NY, rule, []))
    assert occs[0].start == utc(2026, 3, 2, 15, 0)  # EST
    assert occs[1].start == utc(2026, 3, 9, 14, 0)  # EDT after 8 March
    by_day = {to_local(o.start, NY).date().isoformat(): o for o in occs}
    assert by_day["2026-10-26"].start == utc(2026, 10, 26, 14, 0)  # still EDT
    assert by_day["2026-11-02"].start == utc(2026, 11, 2, 15, 0)  # EST after 1 November
    assert by_day["2026-11-09"].start == utc(2026, 11, 9, 15, 0)
    for occ in occs:
        local = to_local(occ.start, NY)
        assert (local.weekday(), local.hour, local.minute) == (0, 10, 0)
        assert occ.end - occ.start == timedelta(hours=1)
    assert to_local(occs[-1].start, NY).date().isoformat() == "2026-11-09"
    assert len(occs) == 37


def test_wall_length_is_kept_over_a_dst_night() -> None:
    # Saturday 20:00 to Sunday 08:00 local: 12 hours of wall clock, 11 real hours on 7-8 March.
    start = ny(2026, 2, 28, 20, 0)
    end = ny(2026, 3, 1, 8, 0)
    occs = list(iter_occurrences(start, end, NY, "FREQ=WEEKLY;COUNT=2", []))
    assert occs[0].end - occs[0].start == timedelta(hours=12)
    assert to_local(occs[1].end, NY).replace(tzinfo=None) == datetime(2026, 3, 8, 8, 0)
    assert occs[1].end - occs[1].start == timedelta(hours=11)


def test_without_rule_there_is_one_occurrence() -> None:
    occs = list(iter_occurrences(MONDAY, MONDAY_END, NY, None, []))
    assert [(o.start, o.end) for o in occs] == [(MONDAY, MONDAY_END)]


def test_exdate_removes_an_occurrence() -> None:
    rule = "FREQ=WEEKLY;COUNT=4"
    skipped = ny(2026, 3, 9, 10, 0)
    starts = [o.start for o in iter_occurrences(MONDAY, MONDAY_END, NY, rule, [skipped])]
    assert skipped not in starts
    assert [to_local(s, NY).day for s in starts] == [2, 16, 23]
    # An EXDATE given in another zone is the same instant.
    same = skipped.astimezone(zone("Europe/Zurich"))
    assert len(list(iter_occurrences(MONDAY, MONDAY_END, NY, rule, [same]))) == 3


def test_check_exdates_finds_a_non_occurrence() -> None:
    rule = "FREQ=WEEKLY;COUNT=10"
    good = ny(2026, 3, 16, 10, 0)
    wrong_time = ny(2026, 3, 23, 11, 0)
    wrong_day = ny(2026, 3, 24, 10, 0)
    assert check_exdates(MONDAY, MONDAY_END, NY, rule, []) is None
    assert check_exdates(MONDAY, MONDAY_END, NY, rule, [good]) is None
    assert check_exdates(MONDAY, MONDAY_END, NY, rule, [good, wrong_time]) == 1
    assert check_exdates(MONDAY, MONDAY_END, NY, rule, [wrong_day, good]) == 0
    # The 10:00 occurrence after the DST change is 14:00Z, not 15:00Z.
    assert check_exdates(MONDAY, MONDAY_END, NY, rule, [utc(2026, 3, 9, 15, 0)]) == 0
    assert check_exdates(MONDAY, MONDAY_END, NY, rule, [utc(2026, 3, 9, 14, 0)]) is None


# --- windows and ends ---------------------------------------------------------------------


def test_occurrences_between_windows_and_limits() -> None:
    rule = "FREQ=WEEKLY"
    found = occurrences_between(MONDAY, MONDAY_END, NY, rule, [], utc(2026, 3, 10), utc(2026, 4, 1))
    assert [to_local(o.start, NY).day for o in found] == [16, 23, 30]

    # An occurrence overlapping the window start is included; one starting at the end is not.
    found = occurrences_between(
        MONDAY, MONDAY_END, NY, rule, [], utc(2026, 3, 16, 14, 30), utc(2026, 3, 23, 14, 0)
    )
    assert [o.start for o in found] == [utc(2026, 3, 16, 14, 0)]

    limited = occurrences_between(
        MONDAY, MONDAY_END, NY, rule, [], utc(2026, 1, 1), utc(2030, 1, 1), limit=5
    )
    assert len(limited) == 5
    assert limited[-1].start == utc(2026, 3, 30, 14, 0)

    assert occurrences_between(MONDAY, MONDAY_END, NY, rule, [], utc(2025, 1, 1), MONDAY) == []


def test_infinite_rule_is_capped() -> None:
    occs = list(iter_occurrences(MONDAY, MONDAY_END, NY, "FREQ=DAILY", []))
    assert len(occs) == MAX_OCCURRENCES


def test_last_end() -> None:
    assert last_end(MONDAY, MONDAY_END, NY, None, []) == MONDAY_END
    assert last_end(MONDAY, MONDAY_END, NY, "FREQ=WEEKLY;COUNT=3", []) == utc(2026, 3, 16, 15, 0)
    until = normalize_rrule("FREQ=WEEKLY;UNTIL=20261104", NY)
    assert last_end(MONDAY, MONDAY_END, NY, until, []) == utc(2026, 11, 2, 16, 0)
    assert last_end(MONDAY, MONDAY_END, NY, "FREQ=WEEKLY", []) is None
    assert last_end(MONDAY, MONDAY_END, NY, "FREQ=WEEKLY;INTERVAL=2", []) is None
