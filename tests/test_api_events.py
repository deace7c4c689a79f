"""Events over the HTTP API: create, read, list and filter, change, move, delete; on both back ends.

Every refusal must be a 4xx naming the field in ``extra[0]["key"]``, and must leave the
stored rows exactly as they were.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from tests.conftest import Api
from tests.test_api_processes import make_process

NY = "America/New_York"


def event_body(process_id: int, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "process_id": process_id,
        "kind": "consultation",
        "title": "Informal consultations",
        "time_zone": NY,
        "start": "2030-03-05T10:00:00-05:00",
        "end": "2030-03-05T13:00:00-05:00",
        "status": "published",
    }
    body.update(changes)
    return body


async def make_event(api: Api, process_id: int, **changes: Any) -> dict[str, Any]:
    r = await api.client.post(
        "/api/events", json=event_body(process_id, **changes), headers=api.auth
    )
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


async def read(api: Api, event_id: int) -> dict[str, Any]:
    r = await api.client.get(f"/api/events/{event_id}", headers=api.auth)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


async def listed(api: Api, **params: Any) -> list[dict[str, Any]]:
    r = await api.client.get("/api/events", params=params, headers=api.auth)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def titles(items: list[dict[str, Any]]) -> list[str]:
    return [str(i["title"]) for i in items]


def refused_field(r: Any, status: int = 400) -> str:
    assert r.status_code == status, r.text
    key: str = r.json()["extra"][0]["key"]
    return key


def without_timestamps(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in ("updated_at",)}


# --- Create, read, list -------------------------------------------------------------------


async def test_create_read_list_event(api: Api) -> None:
    pid = await make_process(api)
    forum = await make_event(
        api,
        pid,
        kind="review_forum",
        title="  International Migration Review Forum  ",
        start="2030-05-14T10:00:00-04:00",
        end="2030-05-17T18:00:00-04:00",
    )
    created = await make_event(
        api,
        pid,
        kind="stakeholder_hearing",
        title="Multi-stakeholder hearing",
        description="Hosted by the President of the General Assembly.",
        parent_id=forum["id"],
        venue="Conference Room 4",
        online_url="https://webtv.un.org/hearing",
        # Given in UTC; the event's own zone is New York.
        start="2030-05-13T14:00:00Z",
        end="2030-05-13T22:00:00Z",
        registration_opens_at="2030-02-12T00:00:00-05:00",
        registration_closes_at="2030-04-29T23:59:00-04:00",
        capacity=300,
    )
    assert forum["title"] == "International Migration Review Forum"
    assert created["start"] == "2030-05-13T14:00:00Z"
    assert created["end"] == "2030-05-13T22:00:00Z"
    assert created["start_local"] == "2030-05-13T10:00:00-04:00"
    assert created["end_local"] == "2030-05-13T18:00:00-04:00"
    assert created["registration_opens_at"] == "2030-02-12T05:00:00Z"
    assert created["registration_closes_at"] == "2030-04-30T03:59:00Z"
    assert created["capacity"] == 300
    assert created["parent_id"] == forum["id"]
    assert created["online_url"] == "https://webtv.un.org/hearing"
    assert created["status"] == "published"
    assert created["sequence"] == 0
    assert created["pinned"] is False
    assert created["rrule"] is None and created["exdates"] == []
    assert created["series_end"] == created["end"]
    assert created["calendar_url"] == f"/api/events/{created['id']}/calendar.ics"
    assert created["uid"] != forum["uid"]

    # Anyone may read a published event, and gets what was stored.
    r = await api.client.get(f"/api/events/{created['id']}")
    assert r.status_code == 200
    assert r.json() == created
    items = (await api.client.get("/api/events", params={"process_id": pid})).json()["items"]
    assert [e["id"] for e in items] == [created["id"], forum["id"]]  # ordered by start


async def test_unknown_event_is_404(api: Api) -> None:
    r = await api.client.get("/api/events/999")
    assert r.status_code == 404
    r = await api.client.patch("/api/events/999", json={"title": "x"}, headers=api.auth)
    assert r.status_code == 404
    r = await api.client.get("/api/events/999/calendar.ics")
    assert r.status_code == 404


async def test_a_recurring_event_is_normalized(api: Api) -> None:
    pid = await make_process(api)
    created = await make_event(
        api,
        pid,
        kind="dialogue_meeting",
        start="2030-01-08T10:00:00-05:00",
        end="2030-01-08T11:00:00-05:00",
        rrule="RRULE:freq=weekly;count=4",
        exdates=["2030-01-15T15:00:00Z"],
    )
    assert created["rrule"] == "FREQ=WEEKLY;COUNT=4"
    assert created["exdates"] == ["2030-01-15T15:00:00Z"]
    # The series ends with its fourth occurrence.
    assert created["series_end"] == "2030-01-29T16:00:00Z"
    # A local UNTIL is read in the event's zone and stored in UTC.
    until = await make_event(
        api,
        pid,
        start="2030-01-08T10:00:00-05:00",
        end="2030-01-08T11:00:00-05:00",
        rrule="FREQ=WEEKLY;UNTIL=20300122",
    )
    assert until["rrule"] == "FREQ=WEEKLY;UNTIL=20300123T045959Z"
    assert until["series_end"] == "2030-01-22T16:00:00Z"


# --- Refusals name the field and write nothing ---------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"time_zone": "Mars/Olympus_Mons"}, "time_zone"),
        ({"time_zone": "localtime"}, "time_zone"),
        ({"end": "2030-03-05T09:00:00-05:00"}, "end"),
        ({"end": "2030-03-05T10:00:00-05:00"}, "end"),
        ({"start": "2030-03-05T10:00:00"}, "start"),
        ({"end": "2030-03-05T13:00:00"}, "end"),
        ({"rrule": "FREQ=SECONDLY"}, "rrule"),
        ({"rrule": "FREQ=HOURLY;COUNT=3"}, "rrule"),
        ({"rrule": "garbage"}, "rrule"),
        ({"rrule": "FREQ=WEEKLY;COUNT=2;UNTIL=20300401"}, "rrule"),
        ({"rrule": "FREQ=WEEKLY;COUNT=0"}, "rrule"),
        ({"rrule": "FREQ=WEEKLY;BYDAY=XX"}, "rrule"),
        ({"kind": "party"}, "kind"),
        ({"status": "archived"}, "status"),
        ({"title": ""}, "title"),
        ({"title": "   "}, "title"),
        ({"rrule": "FREQ=WEEKLY;UNTIL=99991231"}, "rrule"),
        ({"time_zone": "Asia/Tokyo", "rrule": "FREQ=WEEKLY;UNTIL=99991231T235959Z"}, "rrule"),
        ({"start": "0001-01-01T00:00:00+05:00"}, "start"),
        ({"start": "9999-12-31T20:00:00-05:00", "end": "9999-12-31T23:00:00-05:00"}, "start"),
        ({"end": "9000-01-01T00:00:00Z"}, "end"),
        ({"registration_opens_at": "1800-01-01T00:00:00Z"}, "registration_opens_at"),
        (
            {
                "rrule": "FREQ=DAILY",
                "exdates": ["2030-03-06T15:00:00Z", "0001-01-01T00:00:00+01:00"],
            },
            "exdates[1]",
        ),
        ({"online_url": "javascript:alert(1)"}, "online_url"),
        ({"capacity": -1}, "capacity"),
        (
            {"rrule": "FREQ=WEEKLY;COUNT=4", "exdates": ["2030-03-06T15:00:00Z"]},
            "exdates[0]",
        ),
        (
            {
                "rrule": "FREQ=WEEKLY;COUNT=4",
                "exdates": ["2030-03-12T10:00:00-04:00", "2030-03-19T10:00:00-05:00"],
            },
            "exdates[1]",
        ),
        ({"exdates": ["2030-03-05T15:00:00Z"]}, "exdates"),
        ({"placement": {"days": -1}}, "relative_to_id"),
        (
            {
                "registration_opens_at": "2030-02-01T00:00:00Z",
                "registration_closes_at": "2030-01-01T00:00:00Z",
            },
            "registration_closes_at",
        ),
    ],
)
async def test_create_refusals_name_the_field(
    api: Api, changes: dict[str, Any], field: str
) -> None:
    pid = await make_process(api)
    r = await api.client.post("/api/events", json=event_body(pid, **changes), headers=api.auth)
    assert refused_field(r) == field
    assert r.json()["extra"][0]["message"]
    assert await listed(api, process_id=pid) == []


async def test_unknown_fields_and_malformed_json_are_refused(api: Api) -> None:
    pid = await make_process(api)
    r = await api.client.post("/api/events", json=event_body(pid, colour="red"), headers=api.auth)
    assert r.status_code == 400
    assert "colour" in r.text
    headers = {**api.auth, "Content-Type": "application/json"}
    r = await api.client.post("/api/events", content=b'{"process_id": 1, "kind": ', headers=headers)
    assert r.status_code == 400
    r = await api.client.post("/api/events", content=b"[1, 2, 3]", headers=headers)
    assert r.status_code == 400
    event = await make_event(api, pid)
    r = await api.client.patch(f"/api/events/{event['id']}", content=b'{"title": ', headers=headers)
    assert r.status_code == 400
    assert [e["id"] for e in await listed(api, process_id=pid)] == [event["id"]]
    assert (await read(api, event["id"]))["sequence"] == 0


async def test_links_must_stay_inside_the_process(api: Api) -> None:
    pid = await make_process(api, "gcm")
    other_pid = await make_process(api, "hlpf")
    foreign = await make_event(api, other_pid, title="Another process's forum")
    r = await api.client.post(
        "/api/events", json=event_body(pid, parent_id=foreign["id"]), headers=api.auth
    )
    assert refused_field(r) == "parent_id"
    r = await api.client.post(
        "/api/events",
        json=event_body(pid, relative_to_id=foreign["id"], placement={"days": -1}),
        headers=api.auth,
    )
    assert refused_field(r) == "relative_to_id"
    r = await api.client.post(
        "/api/events", json=event_body(pid, parent_id=99_999), headers=api.auth
    )
    assert refused_field(r) == "parent_id"
    r = await api.client.post(
        "/api/events",
        json=event_body(pid, relative_to_id=99_999, placement={"days": 1}),
        headers=api.auth,
    )
    assert refused_field(r) == "relative_to_id"
    assert await listed(api, process_id=pid) == []
    # Moving an existing event under another process's event is refused the same way.
    own = await make_event(api, pid)
    r = await api.client.patch(
        f"/api/events/{own['id']}", json={"parent_id": foreign["id"]}, headers=api.auth
    )
    assert refused_field(r) == "parent_id"
    assert (await read(api, own["id"]))["parent_id"] is None


async def test_placement_errors_name_the_placement_field(api: Api) -> None:
    pid = await make_process(api)
    ref = await make_event(api, pid)
    cases = [
        ({"days": "two"}, "placement.days"),
        ({"at": "25:00"}, "placement.at"),
        ({"at": "10:00+02:00"}, "placement.at"),
        ({"at": "10:00", "end_at": "09:00"}, "placement.end_at"),
        ({"duration_minutes": 0}, "placement.duration_minutes"),
        # Far enough to leave the calendar (and the range of dates a cycle may use).
        ({"years": 9000}, "placement"),
        ({"years": -300}, "placement"),
    ]
    for placement, field in cases:
        r = await api.client.post(
            "/api/events",
            json=event_body(pid, relative_to_id=ref["id"], placement=placement),
            headers=api.auth,
        )
        assert refused_field(r) == field, placement
    r = await api.client.post(
        "/api/events", json=event_body(pid, relative_to_id=ref["id"]), headers=api.auth
    )
    assert refused_field(r) == "placement"
    assert [e["id"] for e in await listed(api, process_id=pid)] == [ref["id"]]


async def test_loops_are_refused_on_patch(api: Api) -> None:
    pid = await make_process(api)
    a = await make_event(api, pid, title="A")
    b = await make_event(api, pid, title="B", relative_to_id=a["id"], placement={"days": 1})
    c = await make_event(api, pid, title="C", relative_to_id=b["id"], placement={"days": 1})
    assert c["start_local"] == "2030-03-07T10:00:00-05:00"
    # A placed after C, which is (through B) placed after A: a loop.
    r = await api.client.patch(
        f"/api/events/{a['id']}",
        json={"relative_to_id": c["id"], "placement": {"days": 1}},
        headers=api.auth,
    )
    assert refused_field(r) == "relative_to_id"
    r = await api.client.patch(
        f"/api/events/{a['id']}",
        json={"relative_to_id": a["id"], "placement": {"days": 1}},
        headers=api.auth,
    )
    assert refused_field(r) == "relative_to_id"
    assert await read(api, a["id"]) == a
    # Only one half of a placement is refused too.
    r = await api.client.patch(
        f"/api/events/{a['id']}", json={"placement": {"days": 2}}, headers=api.auth
    )
    assert refused_field(r) == "relative_to_id"
    r = await api.client.patch(f"/api/events/{b['id']}", json={"placement": None}, headers=api.auth)
    assert refused_field(r) == "placement"
    # Parents cannot loop either.
    r = await api.client.patch(
        f"/api/events/{b['id']}", json={"parent_id": a["id"]}, headers=api.auth
    )
    assert r.status_code == 200, r.text
    r = await api.client.patch(
        f"/api/events/{a['id']}", json={"parent_id": b["id"]}, headers=api.auth
    )
    assert refused_field(r) == "parent_id"
    r = await api.client.patch(
        f"/api/events/{a['id']}", json={"parent_id": a["id"]}, headers=api.auth
    )
    assert refused_field(r) == "parent_id"
    assert (await read(api, a["id"]))["parent_id"] is None
    assert (await read(api, b["id"]))["placement"] == {"days": 1}


# --- Filters and paging --------------------------------------------------------------------


async def test_filters_by_process_kind_status_and_window(api: Api) -> None:
    pid = await make_process(api, "gcm")
    other_pid = await make_process(api, "hlpf")
    await make_event(
        api,
        pid,
        title="January consultation",
        start="2030-01-10T10:00:00-05:00",
        end="2030-01-10T12:00:00-05:00",
    )
    await make_event(
        api,
        pid,
        kind="dialogue_meeting",
        title="Weekly dialogue",
        start="2030-01-07T09:00:00-05:00",
        end="2030-01-07T10:00:00-05:00",
        rrule="FREQ=WEEKLY;COUNT=8",  # last meeting 2030-02-25
    )
    await make_event(
        api,
        pid,
        kind="dialogue_meeting",
        title="Monthly briefing",
        start="2029-06-03T09:00:00-04:00",
        end="2029-06-03T10:00:00-04:00",
        rrule="FREQ=MONTHLY",  # endless
        status="postponed",
    )
    await make_event(
        api,
        pid,
        kind="round_table",
        title="February round table",
        start="2030-02-12T10:00:00-05:00",
        end="2030-02-12T13:00:00-05:00",
        status="cancelled",
    )
    await make_event(
        api,
        pid,
        kind="plenary",
        title="April plenary",
        start="2030-04-02T10:00:00-04:00",
        end="2030-04-02T18:00:00-04:00",
        status="draft",
    )
    await make_event(
        api,
        other_pid,
        kind="plenary",
        title="Another process's plenary",
        start="2030-02-20T10:00:00-05:00",
        end="2030-02-20T18:00:00-05:00",
    )
    everything = await listed(api)
    assert titles(everything) == [
        "Monthly briefing",
        "Weekly dialogue",
        "January consultation",
        "February round table",
        "Another process's plenary",
        "April plenary",
    ]
    assert titles(await listed(api, process_id=other_pid)) == ["Another process's plenary"]
    assert titles(await listed(api, process_id=pid, kind="plenary")) == ["April plenary"]
    assert titles(await listed(api, kind="dialogue_meeting")) == [
        "Monthly briefing",
        "Weekly dialogue",
    ]
    assert titles(await listed(api, status="cancelled")) == ["February round table"]
    assert titles(await listed(api, status="draft")) == ["April plenary"]
    assert titles(await listed(api, process_id=pid, status="published")) == [
        "Weekly dialogue",
        "January consultation",
    ]
    # February: the weekly series (started in January) overlaps it, and so does the endless
    # monthly one; the January consultation is over and the April plenary not yet begun.
    february = await listed(
        api, **{"from": "2030-02-01T00:00:00-05:00", "to": "2030-03-01T00:00:00-05:00"}
    )
    assert titles(february) == [
        "Monthly briefing",
        "Weekly dialogue",
        "February round table",
        "Another process's plenary",
    ]
    # After the weekly series has ended it is no longer in the window.
    march = await listed(api, process_id=pid, **{"from": "2030-02-26T00:00:00Z"})
    assert titles(march) == ["Monthly briefing", "April plenary"]
    # `to` is exclusive of events that start at it.
    before = await listed(api, process_id=pid, to="2030-01-10T15:00:00Z")
    assert titles(before) == ["Monthly briefing", "Weekly dialogue"]
    # An event that ends exactly when the window opens does not overlap it.
    after = await listed(api, process_id=pid, **{"from": "2030-01-10T17:00:00Z"})
    assert "January consultation" not in titles(after)
    assert "Weekly dialogue" in titles(after)


async def test_list_refusals_name_the_parameter(api: Api) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"kind": "party"}, "kind"),
        ({"status": "archived"}, "status"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"offset": -1}, "offset"),
        ({"process_id": 0}, "process_id"),
        ({"from": "2030-03-01T00:00:00Z", "to": "2030-02-01T00:00:00Z"}, "to"),
        ({"from": "2030-03-01T00:00:00"}, "from"),
        ({"to": "2030-03-01T00:00:00"}, "to"),
    ]
    for params, field in cases:
        r = await api.client.get("/api/events", params=params)
        assert refused_field(r) == field, params


async def test_limit_and_offset_page_through_events(api: Api) -> None:
    pid = await make_process(api)
    for day in (5, 1, 4, 2, 3):
        await make_event(
            api,
            pid,
            title=f"Day {day}",
            start=f"2030-03-0{day}T10:00:00-05:00",
            end=f"2030-03-0{day}T11:00:00-05:00",
        )
    pages = []
    for offset in (0, 2, 4, 6):
        r = await api.client.get("/api/events", params={"limit": 2, "offset": offset})
        assert r.status_code == 200
        body = r.json()
        assert (body["limit"], body["offset"]) == (2, offset)
        pages.append(titles(body["items"]))
    assert pages == [["Day 1", "Day 2"], ["Day 3", "Day 4"], ["Day 5"], []]


async def test_postponed_and_cancelled_are_public_drafts_are_not(api: Api) -> None:
    pid = await make_process(api)
    ids = {}
    for status in ("draft", "published", "postponed", "cancelled"):
        ids[status] = (await make_event(api, pid, title=status, status=status))["id"]
    public = (await api.client.get("/api/events", params={"process_id": pid})).json()["items"]
    assert sorted(e["status"] for e in public) == ["cancelled", "postponed", "published"]
    for status in ("published", "postponed", "cancelled"):
        r = await api.client.get(f"/api/events/{ids[status]}")
        assert r.status_code == 200
        assert r.json()["status"] == status
    assert (await api.client.get(f"/api/events/{ids['draft']}")).status_code == 404
    r = await api.client.get("/api/events", params={"status": "draft"})
    assert r.json()["items"] == []
    # An organizer of another process does not see the draft either.
    stranger = {"Authorization": f"Bearer {await api.new_token('Another secretariat')}"}
    r = await api.client.get(f"/api/events/{ids['draft']}", headers=stranger)
    assert r.status_code == 404
    r = await api.client.patch(
        f"/api/events/{ids['draft']}", json={"title": "Mine"}, headers=stranger
    )
    assert r.status_code == 404
    # Publishing the draft makes it public.
    r = await api.client.patch(
        f"/api/events/{ids['draft']}", json={"status": "published"}, headers=api.auth
    )
    assert r.status_code == 200
    assert (await api.client.get(f"/api/events/{ids['draft']}")).status_code == 200


# --- Changing, moving, deleting ------------------------------------------------------------


async def test_patch_changes_only_the_fields_sent_and_bumps_sequence(api: Api) -> None:
    pid = await make_process(api)
    event = await make_event(api, pid, venue="Conference Room 1", capacity=50)
    r = await api.client.patch(
        f"/api/events/{event['id']}",
        json={
            "title": " Informal consultations (second reading) ",
            "venue": "Trusteeship Council Chamber",
            "capacity": None,
            "status": "postponed",
            "kind": "policy_debate",
        },
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["moved"] == []
    changed = body["event"]
    assert changed["title"] == "Informal consultations (second reading)"
    assert changed["venue"] == "Trusteeship Council Chamber"
    assert changed["capacity"] is None
    assert changed["status"] == "postponed"
    assert changed["kind"] == "policy_debate"
    assert changed["sequence"] == event["sequence"] + 1
    assert changed["start"] == event["start"] and changed["end"] == event["end"]
    assert changed["uid"] == event["uid"]
    assert await read(api, event["id"]) == changed
    # Each change bumps the sequence again.
    r = await api.client.patch(
        f"/api/events/{event['id']}",
        json={"rrule": "FREQ=DAILY;COUNT=3", "exdates": ["2030-03-06T15:00:00Z"]},
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    again = r.json()["event"]
    assert again["sequence"] == event["sequence"] + 2
    assert again["series_end"] == "2030-03-07T18:00:00Z"
    # A new time zone keeps the instant and shows it in the new zone.
    r = await api.client.patch(
        f"/api/events/{event['id']}", json={"time_zone": "Europe/Zurich"}, headers=api.auth
    )
    assert r.status_code == 200, r.text
    assert r.json()["event"]["start"] == event["start"]
    assert r.json()["event"]["start_local"] == "2030-03-05T16:00:00+01:00"


async def test_patch_start_cascades_to_dependents(api: Api) -> None:
    pid = await make_process(api)
    forum = await make_event(
        api,
        pid,
        kind="review_forum",
        title="Forum",
        start="2030-05-14T10:00:00-04:00",
        end="2030-05-17T18:00:00-04:00",
    )
    hearing = await make_event(
        api,
        pid,
        kind="stakeholder_hearing",
        title="Hearing",
        # The placement decides the times; these are overridden.
        start="2030-01-01T00:00:00Z",
        end="2030-01-01T01:00:00Z",
        relative_to_id=forum["id"],
        placement={"days": -1, "at": "10:00", "end_at": "18:00"},
    )
    briefing = await make_event(
        api,
        pid,
        title="Briefing in Geneva",
        time_zone="Europe/Zurich",
        start="2030-01-01T08:00:00Z",
        end="2030-01-01T09:30:00Z",
        relative_to_id=hearing["id"],
        placement={"weeks": -1, "at": "15:00"},
    )
    assert hearing["start_local"] == "2030-05-13T10:00:00-04:00"
    assert hearing["end_local"] == "2030-05-13T18:00:00-04:00"
    assert hearing["placement"] == {"days": -1, "at": "10:00", "end_at": "18:00"}
    assert briefing["start_local"] == "2030-05-06T15:00:00+02:00"
    assert briefing["end_local"] == "2030-05-06T16:30:00+02:00"  # keeps its 90 minutes

    # Three weeks later; the end follows with the same local length.
    r = await api.client.patch(
        f"/api/events/{forum['id']}",
        json={"start": "2030-06-04T10:00:00-04:00"},
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["event"]["start_local"] == "2030-06-04T10:00:00-04:00"
    assert body["event"]["end_local"] == "2030-06-07T18:00:00-04:00"
    assert body["event"]["sequence"] == forum["sequence"] + 1
    assert [(m["type"], m["id"]) for m in body["moved"]] == [
        ("event", forum["id"]),
        ("event", hearing["id"]),
        ("event", briefing["id"]),
    ]
    moved_hearing = await read(api, hearing["id"])
    assert moved_hearing["start_local"] == "2030-06-03T10:00:00-04:00"
    assert moved_hearing["end_local"] == "2030-06-03T18:00:00-04:00"
    assert moved_hearing["sequence"] == hearing["sequence"] + 1
    assert moved_hearing["pinned"] is False
    moved_briefing = await read(api, briefing["id"])
    assert moved_briefing["start_local"] == "2030-05-27T15:00:00+02:00"
    assert moved_briefing["end_local"] == "2030-05-27T16:30:00+02:00"

    # Moving the hearing itself by PATCH pins it; the briefing follows the hearing.
    r = await api.client.patch(
        f"/api/events/{hearing['id']}",
        json={"start": "2030-06-02T10:00:00-04:00", "end": "2030-06-02T16:00:00-04:00"},
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    assert r.json()["event"]["pinned"] is True
    assert (await read(api, briefing["id"]))["start_local"] == "2030-05-26T15:00:00+02:00"
    # ...so the next forum move leaves the hearing (and so the briefing) where they are.
    r = await api.client.patch(
        f"/api/events/{forum['id']}",
        json={"start": "2030-06-11T10:00:00-04:00"},
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    assert [m["id"] for m in r.json()["moved"]] == [forum["id"]]
    assert (await read(api, hearing["id"]))["start_local"] == "2030-06-02T10:00:00-04:00"


async def test_patch_placement_replaces_the_times(api: Api) -> None:
    pid = await make_process(api)
    forum = await make_event(api, pid, title="Forum")
    loose = await make_event(
        api,
        pid,
        title="Side event",
        start="2030-03-20T10:00:00-04:00",
        end="2030-03-20T11:00:00-04:00",
    )
    dependent = await make_event(
        api, pid, title="Follow-up", relative_to_id=loose["id"], placement={"days": 1}
    )
    assert dependent["start_local"] == "2030-03-21T10:00:00-04:00"
    r = await api.client.patch(
        f"/api/events/{loose['id']}",
        json={"relative_to_id": forum["id"], "placement": {"days": 2, "at": "15:00"}},
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    assert r.json()["event"]["start_local"] == "2030-03-07T15:00:00-05:00"
    assert r.json()["event"]["end_local"] == "2030-03-07T16:00:00-05:00"
    # Its own dependent follows it.
    assert (await read(api, dependent["id"]))["start_local"] == "2030-03-08T15:00:00-05:00"


async def test_a_failing_patch_changes_nothing(api: Api) -> None:
    pid = await make_process(api)
    forum = await make_event(
        api,
        pid,
        title="Forum",
        rrule="FREQ=WEEKLY;COUNT=3",
        exdates=["2030-03-12T14:00:00Z"],
    )
    hearing = await make_event(
        api,
        pid,
        title="Hearing",
        relative_to_id=forum["id"],
        placement={"days": -1, "at": "09:00", "end_at": "12:00"},
    )
    milestone = await api.client.post(
        "/api/milestones",
        json={
            "process_id": pid,
            "kind": "report_deadline",
            "title": "Reports due",
            "due": "2030-01-01T00:00:00Z",
            "time_zone": NY,
            "relative_to_id": forum["id"],
            "placement": {"weeks": -2, "at": "23:59"},
            "status": "published",
        },
        headers=api.auth,
    )
    assert milestone.status_code == 201, milestone.text
    before = [await read(api, forum["id"]), await read(api, hearing["id"])]
    milestone_before = milestone.json()
    bad_patches = [
        ({"start": "2030-04-02T10:00:00-04:00", "rrule": "FREQ=SECONDLY"}, "rrule"),
        ({"start": "2030-04-02T10:00:00-04:00", "time_zone": "Nowhere/Land"}, "time_zone"),
        ({"start": "2030-04-02T10:00:00-04:00", "end": "2030-04-02T09:00:00-04:00"}, "end"),
        ({"end": "2030-03-05T09:00:00-05:00"}, "end"),
        ({"start": "2030-04-02T10:00:00"}, "start"),
        ({"start": "2030-04-02T10:00:00-04:00", "parent_id": 99_999}, "parent_id"),
        ({"start": "2030-04-02T10:00:00-04:00", "exdates": ["2030-04-03T14:00:00Z"]}, "exdates[0]"),
        ({"title": "Renamed", "kind": "party"}, "kind"),
        ({"title": "   "}, "title"),
        ({"start": "2300-01-01T10:00:00Z"}, "start"),
        ({"title": "Renamed", "rrule": None}, "exdates"),
        (
            {
                "start": "2030-04-02T10:00:00-04:00",
                "registration_opens_at": "2030-03-01T00:00:00Z",
                "registration_closes_at": "2030-02-01T00:00:00Z",
            },
            "registration_closes_at",
        ),
    ]
    for patch, field in bad_patches:
        r = await api.client.patch(f"/api/events/{forum['id']}", json=patch, headers=api.auth)
        assert refused_field(r) == field, patch
    after = [await read(api, forum["id"]), await read(api, hearing["id"])]
    assert after == before
    r = await api.client.get(f"/api/milestones/{milestone_before['id']}")
    assert r.json() == milestone_before
    # The same move without the bad field goes through, with its cascade.
    r = await api.client.patch(
        f"/api/events/{forum['id']}",
        json={"start": "2030-04-02T10:00:00-04:00", "exdates": ["2030-04-09T14:00:00Z"]},
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    assert (await read(api, hearing["id"]))["start_local"] == "2030-04-01T09:00:00-04:00"


async def test_moving_a_series_across_dst_keeps_its_exdates(api: Api) -> None:
    """An EXDATE follows its occurrence in local time when the series moves over a DST change."""
    pid = await make_process(api)
    series = await make_event(
        api,
        pid,
        kind="dialogue_meeting",
        title="Weekly dialogue",
        start="2027-03-09T10:00:00-05:00",
        end="2027-03-09T11:00:00-05:00",
        rrule="FREQ=WEEKLY;COUNT=6",
        exdates=["2027-04-06T10:00:00-04:00"],
    )
    # One week later: the first meeting is now in summer time.
    r = await api.client.patch(
        f"/api/events/{series['id']}",
        json={"start": "2027-03-16T10:00:00-04:00"},
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    assert r.json()["event"]["exdates"] == ["2027-04-13T14:00:00Z"]
    r = await api.client.post(
        f"/api/events/{series['id']}/move",
        json={"start": "2027-03-02T10:00:00-05:00"},
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    moved = await read(api, series["id"])
    assert moved["exdates"] == ["2027-03-30T14:00:00Z"]
    # Still a valid event: a later change is accepted.
    r = await api.client.patch(
        f"/api/events/{series['id']}", json={"title": "Weekly dialogue (moved)"}, headers=api.auth
    )
    assert r.status_code == 200, r.text
    timeline = await api.client.get(f"/api/processes/{pid}/timeline", headers=api.auth)
    starts = [i["start_local"] for i in timeline.json()["items"]]
    assert starts == [
        "2027-03-02T10:00:00-05:00",
        "2027-03-09T10:00:00-05:00",
        "2027-03-16T10:00:00-04:00",
        "2027-03-23T10:00:00-04:00",
        "2027-04-06T10:00:00-04:00",
    ]


async def test_move_endpoint_previews_and_refuses_bad_ends(api: Api) -> None:
    pid = await make_process(api)
    forum = await make_event(api, pid, title="Forum")
    dep = await make_event(
        api, pid, title="Dependent", relative_to_id=forum["id"], placement={"days": 1}
    )
    r = await api.client.post(
        f"/api/events/{forum['id']}/move",
        json={"start": "2030-03-12T10:00:00-04:00", "preview": True},
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    assert r.json()["preview"] is True
    assert [m["new_start"] for m in r.json()["moved"]] == [
        "2030-03-12T14:00:00Z",
        "2030-03-13T14:00:00Z",
    ]
    assert await read(api, forum["id"]) == forum
    assert await read(api, dep["id"]) == dep
    r = await api.client.post(
        f"/api/events/{forum['id']}/move",
        json={"start": "2030-03-12T10:00:00-04:00", "end": "2030-03-12T09:00:00-04:00"},
        headers=api.auth,
    )
    assert refused_field(r) == "end"
    r = await api.client.post(
        f"/api/events/{forum['id']}/move",
        json={"start": "2030-03-12T10:00:00"},
        headers=api.auth,
    )
    assert refused_field(r) == "start"
    r = await api.client.post(
        f"/api/events/{forum['id']}/move",
        json={"start": "9999-12-31T22:00:00-05:00"},
        headers=api.auth,
    )
    assert refused_field(r) == "start"
    assert await read(api, forum["id"]) == forum
    r = await api.client.post(
        f"/api/events/{forum['id']}/move",
        json={"start": "2030-03-12T10:00:00-04:00"},
        headers=api.auth,
    )
    assert r.status_code == 200
    after = await read(api, forum["id"])
    assert after["start_local"] == "2030-03-12T10:00:00-04:00"
    assert after["end_local"] == "2030-03-12T13:00:00-04:00"
    assert after["sequence"] == forum["sequence"] + 1
    assert (await read(api, dep["id"]))["start_local"] == "2030-03-13T10:00:00-04:00"


async def test_delete_needs_a_token_of_the_process(api: Api) -> None:
    pid = await make_process(api)
    event = await make_event(api, pid)
    r = await api.client.delete(f"/api/events/{event['id']}")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    r = await api.client.delete(
        f"/api/events/{event['id']}", headers={"Authorization": "Bearer fs_unknown"}
    )
    assert r.status_code == 401
    stranger = {"Authorization": f"Bearer {await api.new_token('Another secretariat')}"}
    r = await api.client.delete(f"/api/events/{event['id']}", headers=stranger)
    assert r.status_code == 403
    r = await api.client.patch(f"/api/events/{event['id']}", json={"title": "x"}, headers=stranger)
    assert r.status_code == 403
    r = await api.client.post(
        f"/api/events/{event['id']}/move",
        json={"start": "2030-03-06T10:00:00-05:00"},
        headers=stranger,
    )
    assert r.status_code == 403
    r = await api.client.post("/api/events", json=event_body(pid), headers=stranger)
    assert r.status_code == 403
    r = await api.client.post("/api/events", json=event_body(pid))
    assert r.status_code == 401
    assert await read(api, event["id"]) == event
    assert len(await listed(api, process_id=pid)) == 1

    r = await api.client.delete(f"/api/events/{event['id']}", headers=api.auth)
    assert r.status_code == 204
    assert (await api.client.get(f"/api/events/{event['id']}", headers=api.auth)).status_code == 404
    assert await listed(api, process_id=pid) == []
    r = await api.client.delete(f"/api/events/{event['id']}", headers=api.auth)
    assert r.status_code == 404


async def test_deleting_a_reference_frees_its_dependents(api: Api) -> None:
    pid = await make_process(api)
    forum = await make_event(api, pid, title="Forum")
    child = await make_event(
        api,
        pid,
        title="Round table",
        parent_id=forum["id"],
        relative_to_id=forum["id"],
        placement={"days": 1, "at": "15:00"},
    )
    r = await api.client.post(
        "/api/milestones",
        json={
            "process_id": pid,
            "kind": "pledge_deadline",
            "title": "Pledges due",
            "due": "2030-01-01T00:00:00Z",
            "time_zone": NY,
            "event_id": forum["id"],
            "relative_to_id": forum["id"],
            "placement": {"weeks": -2, "at": "23:59"},
            "status": "published",
        },
        headers=api.auth,
    )
    assert r.status_code == 201, r.text
    milestone = r.json()
    r = await api.client.delete(f"/api/events/{forum['id']}", headers=api.auth)
    assert r.status_code == 204
    after = await read(api, child["id"])
    assert after["parent_id"] is None
    assert after["relative_to_id"] is None
    assert after["start"] == child["start"] and after["end"] == child["end"]
    # The dependents keep their times and can still be changed.
    r = await api.client.patch(
        f"/api/events/{child['id']}", json={"title": "Round table (standalone)"}, headers=api.auth
    )
    assert r.status_code == 200, r.text
    r = await api.client.patch(
        f"/api/milestones/{milestone['id']}", json={"title": "Pledges"}, headers=api.auth
    )
    assert r.status_code == 200, r.text
    assert r.json()["due"] == milestone["due"]
    assert r.json()["event_id"] is None and r.json()["relative_to_id"] is None


async def test_datetimes_are_stored_in_utc(api: Api) -> None:
    pid = await make_process(api)
    event = await make_event(
        api,
        pid,
        time_zone="Asia/Kolkata",
        start="2030-03-05T10:00:00+05:30",
        end="2030-03-05T11:00:00-05:00",  # another offset: 21:30 in Kolkata
    )
    assert event["start"] == "2030-03-05T04:30:00Z"
    assert event["end"] == "2030-03-05T16:00:00Z"
    assert event["end_local"] == "2030-03-05T21:30:00+05:30"
    stored = await read(api, event["id"])
    assert datetime.fromisoformat(stored["start"]).utcoffset() is not None
    assert stored["start"] == event["start"]
