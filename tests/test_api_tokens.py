"""API tokens over the HTTP API, on SQLite and PostgreSQL: creating (the secret shown once),
listing, revoking, the read-only cap, the scope to one process, and last use."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from scheduler.database import open_database
from scheduler.models import ApiToken, utc_now
from scheduler.tokens import hash_token
from tests.conftest import Api

FUTURE = "2031-03-05T10:00:00-05:00"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def make_process(api: Api, slug: str) -> int:
    r = await api.client.post(
        "/api/processes",
        json={"slug": slug, "name": slug.upper(), "time_zone": "UTC"},
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
        "start": FUTURE,
        "end": "2031-03-05T13:00:00-05:00",
        "status": status,
    }
    r = await api.client.post("/api/events", json=body, headers=api.auth)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


async def new_token(api: Api, auth: dict[str, str] | None = None, **body: Any) -> dict[str, Any]:
    r = await api.client.post("/api/tokens", json={"label": "x", **body}, headers=auth or api.auth)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def stored(api: Api, token_id: int) -> ApiToken:
    db = open_database(api.settings)
    try:
        async with db.reader() as session:
            row = await session.get(ApiToken, token_id)
            assert row is not None
            return row
    finally:
        await db.dispose()


async def test_a_secret_is_shown_once_and_only_its_hash_is_kept(api: Api) -> None:
    created = await new_token(api, label="  Laptop   of the secretariat ")
    secret = created["token"]
    assert secret.startswith("fs_") and len(secret) > 40
    assert created["label"] == "Laptop of the secretariat"
    assert created["process_id"] is None and created["read_only"] is False
    assert created["current"] is False and created["revoked_at"] is None
    row = await stored(api, created["id"])
    assert row.token_hash == hash_token(secret) and secret not in row.token_hash

    listed = await api.client.get("/api/tokens", headers=bearer(secret))
    assert listed.status_code == 200
    assert secret not in listed.text and row.token_hash not in listed.text
    assert api.token not in listed.text and hash_token(api.token) not in listed.text
    items = {t["id"]: t for t in listed.json()}
    assert len(items) == 2  # the first token from `organizer create`, and this one
    assert items[created["id"]]["current"] is True
    assert [t["current"] for t in items.values()].count(True) == 1
    assert "token" not in items[created["id"]]

    for bad in ({"label": ""}, {"label": "   "}, {"label": "x" * 201}, {"label": "x", "colour": 1}):
        r = await api.client.post("/api/tokens", json=bad, headers=api.auth)
        assert r.status_code == 400, (bad, r.text)


async def test_a_revoked_token_gets_401_at_once(api: Api) -> None:
    created = await new_token(api)
    secret, token_id = created["token"], created["id"]
    assert (await api.client.get("/api/notifications", headers=bearer(secret))).status_code == 200
    r = await api.client.delete(f"/api/tokens/{token_id}", headers=api.auth)
    assert r.status_code == 204
    r = await api.client.get("/api/notifications", headers=bearer(secret))
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["detail"] == "Authorization: this token was revoked"
    # Revoking twice is harmless and keeps the first time.
    first = (await stored(api, token_id)).revoked_at
    assert (await api.client.delete(f"/api/tokens/{token_id}", headers=api.auth)).status_code == 204
    assert (await stored(api, token_id)).revoked_at == first
    listed = {t["id"]: t for t in (await api.client.get("/api/tokens", headers=api.auth)).json()}
    assert listed[token_id]["revoked_at"] is not None
    # A token may revoke itself (signing out for good).
    own = await new_token(api)
    r = await api.client.delete(f"/api/tokens/{own['id']}", headers=bearer(own["token"]))
    assert r.status_code == 204
    assert (await api.client.get("/api/tokens", headers=bearer(own["token"]))).status_code == 401


async def test_nobody_sees_or_revokes_anothers_tokens(api: Api) -> None:
    mine = await new_token(api, label="mine")
    other = bearer(await api.new_token("Other secretariat"))
    listed = (await api.client.get("/api/tokens", headers=other)).json()
    assert [t["label"] for t in listed] == ["first token"]
    assert (await api.client.delete(f"/api/tokens/{mine['id']}", headers=other)).status_code == 404
    assert (await api.client.delete("/api/tokens/999999", headers=other)).status_code == 404
    assert (await api.client.get("/api/tokens", headers=bearer(mine["token"]))).status_code == 200


async def test_a_read_only_token_reads_everything_and_changes_nothing(api: Api) -> None:
    pid = await make_process(api, "gcm")
    draft = await make_event(api, pid, "Draft consultation", status="draft")
    ro = await new_token(api, read_only=True)
    auth = bearer(ro["token"])
    assert (await api.client.get(f"/api/events/{draft}", headers=auth)).status_code == 200
    assert (await api.client.get(f"/api/events/{draft}/registrations", headers=auth)).is_success
    assert (await api.client.get(f"/api/processes/{pid}/members", headers=auth)).is_success
    writes = [
        ("PATCH", f"/api/events/{draft}", {"title": "Changed"}),
        ("DELETE", f"/api/events/{draft}", None),
        ("POST", "/api/processes", {"slug": "more", "name": "More", "time_zone": "UTC"}),
        ("POST", "/api/tokens", {"label": "wider", "read_only": False}),
        ("POST", "/api/tokens", {"label": "as narrow", "read_only": True}),
        ("DELETE", f"/api/tokens/{ro['id']}", None),
        ("POST", "/api/privacy/erase", {"email": "amina@example.org"}),
    ]
    for method, url, body in writes:
        r = await api.client.request(method, url, json=body, headers=auth)
        assert r.status_code == 403, (method, url, r.text)
        assert r.json()["detail"] == "this token is read-only", (method, url)
    r = await api.client.get(f"/api/events/{draft}", headers=api.auth)
    assert r.json()["title"] == "Draft consultation"


async def test_a_scoped_token_acts_on_its_process_alone(api: Api) -> None:
    a = await make_process(api, "a-cycle")
    b = await make_process(api, "b-cycle")
    a_draft = await make_event(api, a, "A draft", status="draft")
    a_public = await make_event(api, a, "A published")
    b_draft = await make_event(api, b, "B draft", status="draft")
    scoped = await new_token(api, label="for B", process_id=b)
    assert scoped["process_id"] == b
    auth = bearer(scoped["token"])

    # Reads: B's drafts, never A's (A's published items stay public).
    assert (await api.client.get(f"/api/events/{b_draft}", headers=auth)).status_code == 200
    assert (await api.client.get(f"/api/events/{a_draft}", headers=auth)).status_code == 404
    titles = [
        e["title"] for e in (await api.client.get("/api/events", headers=auth)).json()["items"]
    ]
    assert sorted(titles) == ["A published", "B draft"]
    timeline = await api.client.get(f"/api/processes/{a}/timeline", headers=auth)
    assert [i["title"] for i in timeline.json()["items"]] == ["A published"]
    calendar = await api.client.get(f"/api/processes/{a}/calendar.ics", headers=auth)
    assert "A draft" not in calendar.text and "A published" in calendar.text
    r = await api.client.get(f"/api/events/{a_public}/registrations", headers=auth)
    assert r.status_code == 403
    assert (
        r.json()["detail"] == f"this token is scoped to process {b}: it may not act on process {a}"
    )
    # The full token still sees both.
    assert (await api.client.get(f"/api/events/{a_draft}", headers=api.auth)).status_code == 200

    # Writes: B only.
    r = await api.client.patch(f"/api/events/{b_draft}", json={"title": "B"}, headers=auth)
    assert r.status_code == 200
    r = await api.client.patch(f"/api/events/{a_public}", json={"title": "x"}, headers=auth)
    assert r.status_code == 403
    r = await api.client.post(
        "/api/processes", json={"slug": "c-cycle", "name": "C", "time_zone": "UTC"}, headers=auth
    )
    assert r.status_code == 403 and "may not create processes" in r.json()["detail"]

    # Tokens: never broader than itself, and it lists its own process's tokens only.
    r = await api.client.post("/api/tokens", json={"label": "wider"}, headers=auth)
    assert r.status_code == 403 and r.json()["detail"].startswith("process_id:")
    r = await api.client.post("/api/tokens", json={"label": "other", "process_id": a}, headers=auth)
    assert r.status_code == 403
    same = await new_token(api, auth, label="also for B", process_id=b, read_only=True)
    listed = (await api.client.get("/api/tokens", headers=auth)).json()
    assert sorted(t["id"] for t in listed) == sorted([scoped["id"], same["id"]])
    first = next(
        t
        for t in (await api.client.get("/api/tokens", headers=api.auth)).json()
        if t["label"] == "first token"
    )
    assert (await api.client.delete(f"/api/tokens/{first['id']}", headers=auth)).status_code == 404


async def test_a_token_for_a_process_needs_a_membership(api: Api) -> None:
    a = await make_process(api, "a-cycle")
    other = bearer(await api.new_token("Other secretariat"))
    r = await api.client.post("/api/tokens", json={"label": "x", "process_id": a}, headers=other)
    assert r.status_code == 403
    assert "is not a member of process" in r.json()["detail"]
    r = await api.client.post(
        "/api/tokens", json={"label": "x", "process_id": 999_999}, headers=other
    )
    assert r.status_code == 403
    r = await api.client.post("/api/tokens", json={"label": "x", "process_id": 0}, headers=other)
    assert r.status_code == 400 and r.json()["extra"][0]["key"] == "process_id"
    # A viewer may have one (it can only ever read).
    viewer_id, viewer_token = await api.new_organizer("Observer", ["a-cycle"], role="viewer")
    created = await new_token(api, bearer(viewer_token), process_id=a)
    r = await api.client.patch(
        f"/api/processes/{a}", json={"name": "Mine"}, headers=bearer(created["token"])
    )
    assert r.status_code == 403
    assert r.json()["detail"] == (
        f"organizer {viewer_id} is a viewer of process {a}: this needs organizer or above"
    )


async def test_last_use_is_noted_at_most_once_a_minute(api: Api) -> None:
    created = await new_token(api)
    token_id, auth = created["id"], bearer(created["token"])
    assert (await stored(api, token_id)).last_used_at is None
    assert (await api.client.get("/api/tokens", headers=auth)).status_code == 200
    first = (await stored(api, token_id)).last_used_at
    assert first is not None

    async def set_last_used(seconds_ago: int) -> None:
        db = open_database(api.settings)
        try:
            async with db.writer.begin() as session:
                await session.execute(
                    update(ApiToken)
                    .where(ApiToken.id == token_id)
                    .values(last_used_at=utc_now() - timedelta(seconds=seconds_ago))
                )
        finally:
            await db.dispose()

    await set_last_used(30)
    recent = (await stored(api, token_id)).last_used_at
    assert (await api.client.get("/api/tokens", headers=auth)).status_code == 200
    assert (await stored(api, token_id)).last_used_at == recent  # within the minute: no write
    await set_last_used(90)
    stale = (await stored(api, token_id)).last_used_at
    assert (await api.client.get("/api/tokens", headers=auth)).status_code == 200
    noted = (await stored(api, token_id)).last_used_at
    assert stale is not None and noted is not None and noted > stale
    listed = {t["id"]: t for t in (await api.client.get("/api/tokens", headers=auth)).json()}
    assert listed[token_id]["last_used_at"] is not None


async def test_only_hashes_are_stored(api: Api) -> None:
    secrets = [(await new_token(api, label=f"t{n}"))["token"] for n in range(3)]
    db = open_database(api.settings)
    try:
        async with db.reader() as session:
            hashes = set(await session.scalars(select(ApiToken.token_hash)))
    finally:
        await db.dispose()
    assert {hash_token(s) for s in [*secrets, api.token]} == hashes
    assert not any(s in h for s in secrets for h in hashes)
