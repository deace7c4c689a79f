"""Requests to speak over the HTTP API, on SQLite and PostgreSQL: asking through the manage
link, the organizer's selection, order and slots, the mails, and the public speaking order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import select

from scheduler.api_speakers import SpeakerController
from scheduler.app import create_app
from scheduler.database import open_database
from scheduler.mail_render import render
from scheduler.manage_links import load_secret, sign
from scheduler.models import Event, Notification, Registration
from scheduler.settings import Settings
from tests.conftest import Api
from tests.test_api_processes import make_process

# 14 May 2030, 10:00-12:00 in New York (EDT, UTC-4).
FORUM = {"start": "2030-05-14T10:00:00-04:00", "end": "2030-05-14T12:00:00-04:00"}


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    """The conftest app, with the speaker routes added if app.py does not have them yet.

    Mail stays queued in the database (and is checked there) instead of being delivered.
    """
    settings = settings.replace(mail_enabled=False)
    app = create_app(settings)
    if not any("speaker" in route.path for route in app.routes):
        app.register(SpeakerController)
    async with AsyncTestClient(app=app, base_url="http://127.0.0.1:8000") as client:
        api = Api(client=client, token="", settings=settings)
        api.token = await api.new_token("Secretariat")
        yield api


async def make_event(api: Api, process_id: int, **changes: Any) -> int:
    body: dict[str, Any] = {
        "process_id": process_id,
        "kind": "review_forum",
        "title": "International Migration Review Forum",
        "time_zone": "America/New_York",
        "status": "published",
        "confirmation_required": False,
        **FORUM,
        **changes,
    }
    r = await api.client.post("/api/events", json=body, headers=api.auth)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


async def register(
    api: Api,
    event_id: int,
    n: int,
    constituency: str = "civil_society",
    region: str = "Africa",
    time_zone: str = "Africa/Nairobi",
) -> tuple[int, str]:
    """A registrant and the manage token mailed to them."""
    r = await api.client.post(
        f"/api/events/{event_id}/registrations",
        json={
            "name": f"Speaker {n}",
            "email": f"speaker{n}@example.org",
            "constituency": constituency,
            "country": "KEN",
            "region": region,
            "language": "en",
            "time_zone": time_zone,
            "organisation": f"Organisation {n}",
        },
    )
    assert r.status_code in (200, 201), r.text
    reg_id = int(r.json()["id"])
    db = open_database(api.settings)
    try:
        async with db.reader() as session:
            reg = await session.get(Registration, reg_id)
            assert reg is not None
            nonce = reg.token_nonce
    finally:
        await db.dispose()
    secret = load_secret(api.settings.secret_key, api.settings.data_dir)
    return reg_id, sign(reg_id, nonce, secret)


async def ask(api: Api, token: str, topic: str = "Safe pathways", **body: Any) -> int:
    r = await api.client.post(
        f"/api/registrations/{token}/speaker-request",
        json={"topic": topic, "summary": "Three points.", "language": "en", **body},
    )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


async def notes(api: Api, kind: str) -> list[Notification]:
    db = open_database(api.settings)
    try:
        async with db.reader() as session:
            rows = await session.scalars(
                select(Notification).where(Notification.kind == kind).order_by(Notification.id)
            )
            return list(rows)
    finally:
        await db.dispose()


def key_of(r: Any) -> str:
    return str(r.json()["extra"][0]["key"])


async def test_request_duplicate_withdraw_and_ask_again(api: Api) -> None:
    event_id = await make_event(api, await make_process(api))
    _, token = await register(api, event_id, 1)
    r = await api.client.post(
        f"/api/registrations/{token}/speaker-request",
        json={"topic": "  Safe   pathways ", "summary": "Three points.", "language": "fr"},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    request_id = body["id"]
    assert (body["topic"], body["language"], body["status"]) == ("Safe pathways", "fr", "requested")
    assert body["position"] is None and body["slot_start"] is None

    r = await api.client.post(
        f"/api/registrations/{token}/speaker-request",
        json={"topic": "Again", "language": "en"},
    )
    assert r.status_code == 409
    assert key_of(r) == "speaker_request"

    view = (await api.client.get(f"/api/registrations/{token}")).json()
    assert view["speaker_request"]["status"] == "requested"

    r = await api.client.delete(f"/api/registrations/{token}/speaker-request")
    assert r.status_code == 204
    view = (await api.client.get(f"/api/registrations/{token}")).json()
    assert view["speaker_request"]["status"] == "withdrawn"
    r = await api.client.delete(f"/api/registrations/{token}/speaker-request")
    assert r.status_code == 404

    # Asking again after withdrawing reuses the one request of the registration.
    assert await ask(api, token, "Regular pathways") == request_id
    view = (await api.client.get(f"/api/registrations/{token}")).json()
    assert view["speaker_request"]["topic"] == "Regular pathways"
    assert view["speaker_request"]["status"] == "requested"


async def test_request_needs_a_seat_and_good_input(api: Api) -> None:
    event_id = await make_event(api, await make_process(api), capacity=1)
    _, seated = await register(api, event_id, 1)
    _, waiting = await register(api, event_id, 2)
    r = await api.client.post(
        f"/api/registrations/{waiting}/speaker-request",
        json={"topic": "Pathways", "language": "en"},
    )
    assert r.status_code == 409
    assert key_of(r) == "status"

    url = f"/api/registrations/{seated}/speaker-request"
    r = await api.client.post(url, json={"topic": "Pathways", "language": "de"})
    assert r.status_code == 400 and key_of(r) == "language"
    r = await api.client.post(url, json={"topic": "   ", "language": "en"})
    assert r.status_code == 400 and key_of(r) == "topic"
    r = await api.client.post(url, json={"topic": "", "language": "en"})
    assert r.status_code == 400 and key_of(r) == "topic"
    r = await api.client.post(url, json={"topic": "x" * 301, "language": "en"})
    assert r.status_code == 400 and key_of(r) == "topic"
    r = await api.client.post(url, json={"topic": "Pathways", "language": "en", "slot": 1})
    assert r.status_code == 400 and "slot" in r.text
    forged = seated.split(".")[0] + "." + "A" * 32
    r = await api.client.post(
        f"/api/registrations/{forged}/speaker-request",
        json={"topic": "Pathways", "language": "en"},
    )
    assert r.status_code == 404
    r = await api.client.delete(f"/api/registrations/{seated}/speaker-request")
    assert r.status_code == 404


async def test_organizer_routes_need_a_token_of_the_process(api: Api) -> None:
    event_id = await make_event(api, await make_process(api))
    _, token = await register(api, event_id, 1)
    request_id = await ask(api, token)
    calls = [
        ("GET", f"/api/events/{event_id}/speaker-requests", None),
        ("POST", f"/api/events/{event_id}/speakers/select", {"count": 1, "slot_minutes": 5}),
        ("PUT", f"/api/events/{event_id}/speakers", {"order": [request_id], "slot_minutes": 5}),
        ("POST", f"/api/events/{event_id}/speaker-requests/{request_id}/decline", {}),
    ]
    stranger = {"Authorization": f"Bearer {await api.new_token('Another secretariat')}"}
    for method, url, body in calls:
        r = await api.client.request(method, url, json=body)
        assert r.status_code == 401, (method, url)
        r = await api.client.request(method, url, json=body, headers=stranger)
        assert r.status_code == 403, (method, url)
        missing = url.replace(f"/events/{event_id}/", "/events/9999/")
        r = await api.client.request(method, missing, json=body, headers=api.auth)
        assert r.status_code == 404, (method, url)
    # Nothing changed.
    view = (await api.client.get(f"/api/registrations/{token}")).json()
    assert view["speaker_request"]["status"] == "requested"


async def test_select_fills_in_request_order_within_quotas(api: Api) -> None:
    event_id = await make_event(api, await make_process(api))
    people = [
        ("civil_society", "Africa"),
        ("civil_society", "Europe"),
        ("civil_society", "Asia"),
        ("member_state", "africa"),
        ("academia", "Americas"),
        ("trade_union", "Europe"),
    ]
    requests = []
    for n, (constituency, region) in enumerate(people, start=1):
        _, token = await register(api, event_id, n, constituency, region)
        requests.append(await ask(api, token, f"Topic {n}"))

    r = await api.client.post(
        f"/api/events/{event_id}/speakers/select",
        json={
            "count": 4,
            "quotas": {"constituency": {"civil_society": 2}, "region": {"Africa": 1}},
            "slot_minutes": 5,
            "gap_minutes": 1,
        },
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    # 3: civil society is full; 4: Africa is full (regions ignore case).
    chosen = [requests[0], requests[1], requests[4], requests[5]]
    assert [s["id"] for s in body["order"]] == chosen
    assert body["added"] == chosen
    assert [s["position"] for s in body["order"]] == [1, 2, 3, 4]
    assert [s["slot_start_local"] for s in body["order"]] == [
        "2030-05-14T10:00:00-04:00",
        "2030-05-14T10:06:00-04:00",
        "2030-05-14T10:12:00-04:00",
        "2030-05-14T10:18:00-04:00",
    ]
    assert body["order"][0]["slot_start"] == "2030-05-14T14:00:00Z"
    assert body["order"][0]["slot_end"] == "2030-05-14T14:05:00Z"

    r = await api.client.get(
        f"/api/events/{event_id}/speaker-requests", params={"status": "requested"}, headers=api.auth
    )
    assert [s["id"] for s in r.json()] == [requests[2], requests[3]]
    assert r.json()[0]["email"] == "speaker3@example.org"
    r = await api.client.get(
        f"/api/events/{event_id}/speaker-requests", params={"status": "maybe"}, headers=api.auth
    )
    assert r.status_code == 400 and key_of(r) == "status"
    everyone = (
        await api.client.get(f"/api/events/{event_id}/speaker-requests", headers=api.auth)
    ).json()
    assert [s["id"] for s in everyone] == requests

    mails = await notes(api, "speaker_selected")
    assert len(mails) == 4
    assert mails[0].recipient_email == "speaker1@example.org"
    assert mails[0].context["slot_start"] == "2030-05-14T14:00:00+00:00"
    assert not await notes(api, "speaker_declined")

    # Selecting again with room for one more: the four keep their places and are not
    # mailed again, the next request that fits the quotas is added after them.
    r = await api.client.post(
        f"/api/events/{event_id}/speakers/select",
        json={
            "count": 5,
            "quotas": {"constituency": {"civil_society": 2}, "region": {"Africa": 1}},
            "slot_minutes": 5,
            "gap_minutes": 1,
        },
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    assert r.json()["added"] == []  # 3 and 4 are still over their quotas
    r = await api.client.post(
        f"/api/events/{event_id}/speakers/select",
        json={"count": 5, "quotas": {"region": {"Africa": 1}}, "slot_minutes": 5, "gap_minutes": 1},
        headers=api.auth,
    )
    assert r.json()["added"] == [requests[2]]
    assert [s["id"] for s in r.json()["order"]] == [*chosen, requests[2]]
    assert len(await notes(api, "speaker_selected")) == 5


async def test_reorder_decline_and_the_public_order(api: Api) -> None:
    event_id = await make_event(api, await make_process(api))
    tokens, requests = [], []
    for n in range(1, 5):
        _, token = await register(api, event_id, n, region=f"Region {n}")
        tokens.append(token)
        requests.append(await ask(api, token, f"Topic {n}"))
    r = await api.client.post(
        f"/api/events/{event_id}/speakers/select",
        json={"count": 3, "slot_minutes": 10},
        headers=api.auth,
    )
    assert [s["id"] for s in r.json()["order"]] == requests[:3]
    assert len(await notes(api, "speaker_selected")) == 3

    url = f"/api/events/{event_id}/speakers"
    a, b, c, d = requests
    bad = [
        ([c, b], "leaves out selected request"),
        ([c, b, a, a], "listed twice"),
        ([c, b, a, 9999], "no speaker request 9999"),
    ]
    for order, message in bad:
        r = await api.client.put(url, json={"order": order, "slot_minutes": 10}, headers=api.auth)
        assert r.status_code == 400, order
        assert key_of(r) == "order" and message in r.json()["extra"][0]["message"]

    # The organizer reverses the order, adds the fourth request by hand and starts later.
    r = await api.client.put(
        url,
        json={
            "order": [d, c, b, a],
            "start": "2030-05-14T10:30:00-04:00",
            "slot_minutes": 8,
            "gap_minutes": 2,
        },
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    assert [s["id"] for s in r.json()["order"]] == [d, c, b, a]
    assert r.json()["added"] == [d]
    assert [s["slot_start_local"][11:16] for s in r.json()["order"]] == [
        "10:30",
        "10:40",
        "10:50",
        "11:00",
    ]
    # Every slot moved, so all four are told (three again, one for the first time).
    assert len(await notes(api, "speaker_selected")) == 7

    r = await api.client.post(
        f"/api/events/{event_id}/speaker-requests/{c}/decline",
        json={"reason": "Time is short."},
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "declined" and r.json()["position"] is None
    declined = await notes(api, "speaker_declined")
    assert [n.recipient_email for n in declined] == ["speaker3@example.org"]
    assert declined[0].context["reason"] == "Time is short."
    r = await api.client.post(
        f"/api/events/{event_id}/speaker-requests/{c}/decline", headers=api.auth
    )
    assert r.status_code == 409 and key_of(r) == "status"
    r = await api.client.post(
        f"/api/events/{event_id}/speaker-requests/9999/decline", json={}, headers=api.auth
    )
    assert r.status_code == 404
    r = await api.client.put(url, json={"order": [d, c, b, a], "slot_minutes": 8}, headers=api.auth)
    assert r.status_code == 400 and f"request {c} is declined" in r.text

    # The public order: positions close up, the others keep the slots they were told.
    r = await api.client.get(url)
    assert r.status_code == 200
    public = r.json()
    assert public["time_zone"] == "America/New_York"
    assert [(s["position"], s["name"]) for s in public["speakers"]] == [
        (1, "Speaker 4"),
        (2, "Speaker 2"),
        (3, "Speaker 1"),
    ]
    first = public["speakers"][0]
    assert first["organisation"] == "Organisation 4"
    assert first["constituency"] == "civil_society"
    assert first["topic"] == "Topic 4" and first["language"] == "en"
    assert first["slot_start"] == "2030-05-14T14:30:00Z"
    assert first["slot_start_local"] == "2030-05-14T10:30:00-04:00"
    assert first["slot_end_local"] == "2030-05-14T10:38:00-04:00"
    assert [s["slot_start_local"][11:16] for s in public["speakers"]] == ["10:30", "10:50", "11:00"]
    assert "@" not in r.text

    # A speaker who withdraws, or whose registration is cancelled, leaves the public order.
    r = await api.client.delete(f"/api/registrations/{tokens[1]}/speaker-request")
    assert r.status_code == 204
    r = await api.client.post(f"/api/registrations/{tokens[0]}/cancel")
    assert r.status_code == 200
    public = (await api.client.get(url)).json()
    assert [(s["position"], s["name"]) for s in public["speakers"]] == [(1, "Speaker 4")]

    # Only published events show a speaking order.
    r = await api.client.patch(
        f"/api/events/{event_id}", json={"status": "postponed"}, headers=api.auth
    )
    assert r.status_code == 200, r.text
    assert (await api.client.get(url)).status_code == 404
    assert (await api.client.get("/api/events/9999/speakers")).status_code == 404


async def test_slots_must_fit_inside_the_event_and_errors_name_the_field(api: Api) -> None:
    event_id = await make_event(api, await make_process(api))
    requests = []
    for n in range(1, 4):
        _, token = await register(api, event_id, n)
        requests.append(await ask(api, token))
    select_url = f"/api/events/{event_id}/speakers/select"
    order_url = f"/api/events/{event_id}/speakers"
    early, late = "2030-05-14T09:59:00-04:00", "2030-05-14T12:00:00-04:00"
    day_before = "2030-05-13T14:00:00Z"
    cases: list[tuple[str, dict[str, Any], str]] = [
        (select_url, {"count": 3, "slot_minutes": 10, "start": early}, "start"),
        (select_url, {"count": 3, "slot_minutes": 10, "start": late}, "start"),
        (select_url, {"count": 3, "slot_minutes": 41}, "slot_minutes"),
        (select_url, {"count": 3, "slot_minutes": 30, "gap_minutes": 16}, "slot_minutes"),
        (select_url, {"count": 3, "slot_minutes": 10, "start": "2030-05-14T10:00:00"}, "start"),
        (select_url, {"count": 3, "slot_minutes": 0}, "slot_minutes"),
        (select_url, {"count": 3, "slot_minutes": 5, "gap_minutes": -1}, "gap_minutes"),
        (select_url, {"count": 0, "slot_minutes": 5}, "count"),
        (select_url, {"slot_minutes": 5}, "count"),
        (order_url, {"order": requests, "slot_minutes": 41}, "slot_minutes"),
        (order_url, {"order": requests, "slot_minutes": 5, "start": day_before}, "start"),
        (order_url, {"order": [0], "slot_minutes": 5}, "order"),
    ]  # fmt: skip
    for url, body, field in cases:
        method = "PUT" if url == order_url else "POST"
        r = await api.client.request(method, url, json=body, headers=api.auth)
        assert r.status_code == 400, (body, r.text)
        extra = r.json()["extra"][0]
        # Our checks and msgspec's name the field as the key; a missing field is named in
        # Litestar's message (its key is "data").
        named = extra["key"] in (field, f"{field}[0]") or f"`{field}`" in extra["message"]
        assert named, (body, r.json())
        if body.get("start") in (early, late, day_before):
            assert "must be within the event" in extra["message"]
        if extra["key"] == "slot_minutes" and body["slot_minutes"] > 1:
            assert "after the event ends at 2030-05-14T12:00:00-04:00" in extra["message"]
    r = await api.client.post(
        select_url,
        json={"count": 3, "slot_minutes": 5, "quotas": {"constituency": {"pirates": 1}}},
        headers=api.auth,
    )
    assert r.status_code == 400 and key_of(r) == "quotas.constituency"
    r = await api.client.post(
        select_url,
        json={"count": 3, "slot_minutes": 5, "quotas": {"region": {"Africa": -1}}},
        headers=api.auth,
    )
    assert r.status_code == 400 and key_of(r).startswith("quotas.region")
    # Nothing was selected or mailed by the refused calls.
    r = await api.client.get(f"/api/events/{event_id}/speaker-requests", headers=api.auth)
    assert {s["status"] for s in r.json()} == {"requested"}
    assert not await notes(api, "speaker_selected")
    # Three slots of 40 minutes fill the two hours exactly.
    r = await api.client.post(select_url, json={"count": 3, "slot_minutes": 40}, headers=api.auth)
    assert r.status_code == 200, r.text
    assert r.json()["order"][-1]["slot_end_local"] == "2030-05-14T12:00:00-04:00"


async def test_slots_in_the_event_and_the_speaker_time_zone_across_dst(api: Api) -> None:
    """New York springs forward on 10 March 2030 at 02:00; Paris only on 31 March."""
    event_id = await make_event(
        api,
        await make_process(api),
        title="Overnight consultation",
        start="2030-03-09T22:00:00-05:00",
        end="2030-03-10T06:00:00-04:00",
    )
    _, paris = await register(api, event_id, 1, time_zone="Europe/Paris")
    _, tokyo = await register(api, event_id, 2, time_zone="Asia/Tokyo")
    first = await ask(api, paris)
    second = await ask(api, tokyo)
    r = await api.client.put(
        f"/api/events/{event_id}/speakers",
        json={
            "order": [first, second],
            "start": "2030-03-10T01:30:00-05:00",
            "slot_minutes": 20,
            "gap_minutes": 10,
        },
        headers=api.auth,
    )
    assert r.status_code == 200, r.text

    mine = (await api.client.get(f"/api/registrations/{paris}")).json()["speaker_request"]
    assert mine["position"] == 1
    assert mine["slot_start"] == "2030-03-10T06:30:00Z"
    assert mine["slot_start_local"] == "2030-03-10T01:30:00-05:00"
    assert mine["slot_start_in_your_time_zone"] == "2030-03-10T07:30:00+01:00"
    theirs = (await api.client.get(f"/api/registrations/{tokyo}")).json()["speaker_request"]
    # Thirty minutes later for everyone, but New York's clocks jumped an hour meanwhile.
    assert theirs["slot_start"] == "2030-03-10T07:00:00Z"
    assert theirs["slot_start_local"] == "2030-03-10T03:00:00-04:00"
    assert theirs["slot_start_in_your_time_zone"] == "2030-03-10T16:00:00+09:00"

    public = (await api.client.get(f"/api/events/{event_id}/speakers")).json()["speakers"]
    assert [(s["slot_start_local"], s["slot_end_local"]) for s in public] == [
        ("2030-03-10T01:30:00-05:00", "2030-03-10T01:50:00-05:00"),
        ("2030-03-10T03:00:00-04:00", "2030-03-10T03:20:00-04:00"),
    ]

    # The mail gives the slot in the speaker's zone and, as the clocks differ, the event's.
    mail = (await notes(api, "speaker_selected"))[0]
    assert mail.recipient_email == "speaker1@example.org"
    db = open_database(api.settings)
    try:
        async with db.reader() as session:
            event = await session.get(Event, event_id)
    finally:
        await db.dispose()
    message = render(
        mail, event=event, links={}, mail_from="Forum <noreply@example.org>", now=_now()
    )
    body = message.get_body(("plain",))
    assert body is not None
    text = " ".join(str(body.get_content()).split())
    assert "Your speaking slot: Sunday, March 10, 2030, 7:30 AM" in text
    assert "Central European Standard Time" in text
    assert "Local time at the event: Sunday, March 10, 2030, 1:30 AM" in text


def _now() -> datetime:
    return datetime.fromisoformat("2030-03-01T00:00:00+00:00")


async def test_the_routes_are_in_the_openapi_schema(api: Api) -> None:
    r = await api.client.get("/schema/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    assert set(paths["/api/registrations/{token}/speaker-request"]) >= {"post", "delete"}
    assert set(paths["/api/events/{event_id}/speakers"]) >= {"get", "put"}
    assert "post" in paths["/api/events/{event_id}/speakers/select"]
    assert "get" in paths["/api/events/{event_id}/speaker-requests"]
    assert "post" in paths["/api/events/{event_id}/speaker-requests/{request_id}/decline"]
