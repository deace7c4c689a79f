"""Milestones over the HTTP API: absolute and relative deadlines, pins, drafts, refusals."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Api
from tests.test_api_events import make_event, refused_field
from tests.test_api_processes import make_process

NY = "America/New_York"


def milestone_body(process_id: int, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "process_id": process_id,
        "kind": "report_deadline",
        "title": "Voluntary national reviews due",
        "due": "2030-03-19T23:59:00-04:00",
        "time_zone": NY,
        "status": "published",
    }
    body.update(changes)
    return body


async def make_milestone(api: Api, process_id: int, **changes: Any) -> dict[str, Any]:
    r = await api.client.post(
        "/api/milestones", json=milestone_body(process_id, **changes), headers=api.auth
    )
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


async def read(api: Api, milestone_id: int) -> dict[str, Any]:
    r = await api.client.get(f"/api/milestones/{milestone_id}", headers=api.auth)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


async def make_forum(api: Api, process_id: int) -> dict[str, Any]:
    return await make_event(
        api,
        process_id,
        kind="review_forum",
        title="International Migration Review Forum",
        start="2030-05-14T10:00:00-04:00",
        end="2030-05-17T18:00:00-04:00",
    )


async def test_create_read_list_absolute_milestone(api: Api) -> None:
    pid = await make_process(api)
    forum = await make_forum(api, pid)
    created = await make_milestone(
        api,
        pid,
        title=" Voluntary national reviews due ",
        description="Member States submit their reviews.",
        event_id=forum["id"],
        # Given with another offset; shown in the milestone's own zone.
        due="2030-03-20T03:59:00Z",
    )
    assert created["title"] == "Voluntary national reviews due"
    assert created["due"] == "2030-03-20T03:59:00Z"
    assert created["due_local"] == "2030-03-19T23:59:00-04:00"
    assert created["time_zone"] == NY
    assert created["event_id"] == forum["id"]
    assert created["relative_to_id"] is None and created["placement"] is None
    assert created["pinned"] is False
    assert created["sequence"] == 0
    r = await api.client.get(f"/api/milestones/{created['id']}")
    assert r.status_code == 200
    assert r.json() == created
    second = await make_milestone(
        api, pid, kind="decision", title="Declaration adopted", due="2030-05-17T17:00:00-04:00"
    )
    listed = (await api.client.get("/api/milestones", params={"process_id": pid})).json()
    assert [m["id"] for m in listed] == [created["id"], second["id"]]
    decisions = await api.client.get("/api/milestones", params={"kind": "decision"})
    assert [m["id"] for m in decisions.json()] == [second["id"]]
    window = await api.client.get(
        "/api/milestones",
        params={"from": "2030-04-01T00:00:00Z", "to": "2030-06-01T00:00:00Z"},
    )
    assert [m["id"] for m in window.json()] == [second["id"]]


async def test_relative_milestone_is_computed_from_its_placement(api: Api) -> None:
    pid = await make_process(api)
    forum = await make_forum(api, pid)
    reviews = await make_milestone(
        api,
        pid,
        due="2000-01-01T00:00:00Z",  # ignored: the placement decides
        relative_to_id=forum["id"],
        placement={"weeks": -8, "at": "23:59"},
    )
    assert reviews["due_local"] == "2030-03-19T23:59:00-04:00"
    assert reviews["due"] == "2030-03-20T03:59:00Z"
    assert reviews["placement"] == {"weeks": -8, "at": "23:59"}
    # The calendar day is counted in the forum's zone, the wall time read in the milestone's.
    geneva = await make_milestone(
        api,
        pid,
        title="Briefing notes to Geneva missions",
        time_zone="Europe/Zurich",
        relative_to_id=forum["id"],
        placement={"days": -1, "at": "09:00"},
    )
    assert geneva["due_local"] == "2030-05-13T09:00:00+02:00"
    # Without `at`, the reference's local wall time is kept.
    same_time = await make_milestone(api, pid, relative_to_id=forum["id"], placement={"months": -1})
    assert same_time["due_local"] == "2030-04-14T10:00:00-04:00"
    # Across the March change: 12:00 New York stays 12:00 in winter time.
    winter = await make_milestone(
        api, pid, relative_to_id=forum["id"], placement={"weeks": -12, "at": "12:00"}
    )
    assert winter["due_local"] == "2030-02-19T12:00:00-05:00"
    assert winter["due"] == "2030-02-19T17:00:00Z"


async def test_moving_the_event_moves_unpinned_relative_milestones(api: Api) -> None:
    pid = await make_process(api)
    forum = await make_forum(api, pid)
    reviews = await make_milestone(
        api, pid, relative_to_id=forum["id"], placement={"weeks": -8, "at": "23:59"}
    )
    pledges = await make_milestone(
        api,
        pid,
        kind="pledge_deadline",
        title="Pledges due",
        relative_to_id=forum["id"],
        placement={"weeks": -2, "at": "23:59"},
    )
    fixed = await make_milestone(api, pid, title="Fixed date", due="2030-04-01T12:00:00-04:00")
    # Setting `due` by hand pins a relative milestone.
    r = await api.client.patch(
        f"/api/milestones/{pledges['id']}",
        json={"due": "2030-05-01T17:00:00-04:00"},
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    pinned = r.json()
    assert pinned["pinned"] is True
    assert pinned["due_local"] == "2030-05-01T17:00:00-04:00"
    assert pinned["sequence"] == pledges["sequence"] + 1
    assert pinned["placement"] == {"weeks": -2, "at": "23:59"}

    r = await api.client.post(
        f"/api/events/{forum['id']}/move",
        json={"start": "2030-06-04T10:00:00-04:00"},
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    moved = {(m["type"], m["id"]) for m in r.json()["moved"]}
    assert moved == {("event", forum["id"]), ("milestone", reviews["id"])}
    after = await read(api, reviews["id"])
    assert after["due_local"] == "2030-04-09T23:59:00-04:00"
    assert after["sequence"] == reviews["sequence"] + 1
    assert (await read(api, pledges["id"]))["due_local"] == "2030-05-01T17:00:00-04:00"
    assert await read(api, fixed["id"]) == fixed

    # A PATCH of the event's start cascades the same way.
    r = await api.client.patch(
        f"/api/events/{forum['id']}", json={"start": "2030-06-11T10:00:00-04:00"}, headers=api.auth
    )
    assert r.status_code == 200, r.text
    assert (await read(api, reviews["id"]))["due_local"] == "2030-04-16T23:59:00-04:00"

    # Unpinning puts it back under its rule at the next move.
    r = await api.client.patch(
        f"/api/milestones/{pledges['id']}", json={"pinned": False}, headers=api.auth
    )
    assert r.status_code == 200, r.text
    r = await api.client.post(
        f"/api/events/{forum['id']}/move",
        json={"start": "2030-06-18T10:00:00-04:00"},
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    assert (await read(api, pledges["id"]))["due_local"] == "2030-06-04T23:59:00-04:00"


async def test_patch_changes_fields_and_new_placement_recomputes_due(api: Api) -> None:
    pid = await make_process(api)
    forum = await make_forum(api, pid)
    milestone = await make_milestone(api, pid, title="Zero draft circulated", kind="other")
    r = await api.client.patch(
        f"/api/milestones/{milestone['id']}",
        json={
            "title": " Zero draft of the Progress Declaration ",
            "description": "Circulated by the co-facilitators.",
            "status": "cancelled",
        },
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    changed = r.json()
    assert changed["title"] == "Zero draft of the Progress Declaration"
    assert changed["status"] == "cancelled"
    assert changed["due"] == milestone["due"]
    assert changed["sequence"] == milestone["sequence"] + 1
    assert await read(api, milestone["id"]) == changed
    r = await api.client.patch(
        f"/api/milestones/{milestone['id']}",
        json={"relative_to_id": forum["id"], "placement": {"weeks": -12, "at": "12:00"}},
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    placed = r.json()
    assert placed["due_local"] == "2030-02-19T12:00:00-05:00"
    assert placed["pinned"] is False
    assert placed["sequence"] == milestone["sequence"] + 2


async def test_drafts_are_hidden_from_the_public(api: Api) -> None:
    pid = await make_process(api)
    draft = await make_milestone(api, pid, status="draft")
    public = await make_milestone(api, pid, title="Public deadline")
    cancelled = await make_milestone(api, pid, title="Dropped deadline", status="cancelled")
    r = await api.client.get("/api/milestones", params={"process_id": pid})
    assert sorted(m["id"] for m in r.json()) == [public["id"], cancelled["id"]]
    assert (await api.client.get(f"/api/milestones/{draft['id']}")).status_code == 404
    assert (await api.client.get(f"/api/milestones/{cancelled['id']}")).status_code == 200
    stranger = {"Authorization": f"Bearer {await api.new_token('Another secretariat')}"}
    r = await api.client.get(f"/api/milestones/{draft['id']}", headers=stranger)
    assert r.status_code == 404
    r = await api.client.get("/api/milestones", params={"process_id": pid}, headers=api.auth)
    assert sorted(m["id"] for m in r.json()) == sorted([draft["id"], public["id"], cancelled["id"]])
    # Drafts stay out of the public timeline as well.
    timeline = (await api.client.get(f"/api/processes/{pid}/timeline")).json()
    assert draft["id"] not in [i["id"] for i in timeline["items"] if i["type"] == "milestone"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"time_zone": "Mars/Olympus_Mons"}, "time_zone"),
        ({"due": "2030-03-19T23:59:00"}, "due"),
        ({"due": "1066-10-14T09:00:00Z"}, "due"),
        ({"kind": "birthday"}, "kind"),
        ({"status": "postponed"}, "status"),  # a deadline is kept, dropped or drafted
        ({"title": " "}, "title"),
        ({"placement": {"days": -1}}, "relative_to_id"),
        ({"event_id": 99_999}, "event_id"),
        ({"relative_to_id": 99_999, "placement": {"days": -1}}, "relative_to_id"),
    ],
)
async def test_create_refusals_name_the_field(
    api: Api, changes: dict[str, Any], field: str
) -> None:
    pid = await make_process(api)
    r = await api.client.post(
        "/api/milestones", json=milestone_body(pid, **changes), headers=api.auth
    )
    assert refused_field(r) == field
    r = await api.client.get("/api/milestones", params={"process_id": pid}, headers=api.auth)
    assert r.json() == []


async def test_placement_and_link_refusals(api: Api) -> None:
    pid = await make_process(api, "gcm")
    other_pid = await make_process(api, "hlpf")
    forum = await make_forum(api, pid)
    foreign = await make_event(api, other_pid, title="HLPF")
    cases: list[tuple[dict[str, Any], str]] = [
        # A milestone is a moment: a placement with an end is refused.
        (
            {"relative_to_id": forum["id"], "placement": {"days": -1, "end_at": "18:00"}},
            "placement",
        ),
        (
            {"relative_to_id": forum["id"], "placement": {"days": -1, "duration_minutes": 30}},
            "placement",
        ),
        ({"relative_to_id": forum["id"], "placement": {"at": "noon"}}, "placement.at"),
        ({"relative_to_id": forum["id"], "placement": {"weeks": 1.5}}, "placement[...]"),
        ({"relative_to_id": forum["id"], "placement": {"years": 9000}}, "placement"),
        ({"relative_to_id": forum["id"]}, "placement"),
        ({"relative_to_id": foreign["id"], "placement": {"days": -1}}, "relative_to_id"),
        ({"event_id": foreign["id"]}, "event_id"),
    ]
    for changes, field in cases:
        r = await api.client.post(
            "/api/milestones", json=milestone_body(pid, **changes), headers=api.auth
        )
        assert refused_field(r) == field, changes
    r = await api.client.get("/api/milestones", params={"process_id": pid}, headers=api.auth)
    assert r.json() == []


async def test_a_failing_patch_changes_nothing(api: Api) -> None:
    pid = await make_process(api, "gcm")
    other_pid = await make_process(api, "hlpf")
    forum = await make_forum(api, pid)
    foreign = await make_event(api, other_pid, title="HLPF")
    milestone = await make_milestone(
        api, pid, event_id=forum["id"], relative_to_id=forum["id"], placement={"weeks": -8}
    )
    bad_patches: list[tuple[dict[str, Any], str]] = [
        ({"title": "Renamed", "time_zone": "Atlantis/Capital"}, "time_zone"),
        ({"title": "Renamed", "placement": {"end_at": "18:00"}}, "placement"),
        ({"title": "Renamed", "relative_to_id": foreign["id"]}, "relative_to_id"),
        ({"title": "Renamed", "event_id": foreign["id"]}, "event_id"),
        ({"title": "Renamed", "event_id": 99_999}, "event_id"),
        ({"title": "Renamed", "relative_to_id": None}, "relative_to_id"),
        ({"due": "2030-03-19T23:59:00"}, "due"),
        ({"due": "2300-03-19T23:59:00Z"}, "due"),
        ({"title": ""}, "title"),
    ]
    for patch, field in bad_patches:
        r = await api.client.patch(
            f"/api/milestones/{milestone['id']}", json=patch, headers=api.auth
        )
        assert refused_field(r) == field, patch
    assert await read(api, milestone["id"]) == milestone
    headers = {**api.auth, "Content-Type": "application/json"}
    r = await api.client.patch(
        f"/api/milestones/{milestone['id']}", content=b'{"title": "x"', headers=headers
    )
    assert r.status_code == 400
    assert await read(api, milestone["id"]) == milestone


async def test_writes_need_a_token_of_the_process(api: Api) -> None:
    pid = await make_process(api)
    milestone = await make_milestone(api, pid)
    r = await api.client.post("/api/milestones", json=milestone_body(pid))
    assert r.status_code == 401
    stranger = {"Authorization": f"Bearer {await api.new_token('Another secretariat')}"}
    r = await api.client.post("/api/milestones", json=milestone_body(pid), headers=stranger)
    assert r.status_code == 403
    r = await api.client.patch(
        f"/api/milestones/{milestone['id']}", json={"title": "Mine"}, headers=stranger
    )
    assert r.status_code == 403
    r = await api.client.delete(f"/api/milestones/{milestone['id']}", headers=stranger)
    assert r.status_code == 403
    r = await api.client.delete(f"/api/milestones/{milestone['id']}")
    assert r.status_code == 401
    assert await read(api, milestone["id"]) == milestone
    r = await api.client.delete(f"/api/milestones/{milestone['id']}", headers=api.auth)
    assert r.status_code == 204
    assert (await api.client.get(f"/api/milestones/{milestone['id']}")).status_code == 404


async def test_list_refusals_name_the_parameter(api: Api) -> None:
    for params, field in [
        ({"kind": "birthday"}, "kind"),
        ({"from": "2030-01-01T00:00:00"}, "from"),
        ({"to": "2030-01-01T00:00:00"}, "to"),
        ({"process_id": 0}, "process_id"),
    ]:
        r = await api.client.get("/api/milestones", params=params)
        assert refused_field(r) == field, params
