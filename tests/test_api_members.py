"""A process's members and roles over the HTTP API and the organizer pages, on SQLite and
PostgreSQL: owners manage members, the last owner stays, viewers read and never write, and
organizer reminders follow the role."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from scheduler import members as members_svc
from scheduler.database import open_database
from scheduler.errors import Conflict
from scheduler.models import utc_now
from tests.conftest import Api
from tests.test_pages import CSRF

START = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def make_process(api: Api, slug: str = "gcm") -> int:
    r = await api.client.post(
        "/api/processes",
        json={"slug": slug, "name": "GCM review", "time_zone": "UTC"},
        headers=api.auth,
    )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


async def make_event(api: Api, process_id: int, title: str, status: str = "published") -> int:
    body = {
        "process_id": process_id,
        "kind": "consultation",
        "title": title,
        "time_zone": "UTC",
        "start": START.isoformat(),
        "end": (START + timedelta(hours=3)).isoformat(),
        "status": status,
    }
    r = await api.client.post("/api/events", json=body, headers=api.auth)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


async def members(api: Api, pid: int, auth: dict[str, str] | None = None) -> dict[int, str]:
    r = await api.client.get(f"/api/processes/{pid}/members", headers=auth or api.auth)
    assert r.status_code == 200, r.text
    return {m["organizer_id"]: m["role"] for m in r.json()}


async def owner_id(api: Api, pid: int) -> int:
    return next(i for i, role in (await members(api, pid)).items() if role == "owner")


async def test_the_creator_owns_the_process_and_adds_members(api: Api) -> None:
    pid = await make_process(api)
    me = await owner_id(api, pid)
    listed = (await api.client.get(f"/api/processes/{pid}/members", headers=api.auth)).json()
    assert listed == [{"organizer_id": me, "name": "Secretariat", "email": "", "role": "owner"}]

    focal, _ = await api.new_organizer("Focal point", email="Focal@Example.org")
    office, _ = await api.new_organizer("Regional office")
    url = f"/api/processes/{pid}/members"
    r = await api.client.post(
        url, json={"email": "Focal@EXAMPLE.org", "role": "organizer"}, headers=api.auth
    )
    assert r.status_code == 201, r.text
    assert r.json() == {
        "organizer_id": focal,
        "name": "Focal point",
        "email": "focal@example.org",
        "role": "organizer",
    }
    r = await api.client.post(
        url, json={"organizer_id": office, "role": "viewer"}, headers=api.auth
    )
    assert r.status_code == 201
    assert await members(api, pid) == {me: "owner", focal: "organizer", office: "viewer"}

    def key(r: Any) -> str:
        return str(r.json()["extra"][0]["key"])

    again = await api.client.post(
        url, json={"organizer_id": office, "role": "owner"}, headers=api.auth
    )
    assert again.status_code == 409 and key(again) == "organizer_id"
    assert "already a member" in again.json()["detail"]
    for body, status, field in (
        ({"email": "nobody@example.org", "role": "viewer"}, 400, "email"),
        ({"organizer_id": 999_999, "role": "viewer"}, 400, "organizer_id"),
        ({"role": "viewer"}, 400, "organizer_id"),
        (
            {"organizer_id": office, "email": "focal@example.org", "role": "viewer"},
            400,
            "organizer_id",
        ),
        ({"organizer_id": office, "role": "admin"}, 400, "role"),
        ({"organizer_id": office}, 400, "role"),
    ):
        r = await api.client.post(url, json=body, headers=api.auth)
        assert r.status_code == status, (body, r.text)
        assert field in r.text, (body, r.text)

    r = await api.client.patch(f"{url}/{office}", json={"role": "organizer"}, headers=api.auth)
    assert r.status_code == 200 and r.json()["role"] == "organizer"
    assert (await api.client.delete(f"{url}/{focal}", headers=api.auth)).status_code == 204
    assert await members(api, pid) == {me: "owner", office: "organizer"}
    r = await api.client.patch(f"{url}/{focal}", json={"role": "viewer"}, headers=api.auth)
    assert r.status_code == 404
    assert (await api.client.delete(f"{url}/{focal}", headers=api.auth)).status_code == 404
    r = await api.client.get("/api/processes/999999/members", headers=api.auth)
    assert r.status_code == 404


async def test_the_last_owner_can_neither_leave_nor_step_down(api: Api) -> None:
    pid = await make_process(api)
    me = await owner_id(api, pid)
    url = f"/api/processes/{pid}/members"
    reason = f"organizer {me} is the last owner of process {pid} and cannot be"
    r = await api.client.delete(f"{url}/{me}", headers=api.auth)
    assert r.status_code == 409
    assert r.json()["detail"].startswith(reason + " removed")
    for role in ("organizer", "viewer"):
        r = await api.client.patch(f"{url}/{me}", json={"role": role}, headers=api.auth)
        assert r.status_code == 409
        assert r.json()["detail"] == (f"{reason} made a {role}: make another member owner first")
    assert await members(api, pid) == {me: "owner"}

    deputy, deputy_token = await api.new_organizer("Deputy", ["gcm"])
    r = await api.client.patch(f"{url}/{deputy}", json={"role": "owner"}, headers=api.auth)
    assert r.status_code == 200
    r = await api.client.patch(f"{url}/{me}", json={"role": "organizer"}, headers=api.auth)
    assert r.status_code == 200
    # Now an organizer: membership is the deputy's to manage, and they are the last owner.
    r = await api.client.delete(f"{url}/{deputy}", headers=api.auth)
    assert r.status_code == 403
    r = await api.client.delete(f"{url}/{deputy}", headers=bearer(deputy_token))
    assert r.status_code == 409
    assert (await api.client.delete(f"{url}/{me}", headers=bearer(deputy_token))).status_code == 204
    assert await members(api, pid, bearer(deputy_token)) == {deputy: "owner"}
    r = await api.client.patch(f"/api/processes/{pid}", json={"name": "x"}, headers=api.auth)
    assert r.status_code == 403
    assert r.json()["detail"] == f"organizer {me} is not a member of process {pid}"


async def test_two_owners_stepping_down_at_once_leave_one_owner(api: Api) -> None:
    """Two owners each step down in their own transaction at the same moment, several times
    over: one is refused every time (the process row is locked first; SQLite has one
    writer). Called on the service: the test client serves one request at a time."""
    pid = await make_process(api)
    me = await owner_id(api, pid)
    other, _ = await api.new_organizer("Co-owner", ["gcm"], role="owner")
    db = open_database(api.settings)

    async def step_down(organizer_id: int) -> str:
        try:
            async with db.writer.begin() as session:
                await members_svc.change_role(session, pid, organizer_id, "viewer", utc_now())
        except Conflict:
            return "refused"
        return "done"

    try:
        for _ in range(8):
            outcomes = await asyncio.gather(step_down(me), step_down(other))
            assert sorted(outcomes) == ["done", "refused"]
            roles = await members(api, pid)
            assert sorted(roles.values()) == ["owner", "viewer"]
            stepped = me if outcomes[0] == "done" else other
            async with db.writer.begin() as session:
                await members_svc.change_role(session, pid, stepped, "owner", utc_now())
    finally:
        await db.dispose()


async def test_a_viewer_reads_what_organizers_read_and_changes_nothing(api: Api) -> None:
    pid = await make_process(api)
    draft = await make_event(api, pid, "Draft consultation", status="draft")
    viewer_id, token = await api.new_organizer("Observer", ["gcm"], role="viewer")
    auth = bearer(token)
    assert (await api.client.get(f"/api/events/{draft}", headers=auth)).status_code == 200
    listed = (await api.client.get("/api/events", headers=auth)).json()["items"]
    assert [e["id"] for e in listed] == [draft]
    for url in (
        f"/api/events/{draft}/registrations",
        f"/api/events/{draft}/registrations.csv",
        f"/api/events/{draft}/waiting-list",
        f"/api/events/{draft}/speaker-requests",
        f"/api/processes/{pid}/reminder-policies",
        f"/api/processes/{pid}/members",
        "/api/privacy/export?email=amina@example.org",
    ):
        assert (await api.client.get(url, headers=auth)).status_code == 200, url
    refusal = f"organizer {viewer_id} is a viewer of process {pid}: this needs organizer or above"
    r = await api.client.patch(f"/api/events/{draft}", json={"title": "x"}, headers=auth)
    assert r.status_code == 403 and r.json()["detail"] == refusal
    # Erasing is for those who organize: a viewer's erasure reaches no process.
    r = await api.client.post("/api/privacy/erase", json={"email": "a@example.org"}, headers=auth)
    assert r.status_code == 200 and r.json()["process_ids"] == []
    # Only owners manage members.
    r = await api.client.post(
        f"/api/processes/{pid}/members",
        json={"organizer_id": viewer_id, "role": "owner"},
        headers=auth,
    )
    assert r.status_code == 403
    assert r.json()["detail"] == (
        f"organizer {viewer_id} is a viewer of process {pid}: this needs owner or above"
    )


async def test_organizer_reminders_follow_the_role(api: Api) -> None:
    pid = await make_process(api)
    event = await make_event(api, pid, "Regional review")
    focal, _ = await api.new_organizer("Focal point", email="focal@example.org")

    async def planned() -> list[dict[str, Any]]:
        r = await api.client.get(
            "/api/notifications",
            params={"kind": "organizer_reminder", "event_id": event},
            headers=api.auth,
        )
        assert r.status_code == 200, r.text
        return [n for n in r.json()["items"] if n["organizer_id"] == focal]

    url = f"/api/processes/{pid}/members"
    r = await api.client.post(url, json={"organizer_id": focal, "role": "viewer"}, headers=api.auth)
    assert r.status_code == 201
    assert await planned() == []  # viewers only read
    r = await api.client.patch(f"{url}/{focal}", json={"role": "organizer"}, headers=api.auth)
    assert r.status_code == 200
    assert sorted(n["status"] for n in await planned()) == ["planned"] * 3
    r = await api.client.patch(f"{url}/{focal}", json={"role": "viewer"}, headers=api.auth)
    assert {n["status"] for n in await planned()} == {"cancelled"}
    r = await api.client.patch(f"{url}/{focal}", json={"role": "owner"}, headers=api.auth)
    assert sorted(n["status"] for n in await planned()) == ["planned"] * 3  # the same rows
    assert (await api.client.delete(f"{url}/{focal}", headers=api.auth)).status_code == 204
    assert {n["status"] for n in await planned()} == {"cancelled"}


# --- The organizer pages, with the same rules ----------------------------------------------


async def sign_in(api: Api, token: str) -> str:
    """Sign the client in with ``token``; returns the page's CSRF token."""
    api.client.base_url = "https://127.0.0.1:8000"  # type: ignore[assignment]
    api.client.cookies.clear()
    page = await api.client.get("/organize/sign-in")
    csrf = CSRF.search(page.text)
    assert csrf is not None
    r = await api.client.post(
        "/organize/sign-in",
        data={"token": token, "_csrf_token": csrf.group(1), "next": "/organize"},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    return csrf.group(1)


async def test_the_pages_show_a_viewer_everything_and_no_form(api: Api) -> None:
    pid = await make_process(api)
    event = await make_event(api, pid, "Regional review")
    _, token = await api.new_organizer("Observer", ["gcm"], role="viewer")
    csrf = await sign_in(api, token)

    home = await api.client.get("/organize")
    assert "GCM review" in home.text and "Your role: viewer (read only)" in home.text
    timeline = await api.client.get(f"/organize/processes/{pid}")
    assert timeline.status_code == 200 and "Regional review" in timeline.text
    assert f"/organize/events/{event}/move" not in timeline.text
    page = await api.client.get(f"/organize/events/{event}")
    assert page.status_code == 200 and 'id="read-only-note"' in page.text
    assert f'action="/organize/events/{event}' not in page.text  # no approve, cancel, select...
    for path in (f"/organize/processes/{pid}/reminders", f"/organize/processes/{pid}/feeds"):
        assert (await api.client.get(path)).status_code == 200, path
    assert (await api.client.get(f"/organize/events/{event}/move")).status_code == 403
    day = START.date().isoformat()
    r = await api.client.post(
        f"/organize/events/{event}/move",
        data={"date": day, "time": "11:00", "action": "apply", "_csrf_token": csrf},
    )
    assert r.status_code == 403
    r = await api.client.post(
        f"/organize/events/{event}/speakers/select",
        data={"count": "2", "slot_minutes": "5", "_csrf_token": csrf},
    )
    assert r.status_code == 403


async def test_a_page_session_lasts_as_long_as_its_token(api: Api) -> None:
    a = await make_process(api, "a-cycle")
    b = await make_process(api, "b-cycle")
    created = await api.client.post(
        "/api/tokens", json={"label": "pages, B only", "process_id": b}, headers=api.auth
    )
    scoped = created.json()
    await sign_in(api, scoped["token"])
    home = await api.client.get("/organize")
    assert f"/organize/processes/{b}" in home.text and f"/organize/processes/{a}" not in home.text
    assert "Your role: owner" in home.text
    assert (await api.client.get(f"/organize/processes/{a}")).status_code == 403
    assert (await api.client.get(f"/organize/processes/{b}")).status_code == 200

    r = await api.client.delete(f"/api/tokens/{scoped['id']}", headers=api.auth)
    assert r.status_code == 204
    r = await api.client.get(f"/organize/processes/{b}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/organize/sign-in")
    page = await api.client.get("/organize/sign-in")
    csrf = CSRF.search(page.text)
    assert csrf is not None
    r = await api.client.post(
        "/organize/sign-in", data={"token": scoped["token"], "_csrf_token": csrf.group(1)}
    )
    assert r.status_code == 400 and "This token was revoked." in r.text
