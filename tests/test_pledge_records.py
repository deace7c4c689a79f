"""Pledge records and feed rules without a network or a database.

The canonical record's validation, the incremental JSON and CSV readers (fed in every
possible split, so a chunk boundary never changes the result), the scratch file, the URL
allow-list and redirect rule, schedules, and retry timing.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import astuple
from sqlalchemy.dialects import sqlite

from scheduler import feeds
from scheduler.errors import Invalid
from scheduler.feeds import FeedTarget
from scheduler.models import Pledge
from scheduler.pledge_feed import (
    BadRow,
    CsvReader,
    FeedClient,
    FeedError,
    Fetcher,
    FetchPolicy,
    JsonPageReader,
    MalformedBody,
    Retryable,
    retry_after_seconds,
    retry_delay,
)
from scheduler.pledge_writes import Quarantined, RowForm, Stager, _Memo, quarantined_json
from scheduler.pledges import (
    CSV_COLUMNS,
    SOURCE_NAMES,
    BadRecord,
    NotPlain,
    PledgeRecord,
    check_field_map,
    content_hash,
    csv_cells,
    field_paths,
    plain_record_type,
    record_type,
    source_id_of,
    validate_fields,
    validate_plain,
    validate_record,
)
from tests.feed_server import csv_body, pledge

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
PATHS = field_paths({}, nested=True)


def valid(raw: dict[str, Any], paths: Any = PATHS) -> PledgeRecord:
    return validate_record(raw, paths, NOW)


def refused(raw: Any, paths: Any = PATHS) -> BadRecord:
    with pytest.raises(BadRecord) as caught:
        validate_record(raw, paths, NOW)
    return caught.value


# --- The canonical record -----------------------------------------------------------------


def test_a_full_record_becomes_canonical() -> None:
    r = valid(pledge(9))
    assert r.source_id == "P-000009"
    assert r.pledger_type == "stakeholder" and r.country is None
    assert r.pledge_type == "matching" and r.matches_source_id == "P-000008"
    assert r.objectives == sorted({1 + 9 % 23, 1 + 63 % 23})
    assert r.submitted_at == datetime(2023, 10, 10, 10, 0, tzinfo=UTC)
    assert r.source_updated_at == datetime(2026, 1, 15, 7, 30, tzinfo=UTC)
    assert r.source_url == "https://pledges.example.org/p/9"
    assert len(r.content_hash) == 64


def test_member_states_need_a_country_and_codes_are_iso_alpha3() -> None:
    assert valid(pledge(0)).country == "KEN"
    assert valid(pledge(0, country="ken")).country == "KEN"
    assert valid(pledge(0, country="KE")).country == "KEN"  # alpha-2 is converted
    assert "country" in refused(pledge(0, country="")).reason
    assert "alpha-3" in refused(pledge(0, country="XYZ")).reason
    assert valid(pledge(1, country="MEX")).country == "MEX"  # a stakeholder may name one


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"id": ""}, "id"),
        ({"id": None}, "id"),
        ({"id": True}, "id"),
        ({"id": "x" * 201}, "id"),
        ({"title": "  "}, "title"),
        ({"title": "t" * 501}, "title"),
        ({"pledger_name": None}, "pledger_name"),
        ({"pledger_type": "alien"}, "pledger_type"),
        ({"pledger_type": 3}, "pledger_type"),
        ({"pledge_type": "huge"}, "pledge_type"),
        ({"form": "in kind"}, "form"),
        ({"objectives": [0]}, "objectives"),
        ({"objectives": [24]}, "objectives"),
        ({"objectives": "1;x"}, "objectives"),
        ({"objectives": [True]}, "objectives"),
        ({"objectives": {"a": 1}}, "objectives"),
        ({"submitted_at": "yesterday"}, "submitted_at"),
        ({"submitted_at": "2026-05-01T10:00:00"}, "submitted_at"),  # no offset: refused
        ({"submitted_at": "2027-01-01"}, "submitted_at"),  # the future
        ({"updated_at": "1850-01-01"}, "updated_at"),
        ({"url": "javascript:alert(1)"}, "url"),
        ({"region": ["Africa"]}, "region"),
    ],
)
def test_each_bad_field_is_named(changes: dict[str, Any], field: str) -> None:
    bad = refused(pledge(3, **changes))
    assert bad.reason.startswith(f"{field}:"), bad.reason


def test_matching_pledges_name_the_pledge_they_match() -> None:
    assert "matches" in refused(pledge(9, matches="")).reason
    assert "only a matching" in refused(pledge(3, matches="P-000001")).reason
    assert "itself" in refused(pledge(9, matches="P-000009")).reason


def test_spellings_of_closed_vocabularies_are_normalised() -> None:
    r = valid(pledge(1, pledger_type="UN System", form="Human Resources", status=" Fulfilled "))
    assert (r.pledger_type, r.form, r.status) == ("un_system", "human_resource", "fulfilled")
    assert valid(pledge(0, pledger_type="Member-State")).pledger_type == "member_state"


def test_objectives_from_lists_and_text() -> None:
    assert valid(pledge(1, objectives="23; 1,5 | 5")).objectives == [1, 5, 23]
    assert valid(pledge(1, objectives=["7", 2])).objectives == [2, 7]
    assert valid(pledge(1, objectives=4)).objectives == [4]
    assert valid(pledge(1, objectives="")).objectives == []


def test_dates_and_numeric_ids() -> None:
    r = valid(pledge(1, id=42, submitted_at="2024-02-29", updated_at="2026-06-02T11:00:00Z"))
    assert r.source_id == "42"
    assert r.submitted_at == datetime(2024, 2, 29, tzinfo=UTC)
    assert r.source_updated_at is not None  # within a day of now: a clock a little ahead


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-05-05T10:00:00Z", datetime(2026, 5, 5, 10, tzinfo=UTC)),
        (" 2026-05-05T12:00:00+02:00 ", datetime(2026, 5, 5, 10, tzinfo=UTC)),
        ("2026-05-05T10:00:00.25-01:30", datetime(2026, 5, 5, 11, 30, 0, 250000, tzinfo=UTC)),
        (" 2024-02-29 ", datetime(2024, 2, 29, tzinfo=UTC)),
        ("2026-06-02T11:59:59Z", datetime(2026, 6, 2, 11, 59, 59, tzinfo=UTC)),
        ("1899-12-31T23:59:00-00:01", datetime(1900, 1, 1, tzinfo=UTC)),
        ("2026-06-02T12:00:01Z", "in the future"),
        ("1899-12-31T23:59:59Z", "before 1900"),
        ("2026-05-05T10:00:00", "needs a UTC offset"),
        ("2026-05-05T10:00:00 +01:00", datetime(2026, 5, 5, 9, tzinfo=UTC)),
        ("2026-13-05T10:00:00Z", "is not an ISO 8601"),
        (20260505, "expected an ISO 8601"),
    ],
)
def test_times_are_read_the_same_on_the_quick_path_and_the_careful_one(
    text: Any, expected: datetime | str
) -> None:
    if isinstance(expected, datetime):
        assert valid(pledge(1, submitted_at=text)).submitted_at == expected
    else:
        assert expected in refused(pledge(1, submitted_at=text)).reason


def test_a_remembered_time_is_judged_against_each_runs_now() -> None:
    """Times are remembered per run (its ``now``): the same text, fine today, is still
    refused by a run whose clock says it lies in the future, and fine again after."""
    text = "2026-06-02T11:00:00+01:00"
    later, earlier = NOW, NOW - timedelta(days=30)
    assert validate_record(pledge(1, submitted_at=text), PATHS, later).submitted_at == (
        datetime(2026, 6, 2, 10, tzinfo=UTC)
    )
    with pytest.raises(BadRecord, match="in the future"):
        validate_record(pledge(1, submitted_at=text), PATHS, earlier)
    assert validate_record(pledge(1, submitted_at=text), PATHS, later).submitted_at is not None


def test_objectives_and_matches_are_read_the_same_on_the_quick_path_and_the_careful_one() -> None:
    assert valid(pledge(1, objectives=[3, 3, 1])).objectives == [1, 3]
    assert valid(pledge(1, objectives="8;1;8")).objectives == [1, 8]
    assert valid(pledge(1, objectives="1;;2;")).objectives == [1, 2]
    assert valid(pledge(1, objectives="٣;4")).objectives == [3, 4]  # Arabic-Indic three
    assert "is not a GCM objective" in refused(pledge(1, objectives="1;24")).reason
    assert "is not a GCM objective" in refused(pledge(1, objectives="²")).reason
    assert valid(pledge(1, objectives=[])).objectives == []
    assert "is not a GCM objective" in refused(pledge(1, objectives=[1.0])).reason
    assert valid(pledge(9, matches=" P-000008 ")).matches_source_id == "P-000008"
    assert valid(pledge(9, matches=8)).matches_source_id == "8"
    assert valid(pledge(3, matches="  ")).matches_source_id is None
    assert "longer than 200" in refused(pledge(9, matches="x" * 201)).reason


def test_a_record_must_be_an_object_and_the_id_survives_a_refusal() -> None:
    assert "object" in refused(["P-1"]).reason
    bad = refused(pledge(3, form="nope"))
    assert bad.source_id == "P-000003"
    assert source_id_of(pledge(3), PATHS) == "P-000003"
    assert source_id_of({"title": "x"}, PATHS) == ""


def test_the_field_map_reads_other_names_and_nested_objects() -> None:
    raw = {
        "pledgeId": "G-1",
        "name": "Skills partnerships",
        "pledger": {"name": "Kenya", "kind": "Member State", "iso": "KEN"},
        "type": "single",
        "form": "policy",
        "gcmObjectives": [5, 18],
    }
    mapping = check_field_map(
        {
            "source_id": "pledgeId",
            "title": "name",
            "pledger_name": "pledger.name",
            "pledger_type": "pledger.kind",
            "country": "pledger.iso",
            "pledge_type": "type",
            "objectives": "gcmObjectives",
        }
    )
    r = valid(raw, field_paths(mapping, nested=True))
    assert (r.source_id, r.pledger_name, r.pledger_type, r.country) == (
        "G-1",
        "Kenya",
        "member_state",
        "KEN",
    )
    assert r.objectives == [5, 18]
    # In CSV a dot is part of a column name.
    flat = field_paths({"pledger_name": "pledger.name"}, nested=False)
    assert flat["pledger_name"] == ("pledger.name",)


def test_field_map_entries_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown field"):
        check_field_map({"budget": "amount"})
    with pytest.raises(ValueError, match="title"):
        check_field_map({"title": ""})


def test_the_hash_changes_with_content_only() -> None:
    a, b = valid(pledge(5)), valid(pledge(5))
    assert a.content_hash == b.content_hash == content_hash(a)
    assert valid(pledge(5, title="Another")).content_hash != a.content_hash
    assert (
        valid(pledge(5, objectives=[2, 1])).content_hash
        == valid(pledge(5, objectives=[1, 2])).content_hash
    )


def test_csv_cells_cannot_become_formulas() -> None:
    """Free text is guarded wherever it can start a formula; ids, the closed vocabularies,
    times and objectives are written as they are."""
    when = datetime(2026, 5, 12, 14, 0, tzinfo=UTC)
    row = [7, 1, 2, "=1+1", "+1", "-2", "member_state", "KEN", "@x", "single", None]
    row += ["policy", (1 << 1) | (1 << 5), "\tpending", when, None, "ok", None, when, when]
    assert csv_cells(row) == [
        "7",
        "1",
        "2",
        "'=1+1",
        "'+1",
        "'-2",
        "member_state",
        "KEN",
        "'@x",
        "single",
        "",
        "policy",
        "1;5",
        "'\tpending",
        "2026-05-12T14:00:00+00:00",
        "",
        "ok",
        "",
        "2026-05-12T14:00:00+00:00",
        "2026-05-12T14:00:00+00:00",
    ]
    assert len(row) == len(CSV_COLUMNS)


def test_time_cells_from_stored_text_are_those_of_the_times() -> None:
    """On SQLite the export reads times as the text stored (csv_query): each cell is the
    one the datetime itself gives, microseconds or none, however often it is asked."""
    dialect = sqlite.dialect()
    stored_as = Pledge.__table__.c.submitted_at.type.dialect_impl(dialect).bind_processor(dialect)
    assert stored_as is not None
    times = [
        datetime(2026, 5, 12, 14, 0, tzinfo=UTC),
        datetime(2026, 5, 12, 14, 0, 0, 1, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
    ]
    for when in times:
        stored = stored_as(when)  # the text SQLAlchemy writes
        for _ in range(2):  # computed, then remembered
            assert csv_cells_at(stored) == csv_cells_at(when) == when.isoformat()
    with pytest.raises(ValueError, match="a stored time that is not one"):
        csv_cells_at("not a time")


def csv_cells_at(when: datetime | str) -> str:
    """The ``submitted_at`` cell of a row with that time."""
    row: list[Any] = [1, 1, 1, "id", "t", "n", "stakeholder", None, "", "single", None]
    row += ["policy", 0, "", when, None, "", None, when, when]
    return csv_cells(row)[CSV_COLUMNS.index("submitted_at")]


# --- The JSON reader ----------------------------------------------------------------------


def read_json(
    text: str, splits: list[int] | None = None, max_chars: int = 1_000_000
) -> tuple[list[Any], JsonPageReader]:
    reader = JsonPageReader(max_chars)
    out: list[Any] = []
    cuts = [0, *(splits or []), len(text)]
    for start, end in pairwise(cuts):
        out += reader.feed(text[start:end])
    out += reader.close()
    return out, reader


PAGE = json.dumps(
    {
        "page": 2,
        "total_pages": 3,
        "items": [
            pledge(1),
            {"id": "é-2", "title": 'a "quoted" ] } title', "n": 1.5e3},
            [1, 2],
            "x",
        ],
        "next": "/feed?page=3",
        "count": 12345,
    },
    ensure_ascii=False,
)


def test_every_split_of_a_page_gives_the_same_records() -> None:
    expected = json.loads(PAGE)
    for cut in range(1, len(PAGE)):
        items, reader = read_json(PAGE, [cut])
        assert items == expected["items"], cut
        assert reader.meta["count"] == 12345 and reader.meta["next"] == "/feed?page=3", cut
    items, _ = read_json(PAGE, list(range(1, len(PAGE))))  # one character at a time
    assert items == expected["items"]


def test_pages_link_to_the_next_by_url_or_by_number() -> None:
    here = httpx.URL("http://127.0.0.1:9/api/pledges?page=2&size=5")
    _, reader = read_json(PAGE)
    assert reader.next_url(here) == "http://127.0.0.1:9/feed?page=3"
    _, reader = read_json('{"data": [], "page": 2, "total_pages": 3}')
    assert reader.next_url(here) == "http://127.0.0.1:9/api/pledges?page=3&size=5"
    _, reader = read_json('{"data": [], "page": 3, "total_pages": 3}')
    assert reader.next_url(here) is None
    _, reader = read_json('{"items": [], "links": {"next": "https://127.0.0.1:9/p2"}}')
    assert reader.next_url(here) == "https://127.0.0.1:9/p2"
    _, reader = read_json('{"items": [], "next": null, "page": 1, "pages": 9}')
    assert reader.next_url(here) is None
    items, reader = read_json(' \ufeff[{"id": 1}]\n')
    assert items == [{"id": 1}] and reader.next_url(here) is None


MALFORMED = [
    ('{"items": [{"id": 1}, {"id": 2}', "ends early"),
    ('{"items": [{"id": 1} {"id": 2}]}', "expected ','"),
    ('{"items": [{"id": 1}]} extra', "after the end"),
    ('{"records": [}', "Expecting value"),
    ('{"count": 3}', "no list of records"),
    ("<html>oops</html>", "expected a JSON object"),
    ('{"items": [{"id": "' + "x" * 5000 + '"}]}', "longer than"),
    ('{"items": [{"id": 1, "title": "x"} ,, ]}' + " " * 200, "Expecting value"),
    ("", "ends early"),
]


@pytest.mark.parametrize(("text", "reason"), MALFORMED)
def test_malformed_pages_are_refused_with_the_place(text: str, reason: str) -> None:
    with pytest.raises(MalformedBody, match=reason):
        read_json(text, max_chars=1000)


@pytest.mark.parametrize(
    "text",
    [
        PAGE,
        ' \ufeff[{"id": 1}, 2.5e3, [3]]\n',
        '{"data": [], "page": 2, "total_pages": 3}',
        '{"items": 5, "data": [{"id": 1}], "items": [{"id": 2}], "next": null}',
        *(text for text, _ in MALFORMED),
    ],
)
def test_a_page_read_whole_gives_what_reading_it_in_pieces_gives(text: str) -> None:
    def outcome(read: Any) -> Any:
        try:
            return read()
        except MalformedBody as exc:
            return f"refused: {exc}"

    def whole() -> tuple[list[Any], dict[str, Any]]:
        reader = JsonPageReader(1000)
        return reader.read(text), reader.meta

    def fed(splits: list[int]) -> Any:
        def read() -> tuple[list[Any], dict[str, Any]]:
            items, reader = read_json(text, splits, max_chars=1000)
            return items, reader.meta

        return outcome(read)

    got = outcome(whole)
    assert got == fed([])  # the same records, or the same refusal at the same place
    in_pieces = fed([len(text) // 3, len(text) // 2])
    if isinstance(got, tuple):
        assert in_pieces == got
    else:  # refused too, for the same reason (read in pieces, it may say a little more)
        assert in_pieces.startswith(got.rsplit(" at character", 1)[0])


def test_records_read_into_the_record_type_give_the_values_a_mapping_gives() -> None:
    typed = record_type(PATHS)
    assert typed is not None
    records = [pledge(1), {**pledge(2), "note": "unknown", "title": " spaced "}, {"id": 3}]
    text = json.dumps({"items": records, "links": {"next": "/p2"}})
    reader = JsonPageReader(1_000_000, typed)
    rows = reader.read(text)
    assert reader.typed and reader.meta == {"links": {"next": "/p2"}}
    assert [astuple(row) for row in rows] == [
        tuple(r.get(name) for name in PATHS.flat or ()) for r in records
    ]
    assert validate_fields(astuple(rows[0]), NOW) == valid(records[0])

    # Records that do not fit (not an object here), or a page that ends otherwise: as usual.
    for page in (PAGE, json.dumps({"items": records, "errors": []}), "[" + text):
        plain, reader = JsonPageReader(1_000_000), JsonPageReader(1_000_000, typed)
        try:
            expected: Any = plain.read(page)
        except MalformedBody as exc:
            expected = str(exc)
        try:
            got: Any = reader.read(page)
        except MalformedBody as exc:
            got = str(exc)
        assert got == expected and not reader.typed and reader.refused_type
    # A field map that nests, or reads one name twice, has no record type.
    assert record_type(field_paths({"title": "a.b"}, nested=True)) is None
    assert record_type(field_paths({"title": "name", "pledger_name": "name"}, nested=True)) is None


def test_a_malformed_record_far_from_the_end_is_caught_without_reading_on() -> None:
    reader = JsonPageReader()
    with pytest.raises(MalformedBody, match="Expecting"):
        reader.feed('{"items": [{"id": 1, "title": nope}, ' + " " * 500)


# --- The CSV reader -----------------------------------------------------------------------


def read_csv(text: str, splits: list[int] | None = None) -> list[Any]:
    reader = CsvReader()
    out: list[Any] = []
    cuts = [0, *(splits or []), len(text)]
    for start, end in pairwise(cuts):
        out += reader.feed(text[start:end])
    return out + reader.close()


CSV_TEXT = 'id,title,note\r\n1,"Plain",a\r\n2,"Two\r\nlines, and ""quotes""",b\r\n3,Last,"x"'


