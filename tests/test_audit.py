"""The audit trail, on SQLite and PostgreSQL: who changed what (before and after) and when.

Organizers' changes over the API and the organizer pages, cascades, the jobs (waiting-list
promotion, hold expiry, retention, feed runs) and the CLI each leave entries with the right
actor; a rolled-back request leaves none; the database refuses to change or delete an entry;
the trail reads in pages, filters, and exports as CSV and NDJSON; and no registrant's
personal data ever reaches it, so erasing a person leaves it alone.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import DBAPIError

from scheduler import audit, retention
from scheduler.api_audit import EntityType
from scheduler.database import Database, open_database
from scheduler.logs import JsonFormatter
from scheduler.manage_links import load_secret, sign
from scheduler.models import AuditEntry, Feed, Process, Registration, utc_now
from scheduler.pledge_feed import FeedRunner
from scheduler.registrations import expire_holds
from scheduler.settings import Settings
from tests import test_api_speakers as speakers
from tests.conftest import Api, base_settings
from tests.feed_server import FeedServer, pledge
from tests.test_api_milestones import make_milestone
from tests.test_api_processes import make_process
from tests.test_cli import run
from tests.test_pages import CSRF, sign_in

YEAR = datetime.now(UTC).year + 2
START = datetime(YEAR, 5, 12, 14, 0, tzinfo=UTC)  # 10:00 in New York
END = datetime(YEAR, 5, 12, 21, 0, tzinfo=UTC)
NY = "America/New_York"


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return base_settings(database_url, tmp_path).replace(
        feeds_allowed_hosts="127.0.0.1", feeds_min_interval_seconds=60
    )


# --- Helpers ------------------------------------------------------------------------------


@asynccontextmanager
async def database(api: Api) -> AsyncIterator[Database]:
    db = open_database(api.settings)
    try:
        yield db
    finally:
        await db.dispose()


async def trail(api: Api, token: str | None = None, **params: Any) -> list[dict[str, Any]]:
    """Every entry the filters keep, following the pages to the end."""
    headers = {"Authorization": f"Bearer {token or api.token}"}
    items: list[dict[str, Any]] = []
    while True:
        r = await api.client.get("/api/audit", params=params, headers=headers)
        assert r.status_code == 200, r.text
        page = r.json()
        items += page["items"]
        if page["next_before_id"] is None:
            return items
        params = {**params, "before_id": page["next_before_id"]}


async def all_rows(api: Api) -> list[AuditEntry]:
    async with database(api) as db, db.reader() as session:
        return list(await session.scalars(select(AuditEntry).order_by(AuditEntry.id)))


def only(entries: list[dict[str, Any]], action: str, entity_id: int) -> dict[str, Any]:
    found = [e for e in entries if e["action"] == action and e["entity_id"] == entity_id]
    assert len(found) == 1, (action, entity_id, entries)
    return found[0]


async def make_event(api: Api, process_id: int, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "process_id": process_id,
        "kind": "stakeholder_hearing",
        "title": "Informal multi-stakeholder hearing",
        "time_zone": NY,
        "start": START.isoformat(),
        "end": END.isoformat(),
        "venue": "Conference Room 4",
        "status": "published",
    }
    body.update(changes)
    r = await api.client.post("/api/events", json=body, headers=api.auth)
    assert r.status_code == 201, r.text
    event: dict[str, Any] = r.json()
    return event


def person(n: int, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": f"Wanjiru Kamau-{n}",
        "email": f"wanjiru.kamau{n}@example.org",
        "organisation": f"Kituo cha Sheria {n}",
        "constituency": "civil_society",
        "country": "KEN",
        "language": "en",
        "time_zone": "Africa/Nairobi",
    }
    body.update(changes)
    return body


async def register(api: Api, event_id: int, body: dict[str, Any]) -> dict[str, Any]:
    r = await api.client.post(f"/api/events/{event_id}/registrations", json=body)
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


async def organizer_id(api: Api, token: str | None = None) -> int:
    entries = await trail(api, token, action="membership.created")
    assert entries, "the organizer made no process yet"
    return int(entries[-1]["actor_id"])


# --- An organizer's changes ---------------------------------------------------------------


async def test_organizer_creates_changes_moves_cancels_and_deletes_an_event(api: Api) -> None:
    pid = await make_process(api)
    created = await trail(api)
    me = await organizer_id(api)
    assert [e["action"] for e in created] == ["membership.created", "process.created"]
    membership = only(created, "membership.created", me)
    assert membership["after"] == {"process_id": pid, "organizer_id": me, "role": "owner"}
    assert membership["process_id"] == pid

    r = await api.client.post(
        "/api/events",
        json={
            "process_id": pid,
            "kind": "consultation",
            "title": "Informal consultations",
            "time_zone": NY,
            "start": START.isoformat(),
            "end": END.isoformat(),
            "capacity": 40,
        },
        headers={**api.auth, "X-Request-ID": "req-create-1"},
    )
    assert r.status_code == 201, r.text
    assert r.headers["x-request-id"] == "req-create-1"
    event_id = r.json()["id"]
    entry = only(await trail(api, entity_type="event"), "event.created", event_id)
    assert entry["actor_kind"] == "organizer" and entry["actor_id"] == me
    assert entry["actor_label"] == "Secretariat"
    assert entry["process_id"] == pid and entry["request_id"] == "req-create-1"
    assert entry["before"] == {}
    assert entry["after"]["title"] == "Informal consultations"
    assert entry["after"]["starts_at"] == START.isoformat().replace("+00:00", "Z")
    assert entry["after"]["status"] == "draft" and entry["after"]["capacity"] == 40
    assert "sequence" not in entry["after"] and "updated_at" not in entry["after"]
    at = datetime.fromisoformat(entry["at"])
    assert at.utcoffset() == timedelta(0)

    r = await api.client.patch(
        f"/api/events/{event_id}",
        json={"title": "Consultations on the progress declaration", "status": "published"},
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    # A request id the client did not send is made up, and each answer says which.
    assert len(r.headers["x-request-id"]) == 32
    published = only(await trail(api, entity_id=event_id), "event.published", event_id)
    assert published["before"] == {
        "title": "Informal consultations",
        "status": "draft",
    }
    assert published["after"] == {
        "title": "Consultations on the progress declaration",
        "status": "published",
    }
    assert published["request_id"] == r.headers["x-request-id"]

    later = START + timedelta(days=2)
    r = await api.client.post(
        f"/api/events/{event_id}/move", json={"start": later.isoformat()}, headers=api.auth
    )
    assert r.status_code == 200, r.text
    moved = only(await trail(api, entity_id=event_id), "event.moved", event_id)
    assert moved["before"] == {
        "starts_at": START.isoformat().replace("+00:00", "Z"),
        "ends_at": END.isoformat().replace("+00:00", "Z"),
    }
    assert moved["after"] == {
        "starts_at": later.isoformat().replace("+00:00", "Z"),
        "ends_at": (END + timedelta(days=2)).isoformat().replace("+00:00", "Z"),
    }
    # A preview writes nothing, so it is not in the trail.
    r = await api.client.post(
        f"/api/events/{event_id}/move",
        json={"start": START.isoformat(), "preview": True},
        headers=api.auth,
    )
    assert r.status_code == 200, r.text

    r = await api.client.patch(
        f"/api/events/{event_id}", json={"status": "cancelled"}, headers=api.auth
    )
    assert r.status_code == 200, r.text
    cancelled = only(await trail(api, entity_id=event_id), "event.cancelled", event_id)
    assert (cancelled["before"], cancelled["after"]) == (
        {"status": "published"},
        {"status": "cancelled"},
    )

    r = await api.client.delete(f"/api/events/{event_id}", headers=api.auth)
    assert r.status_code == 204, r.text
    deleted = only(await trail(api, entity_id=event_id), "event.deleted", event_id)
    assert deleted["after"] == {}
    assert deleted["before"]["title"] == "Consultations on the progress declaration"
    assert deleted["before"]["status"] == "cancelled"
    actions = [e["action"] for e in await trail(api, entity_type="event", entity_id=event_id)]
    assert actions == [
        "event.deleted",
        "event.cancelled",
        "event.moved",
        "event.published",
        "event.created",
    ]


async def test_milestone_create_change_move_and_cancel(api: Api) -> None:
    pid = await make_process(api)
    milestone = await make_milestone(api, pid, status="draft")
    mid = milestone["id"]
    r = await api.client.patch(
        f"/api/milestones/{mid}",
        json={"due": "2030-03-26T23:59:00-04:00", "title": "National reviews due"},
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    r = await api.client.patch(
        f"/api/milestones/{mid}", json={"status": "cancelled"}, headers=api.auth
    )
    assert r.status_code == 200, r.text
    entries = await trail(api, entity_type="milestone", entity_id=mid)
    assert [e["action"] for e in entries] == [
        "milestone.cancelled",
        "milestone.moved",
        "milestone.created",
    ]
    moved = entries[1]
    assert moved["before"] == {
        "title": "Voluntary national reviews due",
        "due_at": "2030-03-20T03:59:00Z",
    }
    assert moved["after"] == {"title": "National reviews due", "due_at": "2030-03-27T03:59:00Z"}
    assert entries[0]["before"] == {"status": "draft"}
    assert {e["actor_kind"] for e in entries} == {"organizer"}


async def test_a_cascade_records_every_item_it_moved(api: Api) -> None:
    pid = await make_process(api)
    forum = await make_event(api, pid, kind="review_forum", title="IMRF")
    hearing = await make_event(
        api,
        pid,
        title="Hearing",
        relative_to_id=forum["id"],
        placement={"days": -1, "at": "10:00", "end_at": "18:00"},
    )
    deadline = await make_milestone(
        api, pid, relative_to_id=forum["id"], placement={"weeks": -8, "at": "23:59"}
    )
    r = await api.client.post(
        f"/api/events/{forum['id']}/move",
        json={"start": (START + timedelta(days=7)).isoformat()},
        headers={**api.auth, "X-Request-ID": "cascade-7"},
    )
    assert r.status_code == 200, r.text
    moved = {(m["type"], m["id"]) for m in r.json()["moved"]}
    assert moved == {
        ("event", forum["id"]),
        ("event", hearing["id"]),
        ("milestone", deadline["id"]),
    }
    entries = [e for e in await trail(api) if e["request_id"] == "cascade-7"]
    assert sorted((e["entity_type"], e["entity_id"], e["action"]) for e in entries) == sorted(
        [
            ("event", forum["id"], "event.moved"),
            ("event", hearing["id"], "event.moved"),
            ("milestone", deadline["id"], "milestone.moved"),
        ]
    )
    for e in entries:
        field = "due_at" if e["entity_type"] == "milestone" else "starts_at"
        old = datetime.fromisoformat(e["before"][field])
        assert datetime.fromisoformat(e["after"][field]) - old == timedelta(days=7)
        assert e["actor_kind"] == "organizer"


async def test_a_rolled_back_request_leaves_no_entry(api: Api) -> None:
    pid = await make_process(api)
    event = await make_event(api, pid)
    before = await all_rows(api)
    # The move is flushed before the bad parent is found: the whole request rolls back.
    r = await api.client.patch(
        f"/api/events/{event['id']}",
        json={"start": (START + timedelta(days=1)).isoformat(), "parent_id": 999_999},
        headers=api.auth,
    )
    assert r.status_code == 400, r.text
    assert r.json()["extra"][0]["key"] == "parent_id"
    r = await api.client.post(
        "/api/processes",
        json={"slug": "gcm", "name": "Twice", "time_zone": NY},
        headers=api.auth,
    )
    assert r.status_code == 409, r.text
    after = await all_rows(api)
    assert [e.id for e in after] == [e.id for e in before]


async def test_reminder_policies_and_feeds_show_what_changed(api: Api) -> None:
    pid = await make_process(api)
    policies = {"policies": [{"kind": "plenary", "offsets": [1440, 60]}]}
    r = await api.client.put(
        f"/api/processes/{pid}/reminder-policies", json=policies, headers=api.auth
    )
    assert r.status_code == 200, r.text
    policies["policies"].append({"kind": "milestone", "offsets": [10080]})
    policies["policies"][0]["offsets"] = [60]
    r = await api.client.put(
        f"/api/processes/{pid}/reminder-policies", json=policies, headers=api.auth
    )
    assert r.status_code == 200, r.text
    entries = await trail(api, entity_type="reminder_policy")
    assert sorted((e["action"], e["after"].get("kind")) for e in entries) == [
        ("reminder_policy.created", "milestone"),
        ("reminder_policy.created", "plenary"),
        ("reminder_policy.updated", None),
    ]
    updated = next(e for e in entries if e["action"] == "reminder_policy.updated")
    assert (updated["before"], updated["after"]) == ({"offsets": [1440, 60]}, {"offsets": [60]})

    r = await api.client.post(
        "/api/feeds",
        json={
            "process_id": pid,
            "name": "gcm-pledges",
            "url": "http://127.0.0.1:9/pledges.json",
            "format": "json",
            "interval_seconds": 3600,
            "auth_header": {"name": "X-Api-Key", "value": "s3cret-key-value"},
        },
        headers=api.auth,
    )
    assert r.status_code == 201, r.text
    feed_id = r.json()["id"]
    r = await api.client.patch(
        f"/api/feeds/{feed_id}",
        json={"auth_header": {"name": "X-Api-Key", "value": "an0ther-key"}, "enabled": False},
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    changed = only(await trail(api, entity_type="feed"), "feed.updated", feed_id)
    assert changed["before"] == {"auth_header_value": "[redacted]", "enabled": True}
    assert changed["after"] == {"auth_header_value": "[redacted]", "enabled": False}
    dump = json.dumps([(e.before, e.after) for e in await all_rows(api)])
    assert "s3cret" not in dump and "an0ther" not in dump


async def test_organizer_pages_record_the_signed_in_organizer(api: Api) -> None:
    pid = await make_process(api)
    event = await make_event(api, pid)
    await sign_in(api)
    page = await api.client.get(f"/organize/events/{event['id']}/move")
    token = CSRF.search(page.text)
    assert token is not None
    r = await api.client.post(
        f"/organize/events/{event['id']}/move",
        data={
            "_csrf_token": token.group(1),
            "date": (START + timedelta(days=3)).strftime("%Y-%m-%d"),
            "time": "10:00",
            "action": "apply",
        },
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    moved = only(await trail(api, entity_id=event["id"]), "event.moved", event["id"])
    assert moved["actor_kind"] == "organizer" and moved["actor_label"] == "Secretariat"
    assert moved["after"]["starts_at"] == (START + timedelta(days=3)).isoformat().replace(
        "+00:00", "Z"
    )


# --- Registrations: organizers and the system, not the public ---------------------------


async def test_promotions_are_the_systems_and_the_publics_own_changes_are_not_recorded(
    api: Api,
) -> None:
    pid = await make_process(api)
    event = await make_event(api, pid, capacity=1, confirmation_required=False)
    first = await register(api, event["id"], person(1))
    second = await register(api, event["id"], person(2))
    third = await register(api, event["id"], person(3))
    assert [first["status"], second["status"], third["status"]] == [
        "confirmed",
        "waiting",
        "waiting",
    ]
    assert await trail(api, entity_type="registration") == []

    # The organizer cancels the first; the waiting list gives the seat to the second.
    r = await api.client.post(
        f"/api/events/{event['id']}/registrations/{first['id']}/cancel", headers=api.auth
    )
    assert r.status_code == 200, r.text
    entries = await trail(api, entity_type="registration")
    cancelled = only(entries, "registration.status_changed", first["id"])
    assert cancelled["actor_kind"] == "organizer"
    assert cancelled["before"]["status"] == "confirmed"
    assert cancelled["after"]["status"] == "cancelled"
    promoted = only(entries, "registration.status_changed", second["id"])
    assert (promoted["actor_kind"], promoted["actor_id"]) == ("system", None)
    assert promoted["actor_label"] == "waiting-list"
    assert promoted["before"] == {"status": "waiting", "confirmed_at": None, "promoted_at": None}
    assert promoted["after"]["status"] == "confirmed"
    assert promoted["after"]["confirmed_at"] == promoted["after"]["promoted_at"]
    assert promoted["request_id"] == cancelled["request_id"]

    # Capacity up by the organizer: the third is promoted, by the waiting list again.
    r = await api.client.patch(f"/api/events/{event['id']}", json={"capacity": 2}, headers=api.auth)
    assert r.status_code == 200, r.text
    third_entry = only(
        await trail(api, entity_type="registration"), "registration.status_changed", third["id"]
    )
    assert third_entry["actor_label"] == "waiting-list"


async def test_a_registrants_own_cancellation_is_not_recorded_but_the_promotion_is(
    api: Api,
) -> None:
    pid = await make_process(api)
    event = await make_event(api, pid, capacity=1, confirmation_required=False)
    first = await register(api, event["id"], person(1))
    second = await register(api, event["id"], person(2))
    async with database(api) as db, db.reader() as session:
        reg = await session.get(Registration, first["id"])
        assert reg is not None
        nonce = reg.token_nonce
    secret = load_secret(api.settings.secret_key, api.settings.data_dir)
    r = await api.client.post(f"/api/registrations/{sign(first['id'], nonce, secret)}/cancel")
    assert r.status_code == 200, r.text
    entries = await trail(api, entity_type="registration")
    assert [(e["entity_id"], e["actor_label"]) for e in entries] == [(second["id"], "waiting-list")]


async def test_approval_records_the_decision_and_the_accreditation(api: Api) -> None:
    pid = await make_process(api)
    event = await make_event(api, pid, accreditation_required=True)
    reg = await register(api, event["id"], person(1))
    assert reg["status"] == "pending_approval"
    r = await api.client.post(
        f"/api/events/{event['id']}/registrations/{reg['id']}/approve",
        json={},
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    entries = await trail(api)
    decision = only(entries, "registration.status_changed", reg["id"])
    assert decision["before"]["status"] == "pending_approval"
    assert decision["after"]["status"] == "held"
    assert "decided_at" in decision["after"]
    accreditation = [e for e in entries if e["action"] == "accreditation.created"]
    assert len(accreditation) == 1
    assert accreditation[0]["after"]["approved_by"] == decision["actor_id"]
    assert accreditation[0]["process_id"] == pid


async def test_hold_expiry_is_the_jobs(api: Api) -> None:
    pid = await make_process(api)
    event = await make_event(api, pid, capacity=1, confirmation_required=True)
    held = await register(api, event["id"], person(1))
    waiting = await register(api, event["id"], person(2))
    assert (held["status"], waiting["status"]) == ("held", "waiting")
    async with database(api) as db:
        async with db.writer.begin() as session:
            audit.act_as(session, audit.EXPIRE_HOLDS)
            released = await expire_holds(session, utc_now() + timedelta(days=30), timedelta(1))
        assert released == 1
    entries = await trail(api, entity_type="registration")
    expired = only(entries, "registration.status_changed", held["id"])
    assert (expired["actor_label"], expired["after"]["status"]) == ("expire-holds", "expired")
    promoted = only(entries, "registration.status_changed", waiting["id"])
    assert (promoted["actor_label"], promoted["after"]["status"]) == ("waiting-list", "held")
    assert expired["request_id"] is None


async def test_retention_purge_records_each_anonymised_registration(api: Api) -> None:
    pid = await make_process(api)
    event = await make_event(api, pid)
    regs = [await register(api, event["id"], person(n)) for n in range(3)]
    async with database(api) as db:
        done = await retention.apply_retention(db, 1, END + timedelta(days=70))
    assert done == 3
    entries = await trail(api, action="registration.erased")
    assert sorted(e["entity_id"] for e in entries) == sorted(r["id"] for r in regs)
    for e in entries:
        assert (e["actor_kind"], e["actor_label"]) == ("system", "retention-purge")
        assert e["after"]["name"] == "[redacted]" and e["after"]["email"] == "[redacted]"
        assert e["process_id"] == pid
    dump = json.dumps([(e.before, e.after, e.actor_label) for e in await all_rows(api)])
    assert "wanjiru" not in dump.lower() and "kituo" not in dump.lower()


async def test_erasure_never_needs_the_trail_and_the_trail_holds_no_personal_data(
    api: Api,
) -> None:
    pid = await make_process(api)
    questions = [{"key": "needs", "label": "Access needs", "type": "text"}]
    event = await make_event(api, pid, capacity=1, confirmation_required=False, questions=questions)
    secret_answer = "wheelchair access, sign language interpreter"
    first = await register(api, event["id"], person(1, answers={"needs": secret_answer}))
    second = await register(api, event["id"], person(2, answers={"needs": "none"}))
    r = await api.client.post(
        f"/api/events/{event['id']}/registrations/{first['id']}/revoke-links", headers=api.auth
    )
    assert r.status_code == 200, r.text
    revoked = only(await trail(api), "registration.links_revoked", first["id"])
    assert revoked["before"] == {"token_nonce": "[redacted]"}
    rows_before = [(e.id, e.before, e.after) for e in await all_rows(api)]

    r = await api.client.post(
        "/api/privacy/erase", json={"email": person(1)["email"]}, headers=api.auth
    )
    assert r.status_code == 200, r.text
    assert r.json()["registrations_cancelled"] == 1
    # Erasing changed no entry that was there before (the database would have refused).
    rows_after = await all_rows(api)
    assert [(e.id, e.before, e.after) for e in rows_after[: len(rows_before)]] == rows_before
    erased = only(await trail(api), "registration.erased", first["id"])
    assert erased["actor_kind"] == "organizer"
    hidden = {"name", "email", "organisation", "answers", "token_nonce"}
    assert set(erased["after"]) == hidden | {"erased_at"}
    assert {erased["after"][k] for k in hidden} == {"[redacted]"}
    assert erased["before"]["erased_at"] is None and erased["after"]["erased_at"].endswith("Z")
    promoted = only(await trail(api), "registration.status_changed", second["id"])
    assert promoted["actor_label"] == "waiting-list"

    dump = json.dumps(
        [(e.before, e.after, e.actor_label, e.action, e.request_id) for e in rows_after]
    ).lower()
    for personal in (
        "wanjiru",
        "kamau",
        "example.org",
        "kituo",
        "wheelchair",
        "interpreter",
        secret_answer.lower(),
    ):
        assert personal not in dump, personal


async def test_speaker_decisions_are_the_organizers_and_closing_up_is_the_rules(
    api: Api,
) -> None:
    event_id = await speakers.make_event(api, await make_process(api))
    tokens, requests = [], []
    for n in range(1, 4):
        _, token = await speakers.register(api, event_id, n)
        tokens.append(token)
        requests.append(await speakers.ask(api, token, f"Remittance corridors {n}"))
    assert await trail(api, entity_type="speaker_request") == []
    r = await api.client.post(
        f"/api/events/{event_id}/speakers/select",
        json={"count": 3, "slot_minutes": 10},
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    selected = await trail(api, entity_type="speaker_request")
    assert sorted(e["entity_id"] for e in selected) == requests
    assert {(e["action"], e["actor_kind"]) for e in selected} == {
        ("speaker_request.status_changed", "organizer")
    }
    assert all(e["after"]["status"] == "selected" for e in selected)

    # The first withdraws (their own change: not recorded); the others close up.
    r = await api.client.delete(
        f"/api/registrations/{tokens[0]}/speaker-request", headers={"X-Request-ID": "withdraw"}
    )
    assert r.status_code in (200, 204), r.text
    r = await api.client.post(
        f"/api/events/{event_id}/speaker-requests/{requests[1]}/decline",
        json={"reason": "Time"},
        headers={**api.auth, "X-Request-ID": "decline"},
    )
    assert r.status_code == 200, r.text
    later = await trail(api, entity_type="speaker_request")

    def by(request_id: str) -> set[tuple[int, str, str, str]]:
        return {
            (e["entity_id"], e["actor_label"], e["action"], json.dumps([e["before"], e["after"]]))
            for e in later
            if e["request_id"] == request_id
        }

    closing_up = "speaker_request.updated"
    assert by("withdraw") == {
        (requests[1], "speaker-order", closing_up, json.dumps([{"position": 2}, {"position": 1}])),
        (requests[2], "speaker-order", closing_up, json.dumps([{"position": 3}, {"position": 2}])),
    }
    declined = {(e[0], e[1], e[2]) for e in by("decline")}
    assert declined == {
        (requests[1], "Secretariat", "speaker_request.status_changed"),
        (requests[2], "speaker-order", closing_up),
    }
    assert "remittance" not in json.dumps([(e.before, e.after) for e in await all_rows(api)])


# --- Feed runs ----------------------------------------------------------------------------


async def test_a_feed_run_is_one_entry_by_whoever_ran_it(api: Api) -> None:
    pid = await make_process(api)
    with FeedServer([pledge(i) for i in range(7)], page_size=5) as server:
        r = await api.client.post(
            "/api/feeds",
            json={
                "process_id": pid,
                "name": "gcm-pledges",
                "url": server.url("/pledges.json"),
                "format": "json",
                "interval_seconds": 3600,
            },
            headers=api.auth,
        )
        assert r.status_code == 201, r.text
        feed_id = r.json()["id"]
        r = await api.client.post(f"/api/feeds/{feed_id}/sync", headers=api.auth)
        assert r.status_code == 200, r.text
        assert r.json()["outcome"] == "success"
        async with database(api) as db:
            async with db.writer.begin() as session:  # due now, as time would make it
                await session.execute(
                    update(Feed).values(next_run_at=utc_now() - timedelta(minutes=1))
                )
            scheduled = await FeedRunner(db, api.settings).run(feed_id, manual=False)
            assert scheduled is not None and scheduled.outcome in ("success", "not_modified")
    runs = await trail(api, action="feed.run")
    assert [(e["actor_kind"], e["actor_label"]) for e in runs] == [
        ("system", "feed-sync"),
        ("organizer", "Secretariat"),
    ]
    assert runs[1]["after"]["new"] == 7 and runs[1]["after"]["outcome"] == "success"
    assert runs[0]["after"]["outcome"] == scheduled.outcome
    assert runs[0]["after"]["new"] == 0 and runs[0]["after"]["run_id"] == scheduled.id
    assert {(e["entity_type"], e["entity_id"], e["process_id"]) for e in runs} == {
        ("feed", feed_id, pid)
    }
    # The run's own bookkeeping (lease, next run, ETag) is not in the trail.
    assert [e["action"] for e in await trail(api, entity_type="feed")] == [
        "feed.run",
        "feed.run",
        "feed.created",
    ]


# --- Append-only --------------------------------------------------------------------------


async def test_the_database_refuses_to_change_or_delete_entries(api: Api) -> None:
    await make_process(api)
    rows = await all_rows(api)
    assert rows
    async with database(api) as db:
        for statement in (
            "UPDATE audit_log SET actor_label = 'someone else'",
            "UPDATE audit_log SET after = '{}' WHERE id = (SELECT min(id) FROM audit_log)",
            "DELETE FROM audit_log",
            f"DELETE FROM audit_log WHERE id = {rows[0].id}",
            *(["TRUNCATE audit_log"] if not db.is_sqlite else []),
        ):
            with pytest.raises(DBAPIError, match="append-only"):
                async with db.writer_engine.begin() as conn:
                    await conn.execute(text(statement))
        # Adding is what the trail is for.
        async with db.writer_engine.begin() as conn:
            count = await conn.scalar(select(func.count()).select_from(AuditEntry))
    assert [(e.id, e.actor_label, e.after) for e in await all_rows(api)] == [
        (e.id, e.actor_label, e.after) for e in rows
    ]
    assert count == len(rows)


# --- Reading: visibility, filters, pages, exports -----------------------------------------


async def test_only_organizers_of_the_process_see_its_entries(api: Api) -> None:
    pid = await make_process(api)
    await make_event(api, pid)
    r = await api.client.get("/api/audit")
    assert r.status_code == 401
    r = await api.client.get("/api/audit/export.csv")
    assert r.status_code == 401
    other = await api.new_token("Regional office")
    r = await api.client.post(
        "/api/processes",
        json={"slug": "asia-review", "name": "Asia-Pacific review", "time_zone": "Asia/Bangkok"},
        headers={"Authorization": f"Bearer {other}"},
    )
    assert r.status_code == 201, r.text
    theirs = await trail(api, other)
    assert {e["process_id"] for e in theirs} == {r.json()["id"]}
    assert {e["process_id"] for e in await trail(api)} == {pid}
    r = await api.client.get(
        "/api/audit", params={"process_id": pid}, headers={"Authorization": f"Bearer {other}"}
    )
    assert r.status_code == 403, r.text
    # Any member of the process sees its entries, whatever the role.
    viewer = await api.new_token("Observer", ["gcm"])
    assert {e["process_id"] for e in await trail(api, viewer)} == {pid}


async def test_filters_pages_and_bad_filters(api: Api) -> None:
    pid = await make_process(api)
    events = [await make_event(api, pid, title=f"Dialogue {n}") for n in range(5)]
    for e in events[:3]:
        r = await api.client.patch(
            f"/api/events/{e['id']}", json={"venue": "Trusteeship Council"}, headers=api.auth
        )
        assert r.status_code == 200, r.text
    everything = await trail(api)
    ids = [e["id"] for e in everything]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)

    # Pages of two, newest first, meet end to end.
    walked = await trail(api, limit=2)
    assert [e["id"] for e in walked] == ids
    r = await api.client.get("/api/audit", params={"limit": 2}, headers=api.auth)
    assert len(r.json()["items"]) == 2 and r.json()["next_before_id"] == ids[1]

    me = await organizer_id(api)
    assert len(await trail(api, action="event.updated")) == 3
    assert len(await trail(api, action="event.*")) == 8
    assert len(await trail(api, actor=f"organizer:{me}")) == len(everything)
    assert await trail(api, actor="system") == []
    assert await trail(api, actor="system:feed-sync") == []
    assert len(await trail(api, actor="organizer")) == len(everything)
    one = await trail(api, entity_type="event", entity_id=events[0]["id"])
    assert [e["action"] for e in one] == ["event.updated", "event.created"]
    assert len(await trail(api, process_id=pid)) == len(everything)
    first_at = datetime.fromisoformat(everything[-1]["at"])
    last_at = datetime.fromisoformat(everything[0]["at"])
    window = await trail(
        api, **{"from": first_at.isoformat(), "to": (last_at + timedelta(seconds=1)).isoformat()}
    )
    assert len(window) == len(everything)
    assert await trail(api, **{"from": (last_at + timedelta(seconds=1)).isoformat()}) == []

    for params, field in (
        ({"actor": "someone"}, "actor"),
        ({"actor": "organizer:abc"}, "actor"),
        ({"actor": "system:<script>"}, "actor"),
        ({"action": "DROP TABLE"}, "action"),
        ({"action": "event.%"}, "action"),
        ({"entity_type": "pledge"}, "entity_type"),
        ({"entity_id": "x"}, "entity_id"),
        ({"entity_id": "0"}, "entity_id"),
        ({"from": "2030-01-01T00:00:00"}, "from"),
        ({"from": "yesterday"}, "from"),
        ({"from": "2030-01-02T00:00:00Z", "to": "2030-01-01T00:00:00Z"}, "to"),
        ({"limit": "0"}, "limit"),
        ({"before_id": "-1"}, "before_id"),
        ({"process_id": "99999999999"}, "process_id"),
    ):
        for path in ("/api/audit", "/api/audit/export.csv", "/api/audit/export.ndjson"):
            if path != "/api/audit" and field in ("limit", "before_id"):
                continue
            r = await api.client.get(path, params=params, headers=api.auth)
            assert r.status_code == 400, (path, params, r.text)
            assert r.headers["content-type"].startswith("application/json")
            assert [x["key"] for x in r.json()["extra"]] == [field], (params, r.text)


async def test_exports_stream_the_same_selection(api: Api) -> None:
    pid = await make_process(api)
    for n in range(3):
        await make_event(api, pid, title=f'=HYPERLINK("http://evil.example","{n}")')
    listed = await trail(api, entity_type="event")
    r = await api.client.get(
        "/api/audit/export.ndjson", params={"entity_type": "event"}, headers=api.auth
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert lines == listed

    r = await api.client.get(
        "/api/audit/export.csv", params={"entity_type": "event"}, headers=api.auth
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [int(row["id"]) for row in rows] == [e["id"] for e in listed]
    assert [row["action"] for row in rows] == ["event.created"] * 3
    assert all(json.loads(row["after"])["title"].startswith("=HYPERLINK") for row in rows)
    assert all(row["before"] == "{}" for row in rows)
    assert rows[0]["actor_label"] == "Secretariat" and rows[0]["process_id"] == str(pid)

    # A whole trail of a few thousand entries comes out complete, in order.
    async with database(api) as db, db.writer.begin() as session:
        audit.act_as(session, audit.CLI)
        for n in range(2500):
            audit.record(
                session,
                action="event.updated",
                entity_type="event",
                entity_id=listed[0]["entity_id"],
                process_id=pid,
                after={"n": n},
            )
    r = await api.client.get("/api/audit/export.ndjson", headers=api.auth)
    exported = [json.loads(line) for line in r.text.splitlines()]
    ids = [e["id"] for e in exported]
    assert len(exported) == len(await trail(api)) and ids == sorted(ids, reverse=True)
    assert exported[0]["after"] == {"n": 2499} and exported[0]["actor_label"] == "cli"


async def test_csv_cells_cannot_run_as_formulas(api: Api) -> None:
    token = await api.new_token("=cmd|' /C calc'!A0")
    r = await api.client.post(
        "/api/processes",
        json={"slug": "formula", "name": "Formula", "time_zone": NY},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 201, r.text
    r = await api.client.get("/api/audit/export.csv", headers={"Authorization": f"Bearer {token}"})
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert rows and {row["actor_label"] for row in rows} == {"'=cmd|' /C calc'!A0"}


def test_the_documented_entity_types_are_the_audited_ones() -> None:
    assert get_args(EntityType) == audit.ENTITY_TYPES


# --- The CLI and the logs -----------------------------------------------------------------


def test_cli_changes_are_the_clis_and_it_exports_the_trail(tmp_path: Path) -> None:
    assert run(tmp_path, "migrate").returncode == 0
    assert run(tmp_path, "demo").returncode == 0
    created = run(tmp_path, "organizer", "create", "--name", "Secretariat", "--process", "gcm")
    assert created.returncode == 0, created.stderr

    out = run(tmp_path, "audit", "export", "--format", "ndjson")
    assert out.returncode == 0, out.stderr
    entries = [json.loads(line) for line in out.stdout.splitlines()]
    assert entries and {(e["actor_kind"], e["actor_label"]) for e in entries} == {("system", "cli")}
    actions = {e["action"] for e in entries}
    assert {"process.created", "event.created", "milestone.created"} <= actions
    assert {"organizer.created", "membership.created"} <= actions
    organizer = next(e for e in entries if e["action"] == "organizer.created")
    assert organizer["after"]["email"] == "[redacted]"
    assert {"organizer.created", "membership.created", "api_token.created"} <= actions
    token = next(e for e in entries if e["action"] == "api_token.created")
    assert token["after"]["token_hash"] == "[redacted]"
    assert organizer["process_id"] is None

    only_gcm = run(tmp_path, "audit", "export", "--process", "gcm")
    assert only_gcm.returncode == 0, only_gcm.stderr
    rows = list(csv.DictReader(io.StringIO(only_gcm.stdout)))
    assert len(rows) == len(entries) - 2  # all but the organizer's own and its token's
    assert {row["process_id"] for row in rows} == {str(entries[-1]["process_id"])}

    unknown = run(tmp_path, "audit", "export", "--process", "nowhere")
    assert unknown.returncode == 2 and "nowhere" in unknown.stderr


def test_json_log_lines_carry_the_request_id() -> None:
    record = logging.LogRecord("scheduler.test", logging.INFO, __file__, 1, "hello", None, None)
    formatter = JsonFormatter()
    assert "request_id" not in json.loads(formatter.format(record))
    with audit.acting(audit.PUBLIC, "req-42"):
        assert json.loads(formatter.format(record))["request_id"] == "req-42"


async def test_a_writer_who_names_nobody_is_recorded_as_unattributed(api: Api) -> None:
    pid = await make_process(api)
    async with database(api) as db, db.writer.begin() as session:
        process = await session.get(Process, pid)
        assert process is not None
        process.description = "Changed by a script"
    changed = only(await trail(api), "process.updated", pid)
    assert (changed["actor_kind"], changed["actor_label"]) == ("system", "unattributed")
    assert (changed["before"], changed["after"]) == (
        {"description": ""},
        {"description": "Changed by a script"},
    )
