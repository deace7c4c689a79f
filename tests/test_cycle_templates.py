import copy
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import pytest

from scheduler.cycle_templates import (
    PlannedItem,
    Template,
    TemplateError,
    expand,
    load_templates,
    parse_template,
)
from scheduler.recurrence import iter_occurrences
from scheduler.timezones import from_local, to_local

TEMPLATES = Path(__file__).resolve().parent.parent / "config" / "templates"
NY = "America/New_York"
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def imrf() -> Template:
    return load_templates(TEMPLATES)["imrf"]


def plan(template: Template, day: date, now: datetime = LONG_AGO) -> dict[str, PlannedItem]:
    return {p.item.key: p for p in expand(template, template.anchor_start_on(day), now)}


def span(item: PlannedItem) -> tuple[datetime, datetime]:
    """Local wall-clock start and end of a planned event."""
    tz = item.item.time_zone
    assert item.end is not None
    return (
        to_local(item.start, tz).replace(tzinfo=None),
        to_local(item.end, tz).replace(tzinfo=None),
    )


def at(item: PlannedItem) -> datetime:
    return to_local(item.start, item.item.time_zone).replace(tzinfo=None)


# --- the shipped IMRF template ------------------------------------------------------------


def test_imrf_template_header(imrf: Template) -> None:
    assert imrf.key == "imrf"
    assert imrf.time_zone == NY
    assert imrf.languages == ("en", "fr", "es", "ar")
    assert imrf.anchor == "forum"
    kinds = [i.kind for i in imrf.items]
    assert kinds.count("round_table") == 4
    assert kinds.count("regional_review") >= 5
    for needed in ("stakeholder_hearing", "policy_debate", "plenary", "dialogue_meeting"):
        assert needed in kinds
    assert "consultation" in kinds


def test_imrf_2022_matches_the_first_forum(imrf: Template) -> None:
    anchor = imrf.anchor_start_on(date(2022, 5, 17))
    assert anchor == from_local(datetime(2022, 5, 17, 10, 0), NY)
    p = plan(imrf, date(2022, 5, 17))

    assert p["forum"].title == "International Migration Review Forum 2022"
    assert p["forum"].item.venue == "United Nations Headquarters, New York"
    assert span(p["forum"]) == (datetime(2022, 5, 17, 10), datetime(2022, 5, 20, 18))
    assert span(p["hearing"]) == (datetime(2022, 5, 16, 10), datetime(2022, 5, 16, 18))
    assert p["hearing"].start == datetime(2022, 5, 16, 14, 0, tzinfo=UTC)
    assert span(p["round_table_1"]) == (datetime(2022, 5, 17, 10), datetime(2022, 5, 17, 13))
    assert span(p["round_table_2"]) == (datetime(2022, 5, 17, 15), datetime(2022, 5, 17, 18))
    assert span(p["round_table_3"]) == (datetime(2022, 5, 18, 10), datetime(2022, 5, 18, 13))
    assert span(p["round_table_4"]) == span(p["round_table_3"])  # in parallel
    assert span(p["policy_debate"]) == (datetime(2022, 5, 18, 15), datetime(2022, 5, 18, 18))
    assert span(p["plenary"]) == (datetime(2022, 5, 19, 10), datetime(2022, 5, 20, 18))
    assert at(p["declaration_adopted"]) == datetime(2022, 5, 20, 17, 0)
    assert "Progress Declaration" in p["plenary"].item.description
    for key in ("round_table_1", "round_table_2", "round_table_3", "round_table_4"):
        assert p[key].item.parent == "forum"
    for key in ("policy_debate", "plenary"):
        assert p[key].item.parent == "forum"


@pytest.mark.parametrize(
    ("key", "objectives"),
    [
        ("round_table_1", "objectives 2, 5, 6, 12 and 18"),
        ("round_table_2", "objectives 1, 3, 7, 17 and 23"),
        ("round_table_3", "objectives 4, 8, 9, 10, 11, 13, 14 and 21"),
        ("round_table_4", "objectives 15, 16, 19, 20 and 22"),
    ],
)
def test_imrf_round_table_themes(imrf: Template, key: str, objectives: str) -> None:
    assert objectives in imrf.item(key).description


def test_imrf_hearing_registration(imrf: Template) -> None:
    p = plan(imrf, date(2022, 5, 17))
    hearing = p["hearing"]
    assert hearing.item.capacity == 300
    assert hearing.registration_opens_at is not None
    assert hearing.registration_closes_at is not None
    # 90 days before, at the hearing's wall time although February is in winter time.
    assert to_local(hearing.registration_opens_at, NY).replace(tzinfo=None) == datetime(
        2022, 2, 15, 10, 0
    )
    assert to_local(hearing.registration_closes_at, NY).replace(tzinfo=None) == datetime(
        2022, 5, 2, 10, 0
    )
    closes = p["hearing_registration_closes"]
    assert closes.item.kind == "registration_deadline"
    assert closes.item.parent == "hearing"
    assert at(closes) == datetime(2022, 5, 2, 23, 59)