def test_every_split_of_a_csv_body_gives_the_same_rows() -> None:
    expected = [
        {"id": "1", "title": "Plain", "note": "a"},
        {"id": "2", "title": 'Two\r\nlines, and "quotes"', "note": "b"},
        {"id": "3", "title": "Last", "note": "x"},
    ]
    for cut in range(1, len(CSV_TEXT)):
        assert read_csv(CSV_TEXT, [cut]) == expected, cut
    assert read_csv(CSV_TEXT, list(range(1, len(CSV_TEXT)))) == expected


def test_rows_that_do_not_fit_the_header_are_set_aside() -> None:
    rows = read_csv("id,title\n1,a\n2,b,extra\n\n3\n")
    assert rows[0] == {"id": "1", "title": "a"}
    assert isinstance(rows[1], BadRow) and rows[1].reason == "expected 2 fields, got 3"
    assert isinstance(rows[2], BadRow) and rows[2].values == {"id": "3"}


def test_broken_csv_bodies_are_refused() -> None:
    with pytest.raises(MalformedBody, match="never closed"):
        read_csv('id,title\n1,"open')
    with pytest.raises(MalformedBody, match="header"):
        read_csv("")
    with pytest.raises(MalformedBody, match="twice"):
        read_csv("id,id\n1,2\n")


