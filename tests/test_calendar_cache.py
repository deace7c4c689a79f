"""Public event lists are cached until the calendar changes, on every node (the counter is
in the database), and clients can revalidate with ETag / If-None-Match."""

from __future__ import annotations

from datetime import timedelta

from scheduler.database import open_database
from scheduler.events import EventPatch, update_event
from scheduler.models import Event, utc_now
from tests.conftest import Api
from tests.test_api_processes import instantiate, make_process


async def test_etag_revalidation_and_invalidation(api: Api) -> None:
    pid = await make_process(api)
    await instantiate(api, pid)
    first = await api.client.get("/api/events", params={"kind": "stakeholder_hearing"})
    assert first.status_code == 200
    tag = first.headers["etag"]
    hearing = first.json()["items"][0]
    again = await api.client.get(
        "/api/events", params={"kind": "stakeholder_hearing"}, headers={"If-None-Match": tag}
    )
    assert again.status_code == 304 and again.content == b""
    other = await api.client.get("/api/events", params={"kind": "plenary"})
    assert other.headers["etag"] != tag

    r = await api.client.patch(
        f"/api/events/{hearing['id']}", json={"title": "Hearing, renamed"}, headers=api.auth
    )
    assert r.status_code == 200
    changed = await api.client.get(
        "/api/events", params={"kind": "stakeholder_hearing"}, headers={"If-None-Match": tag}
    )
    assert changed.status_code == 200
    assert changed.headers["etag"] != tag
    assert changed.json()["items"][0]["title"] == "Hearing, renamed"


async def test_a_change_made_by_another_node_is_seen(api: Api) -> None:
    """Another process writing to the same database (here: a second engine) invalidates."""
    pid = await make_process(api)
    await instantiate(api, pid)
    before = (await api.client.get("/api/events", params={"kind": "plenary"})).json()
    plenary_id = before["items"][0]["id"]
    other_node = open_database(api.settings)
    try:
        async with other_node.writer.begin() as session:
            event = await session.get(Event, plenary_id)
            assert event is not None
            patch = EventPatch(venue="Conference Room 4")
            await update_event(session, event, patch, utc_now(), timedelta(hours=1))
    finally:
        await other_node.dispose()
    after = (await api.client.get("/api/events", params={"kind": "plenary"})).json()
    assert after["items"][0]["venue"] == "Conference Room 4"


async def test_organizers_are_not_served_the_public_answer(api: Api) -> None:
    pid = await make_process(api)
    await instantiate(api, pid, status="draft")
    public = await api.client.get("/api/events", params={"process_id": pid})
    assert public.json()["items"] == []
    mine = await api.client.get("/api/events", params={"process_id": pid}, headers=api.auth)
    assert len(mine.json()["items"]) > 10
    assert "etag" not in mine.headers
