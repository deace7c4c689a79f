"""Processes, templates, timelines and cascades over the HTTP API, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime

from tests.conftest import Api


async def make_process(api: Api, slug: str = "gcm", tz: str = "America/New_York") -> int:
    r = await api.client.post(
        "/api/processes",
        json={"slug": slug, "name": "GCM review", "time_zone": tz, "languages": ["en", "fr"]},
        headers=api.auth,
    )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


async def instantiate(api: Api, process_id: int, **body: object) -> dict[str, object]:
    payload = {"template": "imrf", "anchor_date": "2030-05-14", "status": "published", **body}
    r = await api.client.post(
        f"/api/processes/{process_id}/instantiate", json=payload, headers=api.auth
    )
    assert r.status_code == 201, r.text
    data: dict[str, object] = r.json()
    return data


def by_key(items: list[dict[str, object]], title_part: str) -> dict[str, object]:
    return next(i for i in items if title_part in str(i["title"]))


async def test_create_read_list_process(api: Api) -> None:
    pid = await make_process(api)
    r = await api.client.get(f"/api/processes/{pid}")
    assert r.status_code == 200
    body = r.json()
    assert body["slug"] == "gcm"
    assert body["languages"] == ["en", "fr"]
    assert body["time_zone"] == "America/New_York"
    listed = (await api.client.get("/api/processes")).json()
    assert [p["id"] for p in listed] == [pid]


async def test_process_errors_name_the_field(api: Api) -> None:
    await make_process(api)
    r = await api.client.post(
        "/api/processes",
        json={"slug": "gcm", "name": "Again", "time_zone": "UTC"},
        headers=api.auth,
    )
    assert r.status_code == 409
    assert r.json()["extra"][0]["key"] == "slug"
    r = await api.client.post(
        "/api/processes",
        json={"slug": "other", "name": "X", "time_zone": "Mars/Olympus_Mons"},
        headers=api.auth,
    )
    assert r.status_code == 400
    assert r.json()["extra"][0]["key"] == "time_zone"
    assert "unknown time zone" in r.json()["extra"][0]["message"]
    r = await api.client.post(
        "/api/processes",
        json={"slug": "Bad Slug!", "name": "X", "time_zone": "UTC"},
        headers=api.auth,
    )
    assert r.status_code == 400
    assert r.json()["extra"][0]["key"] == "slug"
    r = await api.client.post(
        "/api/processes",
        json={"slug": "x2", "name": "X", "time_zone": "UTC", "colour": "red"},
        headers=api.auth,
    )
    assert r.status_code == 400
    assert "colour" in r.text


async def test_malformed_and_oversize_bodies_are_4xx(api: Api) -> None:
    headers = {**api.auth, "Content-Type": "application/json"}
    r = await api.client.post("/api/processes", content=b'{"slug": "x", ', headers=headers)
    assert r.status_code == 400
    big = b'{"slug": "big", "name": "' + b"x" * (api.settings.max_body_bytes + 10) + b'"}'
    r = await api.client.post("/api/processes", content=big, headers=headers)
    assert r.status_code == 413
    assert (await api.client.get("/api/processes")).json() == []


async def test_writes_need_a_token_of_the_process(api: Api) -> None:
    body = {"slug": "gcm", "name": "GCM", "time_zone": "UTC"}
    r = await api.client.post("/api/processes", json=body)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    r = await api.client.post(
        "/api/processes", json=body, headers={"Authorization": "Bearer fs_not-a-token"}
    )
    assert r.status_code == 401
    r = await api.client.post("/api/processes", json=body, headers={"Authorization": "Basic x"})
    assert r.status_code == 401
    pid = await make_process(api)
    stranger = await api.new_token("Another secretariat")
    headers = {"Authorization": f"Bearer {stranger}"}
    r = await api.client.patch(f"/api/processes/{pid}", json={"name": "Mine"}, headers=headers)
    assert r.status_code == 403
    r = await api.client.post(
        f"/api/processes/{pid}/instantiate",
        json={"template": "imrf", "anchor_date": "2030-05-14"},
        headers=headers,
    )
    assert r.status_code == 403
    assert (await api.client.get(f"/api/processes/{pid}")).json()["name"] == "GCM review"
    # A token granted the process by slug may change it.
    member = await api.new_token("Regional office", ["gcm"])
    r = await api.client.patch(
        f"/api/processes/{pid}",
        json={"name": "GCM review cycle"},
        headers={"Authorization": f"Bearer {member}"},
    )
    assert r.status_code == 200
    assert r.json()["name"] == "GCM review cycle"


async def test_templates_are_listed(api: Api) -> None:
    r = await api.client.get("/api/templates")
    assert r.status_code == 200
    imrf = next(t for t in r.json() if t["key"] == "imrf")
    assert imrf["anchor"] == "forum"
    assert "hearing" in imrf["events"]


async def test_instantiate_builds_the_cycle_and_timeline_is_ordered(api: Api) -> None:
    pid = await make_process(api)
    created = await instantiate(api, pid)
    events = created["events"]
    assert isinstance(events, list)
    forum = by_key(events, "International Migration Review Forum 2030")
    hearing = by_key(events, "hearing")
    assert forum["start_local"] == "2030-05-14T10:00:00-04:00"
    assert forum["end_local"] == "2030-05-17T18:00:00-04:00"
    assert hearing["start_local"] == "2030-05-13T10:00:00-04:00"
    assert hearing["relative_to_id"] == forum["id"]
    timeline = (await api.client.get(f"/api/processes/{pid}/timeline")).json()
    items = timeline["items"]
    starts = [datetime.fromisoformat(i["start"]) for i in items]
    assert starts == sorted(starts)
    kinds = {i["type"] for i in items}
    assert kinds == {"event", "milestone"}
    for item in items:
        local = datetime.fromisoformat(item["start_local"])
        assert local == datetime.fromisoformat(item["start"])
        assert local.utcoffset() is not None
    # The recurring dialogue meeting appears once per occurrence.
    dialogue = [i for i in items if i["kind"] == "dialogue_meeting"]
    assert len(dialogue) == 4 and all(i["recurring"] for i in dialogue)


async def test_instantiate_errors(api: Api) -> None:
    pid = await make_process(api)
    r = await api.client.post(
        f"/api/processes/{pid}/instantiate",
        json={"template": "nope", "anchor_date": "2030-05-14"},
        headers=api.auth,
    )
    assert r.status_code == 400
    assert r.json()["extra"][0]["key"] == "template"
    r = await api.client.post(
        f"/api/processes/{pid}/instantiate",
        json={
            "template": "imrf",
            "anchor_date": "2030-05-14",
            "anchor_start": "2030-05-14T10:00:00Z",
        },
        headers=api.auth,
    )
    assert r.status_code == 400
    r = await api.client.post(
        f"/api/processes/{pid}/instantiate",
        json={"template": "imrf", "anchor_start": "2030-05-14T10:00:00"},
        headers=api.auth,
    )
    assert r.status_code == 400
    assert r.json()["extra"][0]["key"] == "anchor_start"
    assert (await api.client.get("/api/events", params={"process_id": pid})).json()["items"] == []


async def test_moving_the_forum_moves_the_cycle_except_pinned(api: Api) -> None:
    pid = await make_process(api)
    created = await instantiate(api, pid)
    events = created["events"]
    milestones = created["milestones"]
    assert isinstance(events, list) and isinstance(milestones, list)
    forum = by_key(events, "International Migration Review Forum")
    hearing = by_key(events, "hearing")
    plenary = next(e for e in events if e["kind"] == "plenary")
    round_table = next(e for e in events if e["kind"] == "round_table")
    # The organizer pins one round table by moving it by hand.
    r = await api.client.post(
        f"/api/events/{round_table['id']}/move",
        json={"start": "2030-05-14T11:00:00-04:00"},
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    assert (await api.client.get(f"/api/events/{round_table['id']}")).json()["pinned"] is True

    # Preview first: nothing is written.
    move = {"start": "2030-06-04T10:00:00-04:00", "preview": True}
    r = await api.client.post(f"/api/events/{forum['id']}/move", json=move, headers=api.auth)
    assert r.status_code == 200
    preview = r.json()
    assert preview["preview"] is True
    unchanged = (await api.client.get(f"/api/events/{hearing['id']}")).json()
    assert unchanged["start_local"] == "2030-05-13T10:00:00-04:00"

    move["preview"] = False
    r = await api.client.post(f"/api/events/{forum['id']}/move", json=move, headers=api.auth)
    assert r.status_code == 200
    moved = r.json()["moved"]
    assert [m["id"] for m in moved] == [m["id"] for m in preview["moved"]]
    moved_ids = {(m["type"], m["id"]) for m in moved}
    assert ("event", hearing["id"]) in moved_ids
    assert ("event", round_table["id"]) not in moved_ids
    assert any(t == "milestone" for t, _ in moved_ids)

    after = (await api.client.get(f"/api/events/{hearing['id']}")).json()
    assert after["start_local"] == "2030-06-03T10:00:00-04:00"
    assert after["end_local"] == "2030-06-03T18:00:00-04:00"
    assert after["sequence"] == hearing["sequence"] + 1
    new_plenary = (await api.client.get(f"/api/events/{plenary['id']}")).json()
    assert new_plenary["start_local"] == "2030-06-06T10:00:00-04:00"
    pinned = (await api.client.get(f"/api/events/{round_table['id']}")).json()
    assert pinned["start_local"] == "2030-05-14T11:00:00-04:00"
    new_forum = (await api.client.get(f"/api/events/{forum['id']}")).json()
    assert new_forum["end_local"] == "2030-06-07T18:00:00-04:00"
    # The hearing's registration window moved with it.
    old_close = datetime.fromisoformat(str(hearing["registration_closes_at"]))
    new_close = datetime.fromisoformat(after["registration_closes_at"])
    assert (new_close - old_close).days == 21


async def test_drafts_are_invisible_to_the_public(api: Api) -> None:
    pid = await make_process(api)
    await instantiate(api, pid, status="draft")
    public = (await api.client.get("/api/events", params={"process_id": pid})).json()["items"]
    assert public == []
    mine = await api.client.get("/api/events", params={"process_id": pid}, headers=api.auth)
    items = mine.json()["items"]
    assert items and all(e["status"] == "draft" for e in items)
    r = await api.client.get(f"/api/events/{items[0]['id']}")
    assert r.status_code == 404
    timeline = (await api.client.get(f"/api/processes/{pid}/timeline")).json()
    assert timeline["items"] == []
    milestones = (await api.client.get("/api/milestones", params={"process_id": pid})).json()
    assert milestones == []