def test_a_csv_record_is_capped_however_the_body_arrives() -> None:
    """Fed in small chunks, a record that never ends is refused once it passes the cap,
    with no more than the cap held; a record over the cap is refused whole in one chunk
    or split across two, quoted or not; one under the cap is read."""
    for start in ("id,title\n1,", 'id,title\n1,"'):
        reader = CsvReader(max_record_chars=100)
        reader.feed(start)
        with pytest.raises(MalformedBody, match="longer than 100 characters"):
            for _ in range(100):
                reader.feed("x\n" if '"' in start else "xx")
    for long in ("1," + "y" * 150, '1,"' + "y\n" * 75 + '"'):
        body = f"id,title\n{long}\n2,z\n"
        for cut in (None, len(body) // 2):
            reader = CsvReader(max_record_chars=100)
            with pytest.raises(MalformedBody, match="longer than 100 characters"):
                reader.feed(body[:cut]) + reader.feed(body[cut:] if cut else "")
                reader.close()
    reader = CsvReader(max_record_chars=100)
    rows = reader.feed("id,title\n1," + "y" * 90) + reader.feed("\n2,z\n") + reader.close()
    assert rows == [{"id": "1", "title": "y" * 90}, {"id": "2", "title": "z"}]


def test_the_test_servers_csv_reads_back_as_valid_pledges() -> None:
    body = csv_body([pledge(i) for i in range(30)]).decode()
    rows = read_csv(body, [7, 500, 1999])
    paths = field_paths({}, nested=False)
    records = [validate_record(r, paths, NOW) for r in rows]
    assert [r.source_id for r in records] == [f"P-{i:06d}" for i in range(30)]
    assert records[9].matches_source_id == "P-000008"


# --- The scratch file ---------------------------------------------------------------------


FORM = RowForm(
    sqlite.dialect(),
    FeedTarget(7, 3, "feed", "https://example.org/f", "json", {}, "", "", "", ""),
    NOW,
)


async def test_the_stager_keeps_batches_and_rewinds_a_page(tmp_path: Any) -> None:
    stager = Stager(tmp_path, batch_size=3, form=FORM)
    try:
        for i in range(5):
            stager.add(valid(pledge(i)))
        stager.add_bad(Quarantined(6, "", "id: missing", "{}"))
        mark = await stager.mark()
        for i in range(5, 12):
            stager.add(valid(pledge(i)))
            if stager.full:
                await stager.flush()
        stager.add_bad(Quarantined(13, "P-X", "form: missing", "{}"))
        assert (stager.good, stager.bad) == (12, 2)
        stager.rewind(mark)  # the page is fetched again
        assert (stager.good, stager.bad, stager.bad_without_id) == (5, 1, 1)
        stager.add(valid(pledge(99)))
        stager.add(valid(pledge(7)))  # seen before the rewind only: not a duplicate
        rows = [row for batch in await stager.batches() for row in batch]
        got = [row[2] for row in rows]
        assert got == [f"P-{i:06d}" for i in (0, 1, 2, 3, 4, 99, 7)]
        assert rows[0] == FORM.rows([valid(pledge(0))])[0]  # as the database takes it
        assert [q.reason for items in await stager.quarantined() for q in items] == ["id: missing"]
        assert sorted(stager.seen()) == sorted(got)  # P-X went with its page
    finally:
        stager.close()


async def test_the_stager_sets_duplicates_aside_and_skips_what_is_stored(tmp_path: Any) -> None:
    stored = {"P-000001": valid(pledge(1)).content_hash, "P-000002": "another hash"}
    asked: list[list[str]] = []

    async def known(source_ids: list[str]) -> dict[str, str]:
        asked.append(source_ids)
        return {i: stored[i] for i in source_ids if i in stored}

    stager = Stager(tmp_path, batch_size=2, form=FORM, known=known)
    try:
        stager.add_bad(Quarantined(1, "P-000003", "form: missing", "{}"))
        for raw in (pledge(0), pledge(1), pledge(2), pledge(0, title="Copy 0"), pledge(3)):
            stager.add(valid(raw))
            if stager.full:
                await stager.flush()
        assert (stager.good, stager.bad) == (4, 2)
        written = [row[2] for batch in await stager.batches() for row in batch]
        # P-000001 is stored as it is: counted, not written; P-000002 changed.
        assert written == ["P-000000", "P-000002", "P-000003"] and stager.unchanged == 1
        assert asked == [["P-000000", "P-000001"], ["P-000002", "P-000003"]]
        bad = [q for items in await stager.quarantined() for q in items]
        assert [(q.source_id, q.reason) for q in bad] == [
            ("P-000003", "form: missing"),
            ("P-000000", "id 'P-000000' appears again (the first record wins)"),
        ]
        assert json.loads(bad[1].record)["title"] == "Copy 0"  # the copy set aside
        assert [q.position for q in bad] == [1, 5]  # where each stood in the feed
        assert sorted(stager.seen()) == [f"P-{i:06d}" for i in range(4)]
    finally:
        stager.close()


def test_quarantined_records_are_kept_as_readable_json() -> None:
    assert json.loads(quarantined_json({"id": 1, "n": float("nan")}))["unreadable"]
    assert "truncated" in json.loads(quarantined_json({"x": "y" * 20000}))
    assert json.loads(quarantined_json({"big": 10**30})) == {"big": 10**30}


# --- URLs, redirects, schedules, retries ----------------------------------------------------


ALLOWED = feeds.parse_hosts(" pledges.example.org, *.un.org ,127.0.0.1")


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://pledges.example.org/feed.json", True),
        ("http://127.0.0.1:8080/x", True),
        ("https://migration.un.org/pledges", True),
        ("https://un.org/pledges", False),
        ("https://evil.example.org/", False),
        ("http://localhost/", False),
        ("http://2130706433/", False),  # 127.0.0.1 in disguise
        ("http://[::1]/", False),
        ("http://169.254.169.254/latest/meta-data", False),
        ("file:///etc/passwd", False),
        ("https://user:pw@pledges.example.org/", False),
        ("not a url", False),
    ],
)
def test_only_allow_listed_hosts_are_fetched(url: str, ok: bool) -> None:
    if ok:
        feeds.check_url(url, ALLOWED)
    else:
        with pytest.raises(ValueError):
            feeds.check_url(url, ALLOWED)