def test_imrf_milestones_come_in_order(imrf: Template) -> None:
    p = plan(imrf, date(2022, 5, 17))
    milestones = [x for x in p.values() if x.item.category == "milestone"]
    assert {m.item.kind for m in milestones} >= {
        "report_deadline",
        "registration_deadline",
        "pledge_deadline",
        "decision",
    }
    assert at(p["national_reviews_due"]).time() == time(23, 59)
    order = [
        "zero_draft",
        "national_reviews_due",
        "hearing_registration_closes",
        "pledges_due",
        "forum",
        "declaration_adopted",
    ]
    starts = [p[k].start for k in order]
    assert starts == sorted(starts)
    assert p["declaration_adopted"].item.kind == "decision"
    assert p["declaration_adopted"].item.parent == "forum"


def test_imrf_regional_reviews_are_local_and_between_forums(imrf: Template) -> None:
    for year, day, previous_forum_end in [
        (2022, date(2022, 5, 17), datetime(2018, 12, 10, tzinfo=UTC)),  # GCM adopted
        (2026, date(2026, 5, 5), datetime(2022, 5, 20, 22, 0, tzinfo=UTC)),
    ]:
        p = plan(imrf, day)
        reviews = [x for x in p.values() if x.item.kind == "regional_review"]
        assert len({r.item.time_zone for r in reviews}) == len(reviews)
        assert len({r.item.venue for r in reviews}) == len(reviews)
        for review in reviews:
            start, end = span(review)
            assert start.time() == time(9, 0) and end.time() == time(17, 0)
            assert (end.date() - start.date()).days == 1
            assert year - 2 <= start.year < year
            assert previous_forum_end < review.start < p["hearing"].start
    zones = {i.item.time_zone for i in plan(imrf, date(2022, 5, 17)).values()}
    assert {"Europe/Zurich", "Africa/Addis_Ababa", "Asia/Beirut", "Asia/Bangkok"} <= zones
    assert "America/Santiago" in zones


def test_imrf_dialogue_recurs_yearly_before_the_forum(imrf: Template) -> None:
    p = plan(imrf, date(2026, 5, 5))
    dialogue = p["dialogue"]
    assert dialogue.item.kind == "dialogue_meeting"
    assert dialogue.item.rrule == "FREQ=YEARLY;COUNT=4"
    assert dialogue.end is not None
    occs = list(
        iter_occurrences(
            dialogue.start, dialogue.end, dialogue.item.time_zone, dialogue.item.rrule, []
        )
    )
    assert [to_local(o.start, "Europe/Zurich").year for o in occs] == [2023, 2024, 2025, 2026]
    for occ in occs:
        local_start = to_local(occ.start, "Europe/Zurich")
        assert local_start.time() == time(10, 0)
        assert to_local(occ.end, "Europe/Zurich").time() == time(17, 0)
        assert occ.start < p["forum"].start


def test_imrf_2026(imrf: Template) -> None:
    p = plan(imrf, date(2026, 5, 5), now=from_local(datetime(2026, 1, 1), NY))
    assert p["forum"].title == "International Migration Review Forum 2026"
    assert span(p["forum"]) == (datetime(2026, 5, 5, 10), datetime(2026, 5, 8, 18))
    assert span(p["hearing"]) == (datetime(2026, 5, 4, 10), datetime(2026, 5, 4, 18))
    assert span(p["plenary"]) == (datetime(2026, 5, 7, 10), datetime(2026, 5, 8, 18))
    assert span(p["policy_debate"]) == (datetime(2026, 5, 6, 15), datetime(2026, 5, 6, 18))
    assert at(p["declaration_adopted"]) == datetime(2026, 5, 8, 17, 0)
    # Items before "now" are flagged; the forum is not.
    assert p["review_unece"].in_past
    assert not p["forum"].in_past
    assert not p["hearing"].in_past
    for item in p.values():
        if item.item.category == "event":
            assert item.end is not None and item.end > item.start, item.item.key


def test_expand_refuses_a_naive_anchor(imrf: Template) -> None:
    with pytest.raises(TemplateError) as info:
        expand(imrf, datetime(2022, 5, 17, 10, 0), LONG_AGO)
    assert info.value.field == "anchor_start"


# --- parsing errors -------------------------------------------------------------------------


def minimal() -> dict[str, Any]:
    return {
        "key": "mini",
        "name": "Mini cycle",
        "time_zone": NY,
        "anchor": "forum",
        "events": [
            {
                "key": "forum",
                "kind": "review_forum",
                "title": "Forum {year}",
                "at": "10:00",
                "end_at": "18:00",
            },
            {
                "key": "hearing",
                "kind": "stakeholder_hearing",
                "title": "Hearing before the {year} forum",
                "relative_to": "forum",
                "days": -1,
                "at": "10:00",
                "end_at": "18:00",
            },
        ],
        "milestones": [
            {
                "key": "deadline",
                "kind": "report_deadline",
                "title": "Reports due",
                "relative_to": "forum",
                "event": "forum",
                "weeks": -8,
                "at": "23:59",
            }
        ],
    }