async def test_redirects_stay_on_the_host_unless_other_hosts_are_allowed() -> None:
    here = httpx.URL("http://pledges.example.org/feed")
    strict = FeedClient(FetchPolicy(ALLOWED))
    lenient = FeedClient(FetchPolicy(ALLOWED, redirect_other_hosts=True))
    try:
        assert strict._redirect(here, "/v2/feed") == httpx.URL("http://pledges.example.org/v2/feed")
        assert strict._redirect(here, "https://pledges.example.org/feed").scheme == "https"
        with pytest.raises(FeedError, match="another host"):
            strict._redirect(here, "https://migration.un.org/feed")
        with pytest.raises(FeedError, match="another host"):
            strict._redirect(here, "http://pledges.example.org:8443/feed")
        assert lenient._redirect(here, "https://migration.un.org/feed").host == "migration.un.org"
        with pytest.raises(FeedError, match="feeds_allowed_hosts"):
            lenient._redirect(here, "http://169.254.169.254/")
    finally:
        await strict.aclose()
        await lenient.aclose()


def test_schedules() -> None:
    assert feeds.next_run_at(3600, None, NOW) == NOW + timedelta(hours=1)
    assert feeds.next_run_at(None, "0 */6 * * *", NOW) == datetime(2026, 6, 1, 18, 0, tzinfo=UTC)
    # Crontab weekdays: 1 is Monday (APScheduler 3 alone would read Tuesday), 0 and 7 Sunday.
    assert feeds.next_run_at(None, "0 9 * * 0", NOW) == datetime(2026, 6, 7, 9, 0, tzinfo=UTC)
    assert feeds.next_run_at(None, "0 9 * * 7", NOW) == datetime(2026, 6, 7, 9, 0, tzinfo=UTC)
    assert feeds.next_run_at(None, "0 9 * * 1-5", NOW) == datetime(2026, 6, 2, 9, 0, tzinfo=UTC)
    assert feeds.check_schedule(None, "30 2 * * 1", 300, NOW) == datetime(
        2026, 6, 8, 2, 30, tzinfo=UTC
    )
    for interval, cron, field in (
        (None, None, "schedule"),
        (3600, "0 * * * *", "schedule"),
        (60, None, "interval_seconds"),
        (None, "* * * * *", "cron"),
        (None, "every day", "cron"),
        (None, "0 0 31 2 *", "cron"),
    ):
        with pytest.raises(Invalid) as caught:
            feeds.check_schedule(interval, cron, 300, NOW)
        assert caught.value.field == field, (interval, cron)


def test_retry_timing() -> None:
    assert [retry_delay(n, 0.5) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert retry_delay(30, 1.0) == 60.0
    assert retry_after_seconds("7", NOW) == 7.0
    assert retry_after_seconds("Mon, 01 Jun 2026 12:00:30 GMT", NOW) == 30.0
    assert retry_after_seconds("Mon, 01 Jun 2026 11:00:00 GMT", NOW) == 0.0
    assert retry_after_seconds("soon", NOW) is None
    assert retry_after_seconds(None, NOW) is None


def test_remembered_conversions_are_made_once_and_stay_right() -> None:
    """Equal instants in any zone are one key (and one value); None passes; past the cap
    the memory starts again, and every value is still converted right."""
    calls: list[Any] = []

    def convert(value: Any) -> Any:
        calls.append(value)
        return None if value is None else value.astimezone(UTC).isoformat()

    memo = _Memo(convert)
    noon = datetime(2026, 5, 12, 12, 0, tzinfo=UTC)
    same_in_paris = datetime(2026, 5, 12, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    assert memo.each([noon, same_in_paris, None, noon]) == [
        "2026-05-12T12:00:00+00:00",
        "2026-05-12T12:00:00+00:00",
        None,
        "2026-05-12T12:00:00+00:00",
    ]
    assert memo.each((None, same_in_paris)) == [None, "2026-05-12T12:00:00+00:00"]
    assert sorted(calls, key=str) == sorted([noon, None], key=str)
    many = [noon + timedelta(seconds=n) for n in range(10_005)]
    for start in range(0, 10_005, 1000):
        part = many[start : start + 1000]
        assert memo.each(part) == [convert(t) for t in part]
    assert len(memo.kept) <= 10_000


# --- The plain path: a page in the common form, validated column by column ---------------

PLAIN = plain_record_type(PATHS)
PLAIN_PAGE = msgspec.json.Decoder(list[PLAIN])  # type: ignore[valid-type]
LENIENT_PAGE = msgspec.json.Decoder(list[record_type(PATHS)])  # type: ignore[misc]


def plain_or_none(raws: list[Any]) -> list[PledgeRecord] | None:
    """What the plain path gives for a page, or None when it leaves the page to the
    record-by-record checks (the read refuses it, or validate_plain does)."""
    text = json.dumps(raws, ensure_ascii=False)
    try:
        rows = PLAIN_PAGE.decode(text)
    except msgspec.DecodeError:
        return None
    try:
        return validate_plain(rows, NOW)
    except NotPlain:
        return None


def record_by_record(raws: list[Any]) -> list[PledgeRecord] | None:
    """The record-by-record checks on the same page; None when any record is refused."""
    try:
        text = json.dumps(raws, ensure_ascii=False)
        return [validate_fields(astuple(row), NOW) for row in LENIENT_PAGE.decode(text)]
    except BadRecord:
        return None


def test_a_plain_page_gives_exactly_what_the_record_checks_give() -> None:
    page = [pledge(i) for i in range(200)]
    page[3]["title"] = "  spaced out  "
    page[4] = {key: value for key, value in page[4].items() if key not in ("region", "url")}
    page[5]["submitted_at"] = None
    page[6]["country"] = None
    page[7]["objectives"] = [5, 5, 2]
    page[8]["status"] = " Fulfilled "
    page[10]["note"] = "an unknown field"
    got = plain_or_none(page)
    assert got is not None and got == record_by_record(page)
    assert [r.content_hash for r in got] == [content_hash(r) for r in got]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", 7),  # a number: the record checks make it text
        ("id", "   "),
        ("title", None),
        ("pledger_type", "UN"),  # an alias
        ("country", "ken"),  # lower case: the record checks read it
        ("pledge_type", "Single"),
        ("matches", "P-000001"),  # on a pledge that is not a matching one
        ("objectives", "3;17"),
        ("objectives", [24]),
        ("objectives", [True]),
        ("submitted_at", "2026-05-05"),  # a bare date
        ("submitted_at", "2026-05-05T10:00:00"),  # no offset
        ("submitted_at", "2099-01-01T00:00:00Z"),  # in the future
        ("url", "ftp://example.org/p"),
        ("title", "x" * 501),
    ],
)
def test_a_page_with_one_record_out_of_the_common_form_is_checked_record_by_record(
    field: str, value: Any
) -> None:
    page = [pledge(i) for i in range(5)]
    page[2] = {**page[2], field: value}
    assert plain_or_none(page) is None
    assert plain_or_none(page[:2] + page[3:]) == record_by_record(page[:2] + page[3:])