def variant(change: Any) -> dict[str, Any]:
    data = copy.deepcopy(minimal())
    change(data)
    return data


def test_minimal_template_parses_and_fills_in_the_year() -> None:
    template = parse_template(minimal(), "fallback")
    assert template.key == "mini"
    assert template.languages == ("en",)
    anchor = from_local(datetime(2030, 6, 4, 10, 0), NY)
    p = {x.item.key: x for x in expand(template, anchor, LONG_AGO)}
    assert p["forum"].title == "Forum 2030"
    assert p["hearing"].title == "Hearing before the 2030 forum"
    assert p["deadline"].title == "Reports due"
    assert p["deadline"].end is None
    assert p["deadline"].item.time_zone == NY  # inherited from the template
    assert parse_template(variant(lambda d: d.pop("key")), "fallback").key == "fallback"


def _set_event(index: int, **values: Any) -> Any:
    return lambda d: d["events"][index].update(values)


def _loop(d: dict[str, Any]) -> None:
    d["events"].append(
        {
            "key": "a",
            "kind": "other",
            "title": "A",
            "relative_to": "b",
            "duration_minutes": 60,
        }
    )
    d["events"].append(
        {
            "key": "b",
            "kind": "other",
            "title": "B",
            "relative_to": "a",
            "duration_minutes": 60,
        }
    )


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        (lambda d: d.update(colour="blue"), "colour", "unknown key"),
        (_set_event(1, colour="blue"), "events[1].colour", "unknown key"),
        (lambda d: d["milestones"][0].update(venue="x"), "milestones[0].venue", "unknown key"),
        (_set_event(1, kind="party"), "events[1].kind", "must be one of"),
        (lambda d: d["milestones"][0].update(kind="plenary"), "milestones[0].kind", "one of"),
        (lambda d: d.update(time_zone="Mars/Base"), "time_zone", "unknown time zone"),
        (_set_event(1, time_zone="Europe/Geneva"), "events[1].time_zone", "unknown time zone"),
        (_set_event(1, time_zone="../../etc/passwd"), "events[1].time_zone", "unknown"),
        (_set_event(1, relative_to="gala"), "hearing.relative_to", "'gala' is not an event"),
        (_set_event(1, relative_to="deadline"), "hearing.relative_to", "is not an event"),
        (_set_event(1, parent="gala"), "hearing.parent", "'gala' is not an event"),
        (lambda d: d["milestones"][0].update(event="gala"), "deadline.event", "not an event"),
        (_loop, "relative_to", "loop: a, b"),
        (lambda d: d.pop("anchor"), "anchor", "non-empty"),
        (lambda d: d.update(anchor="deadline"), "anchor", "is not one of the template's"),
        (_set_event(0, relative_to="hearing"), "anchor", "cannot be relative"),
        (lambda d: d.update(anchor="hearing"), "forum.relative_to", "needs one"),
        (_set_event(1, relative_to=None), "hearing.relative_to", "needs one"),
        (lambda d: d["events"][1].pop("end_at"), "hearing.end_at", "needs end_at"),
        (_set_event(1, key="forum"), "key", "used twice: forum"),
        (_set_event(1, at="noon"), "events[1].at", "not a local time"),
        (_set_event(1, at="19:00"), "events[1].end_at", "must be after at"),
        (_set_event(1, duration_minutes=30), "events[1].duration_minutes", "either"),
        (_set_event(1, rrule="FREQ=SECONDLY"), "events[1].rrule", "FREQ must be"),
        (_set_event(1, capacity="300"), "events[1].capacity", "whole number"),
        (_set_event(1, title=""), "events[1].title", "non-empty"),
        (lambda d: d["events"].append("forum"), "events[2]", "must be a table"),
    ],
)
def test_template_errors_name_the_field(change: Any, field: str, reason: str) -> None:
    with pytest.raises(TemplateError) as info:
        parse_template(variant(change), "mini")
    assert info.value.field == field
    assert reason in info.value.reason


def test_load_templates_reads_every_file_and_names_bad_toml(tmp_path: Path) -> None:
    (tmp_path / "imrf.toml").write_text((TEMPLATES / "imrf.toml").read_text(), encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not a template", encoding="utf-8")
    assert list(load_templates(tmp_path)) == ["imrf"]

    (tmp_path / "broken.toml").write_text("key = [unclosed", encoding="utf-8")
    with pytest.raises(TemplateError) as info:
        load_templates(tmp_path)
    assert info.value.field == "broken.toml"