def test_a_member_state_without_a_country_and_a_pledge_matching_itself_are_left_to_the_checks() -> (
    None
):
    for changes in (
        {"country": ""},
        {"pledge_type": "matching", "matches": "P-000000"},
        {"pledge_type": "matching", "matches": " "},
    ):
        page = [pledge(0, **changes), pledge(1)]
        assert plain_or_none(page) is None and record_by_record(page) is None


# With the spaces str.strip takes away beyond ASCII (no-break, em space, line separator).
_TEXT = st.text(alphabet=st.sampled_from(" \t aZé-_;:/.0123456789\u00a0\u2003\u2028"), max_size=12)
# Spellings from the common form, the aliases and the errors, to mix into records.
_SPELLINGS = [
    "member_state", "stakeholder", "un_system", "other", "UN", " other",
    "single", "common", "partnership", "matching",
    "financial", "human_resource", "process", "policy", "Policy",
    "KEN", "ken", "KE", "", "P-000001", "P-000002 ",
    "https://x.org/p", " http://x.org ", "ftp://x",
    "2026-05-05T10:00:00Z", "2026-05-05T10:00:00+02:00", "2026-05-05",
    "2026-05-05T10:00:00", "1899-12-31T23:00:00Z", "2026-06-02T12:00:00Z",
    "2026-06-02T13:00:00+00:00", " 2026-05-05T10:00:00Z",
    "3;17", "x" * 201, " " + "x" * 199 + " ", "x" * 200, "\u00a0P-000001",
    3.0, 1e3, -0.0,
]  # fmt: skip
_ANY_VALUE = st.one_of(
    st.none(),
    _TEXT,
    st.integers(-2, 30),
    st.booleans(),
    st.lists(st.integers(-1, 25), max_size=3),
    st.sampled_from(_SPELLINGS),
)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.dictionaries(st.sampled_from(list(SOURCE_NAMES.values())), _ANY_VALUE, max_size=2),
        min_size=1,
        max_size=4,
    )
)
def test_the_plain_path_never_accepts_what_the_record_checks_judge_otherwise(
    changes: list[dict[str, Any]],
) -> None:
    """Each record a page of its own (about a third are taken), then all of them."""
    page = [{**pledge(i), **change} for i, change in enumerate(changes)]
    for one in [[record] for record in page] + [page]:
        got = plain_or_none(one)
        if got is not None:
            assert got == record_by_record(one)


def test_remembered_and_new_values_together_at_the_cap() -> None:
    """A call that passes the cap while some of its values are remembered: all of them
    still come back converted (the memory starts again with this call's values)."""
    memo = _Memo(str)
    assert memo.each(list(range(10_000))) == [str(n) for n in range(10_000)]
    assert memo.each([0, 10_000, 0]) == ["0", "10000", "0"]
    assert set(memo.kept) == {0, 10_000}


def test_times_past_the_calendars_ends_are_refused_not_a_crash() -> None:
    """Year 1 an hour east of UTC is in year 0 in UTC, which datetime cannot hold."""
    for text, reason in (
        ("0001-01-01T00:00:00+01:00", "submitted_at: '0001-01-01T00:00:00+01:00' is out of range"),
        ("9999-12-31T23:30:00-01:00", "submitted_at: '9999-12-31T23:30:00-01:00' is out of range"),
    ):
        assert refused(pledge(1, submitted_at=text)).reason == reason
        assert plain_or_none([pledge(1, submitted_at=text)]) is None


def test_adding_a_page_at_once_is_adding_each_record(tmp_path: Any) -> None:
    """Duplicates within the page, or of an earlier page: the record by record way."""
    pages = [
        [valid(pledge(i)) for i in range(3)],
        [valid(pledge(3)), valid(pledge(4, title="Twice")), valid(pledge(4))],
        [valid(pledge(5)), valid(pledge(1, title="Again"))],
    ]
    at_once = Stager(tmp_path, batch_size=100, form=FORM)
    one_by_one = Stager(tmp_path, batch_size=100, form=FORM)
    try:
        for page in pages:
            at_once.add_all(page)
            for record in page:
                one_by_one.add(record)
        for stager in (at_once, one_by_one):
            assert (stager.good, stager.bad, sorted(stager.seen())) == (
                6,
                2,
                [f"P-{i:06d}" for i in range(6)],
            )
        assert at_once._good == one_by_one._good and at_once._bad == one_by_one._bad
        assert [q.position for q in at_once._bad] == [6, 8]  # where each stood
    finally:
        at_once.close()
        one_by_one.close()


async def test_the_page_that_decides_lets_go_of_the_pages_asked_beside_it(tmp_path: Any) -> None:
    """Page 2 is gone (410) while page 3, asked beside it, waits out a Retry-After: page 2
    decides (the feed is read in full) and page 3's wait is given up, not waited out."""
    page_3_waits = asyncio.Event()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        page_3_waits.set()
        await asyncio.Event().wait()  # until given up

    class Probed(Fetcher):
        async def _probe(self, url: str, headers: dict[str, str]) -> Any:
            if url.endswith("=2"):
                await page_3_waits.wait()
                raise FeedError("HTTP 410 Gone", http_status=410)
            raise Retryable("HTTP 503", http_status=503, retry_after=2.0)

    later = tuple((f"https://example.org/f?page={n}", f"e{n}", "") for n in (2, 3))
    target = FeedTarget(7, 3, "feed", "https://example.org/f", "json", {}, "", "", "e1", "", later)
    client = FeedClient(FetchPolicy(ALLOWED))
    stager = Stager(tmp_path, batch_size=10, form=FORM)
    try:
        fetcher = Probed(client, target, stager, NOW, sleep=sleep)
        async with asyncio.timeout(10):
            assert await fetcher._later_pages_unchanged() is False
        assert waits == [2.0]
    finally:
        stager.close()
        await client.aclose()
