"""Data-subject requests and retention, on SQLite and PostgreSQL: the export of everything
held about one address, the erasure, the retention job and its cluster-wide lock, each
limited to the processes the organizer belongs to."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text, update

from scheduler import job_locks, manage_links, retention
from scheduler.database import open_database
from scheduler.models import Event, Notification, Registration, Subscription
from scheduler.privacy import ERASED_ADDRESS, ERASED_NAME, retention_cutoff
from scheduler.settings import Settings
from tests.conftest import Api, base_settings
from tests.test_api_registrations import database, make_event, make_process, person

SECRET = "privacy-tests-secret"
SUB_PURPOSE = "sub:"


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return base_settings(database_url, tmp_path).replace(secret_key=SECRET)


async def reg_token(api: Api, registration_id: int) -> str:
    async with database(api) as session:
        reg = await session.get(Registration, registration_id)
        assert reg is not None
        return manage_links.sign(reg.id, reg.token_nonce, SECRET.encode())


async def subscribe(api: Api, process_id: int, email: str, *, confirm: bool = False) -> None:
    r = await api.client.post(
        f"/api/processes/{process_id}/subscriptions", json={"email": email, "name": "Amina"}
    )
    assert r.status_code == 202, r.text
    if confirm:
        async with database(api) as session:
            sub = await session.scalar(
                select(Subscription).where(
                    Subscription.process_id == process_id, Subscription.email == email
                )
            )
            assert sub is not None
            token = manage_links.sign(sub.id, sub.token_nonce, SECRET.encode(), SUB_PURPOSE)
        r = await api.client.post(f"/api/subscriptions/{token}/confirm")
        assert r.status_code == 200, r.text


async def register(api: Api, event_id: int, body: dict[str, Any]) -> dict[str, Any]:
    r = await api.client.post(f"/api/events/{event_id}/registrations", json=body)
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


async def end_event_ago(api: Api, event_id: int, ago: timedelta) -> None:
    """Put an event (and so its registrations) that long in the past."""
    end = datetime.now(UTC) - ago
    async with database(api, write=True) as session:
        await session.execute(
            update(Event)
            .where(Event.id == event_id)
            .values(starts_at=end - timedelta(hours=6), ends_at=end, series_ends_at=end)
        )


async def export(api: Api, email: str, auth: dict[str, str] | None = None) -> dict[str, Any]:
    r = await api.client.get(
        "/api/privacy/export", params={"email": email}, headers=auth or api.auth
    )
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def scenario(api: Api) -> dict[str, Any]:
    """Amina in two processes: a hearing of ours (seat, floor request), a full dialogue of
    ours (her seat there is wanted by Bola, waiting), an ended consultation of ours, a
    deadline subscription with each process; and the same in another secretariat's process."""
    ours = await make_process(api, "gcm")
    hearing = (await make_event(api, ours, confirmation_required=False))["id"]
    dialogue = (
        await make_event(api, ours, title="Dialogue", capacity=1, confirmation_required=False)
    )["id"]
    past = (await make_event(api, ours, title="Consultation", confirmation_required=False))["id"]
    amina = person("Amina Diallo", organisation="Migrant Voices", answers={})
    a_hearing = await register(api, hearing, amina)
    a_dialogue = await register(api, dialogue, amina)
    bola = await register(api, dialogue, person("Bola Ade"))
    assert bola["status"] == "waiting"
    a_past = await register(api, past, amina)
    token = await reg_token(api, a_hearing["id"])
    r = await api.client.post(
        f"/api/registrations/{token}/speaker-request",
        json={"topic": "Regular pathways for care workers", "language": "en", "summary": "Mine"},
    )
    assert r.status_code == 201, r.text
    await end_event_ago(api, past, timedelta(days=30))
    await subscribe(api, ours, "amina@example.org", confirm=True)

    other_token = await api.new_token("Other secretariat")
    other_auth = {"Authorization": f"Bearer {other_token}"}
    r = await api.client.post(
        "/api/processes",
        json={"slug": "other", "name": "Other review", "time_zone": "Europe/Zurich"},
        headers=other_auth,
    )
    theirs = r.json()["id"]
    r = await api.client.post(
        "/api/events",
        json={
            "process_id": theirs,
            "kind": "consultation",
            "title": "Their consultation",
            "time_zone": "Europe/Zurich",
            "start": (datetime.now(UTC) + timedelta(days=40)).isoformat(),
            "end": (datetime.now(UTC) + timedelta(days=40, hours=3)).isoformat(),
            "status": "published",
        },
        headers=other_auth,
    )
    assert r.status_code == 201, r.text
    a_theirs = await register(api, r.json()["id"], amina)
    await subscribe(api, theirs, "amina@example.org")
    return {
        "ours": ours,
        "theirs": theirs,
        "other_auth": other_auth,
        "hearing": hearing,
        "dialogue": dialogue,
        "past": past,
        "ids": (a_hearing["id"], a_dialogue["id"], a_past["id"]),
        "their_id": a_theirs["id"],
        "bola": bola["id"],
        "token": token,
    }


async def test_export_holds_everything_about_the_address_within_the_organizers_processes(
    api: Api,
) -> None:
    s = await scenario(api)
    mine = await export(api, "AMINA@example.org ".strip())
    assert mine["email"] == "amina@example.org"
    assert mine["process_ids"] == [s["ours"]]
    assert [r["id"] for r in mine["registrations"]] == list(s["ids"])
    first = mine["registrations"][0]
    assert (first["name"], first["organisation"], first["event_title"]) == (
        "Amina Diallo",
        "Migrant Voices",
        "Informal multi-stakeholder hearing",
    )
    assert [q["topic"] for q in mine["speaker_requests"]] == ["Regular pathways for care workers"]
    assert [(x["process_id"], x["status"]) for x in mine["subscriptions"]] == [
        (s["ours"], "active")
    ]
    notes = mine["notifications"]
    assert notes and all(n["recipient_email"] == "amina@example.org" for n in notes)
    kinds = {n["kind"] for n in notes}
    assert {"registration_confirmed", "subscription_confirm"} <= kinds
    assert any(n["context"].get("event_title") for n in notes)  # what each message said
    assert all(n["registration_id"] != s["their_id"] for n in notes)

    theirs = await export(api, "amina@example.org", s["other_auth"])
    assert [r["id"] for r in theirs["registrations"]] == [s["their_id"]]
    assert [x["process_id"] for x in theirs["subscriptions"]] == [s["theirs"]]
    assert theirs["speaker_requests"] == []

    nobody = await export(api, "nobody@example.org")
    assert nobody["registrations"] == nobody["notifications"] == nobody["subscriptions"] == []
    r = await api.client.get("/api/privacy/export", params={"email": "amina@example.org"})
    assert r.status_code == 401
    r = await api.client.get(
        "/api/privacy/export", params={"email": "not an address"}, headers=api.auth
    )
    assert r.status_code == 400 and r.json()["extra"][0]["key"] == "email"


async def test_erasure_keeps_the_counts_and_drops_the_person(api: Api) -> None:
    s = await scenario(api)
    hearing, past = s["hearing"], s["past"]
    stats_before = {
        e: (await api.client.get(f"/api/events/{e}/registrations/stats", headers=api.auth)).json()
        for e in (hearing, past)
    }
    # A reminder not sent yet must never go out.
    async with database(api) as session:
        planned = await session.scalar(
            select(func.count()).where(
                Notification.registration_id == s["ids"][0], Notification.status == "planned"
            )
        )
    assert planned

    r = await api.client.post(
        "/api/privacy/erase", json={"email": "Amina@Example.org"}, headers=api.auth
    )
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["process_ids"] == [s["ours"]]
    assert done["registrations_anonymised"] == 3
    # The seats at the hearing and the dialogue (still to come) are released; Bola gets hers.
    assert (done["registrations_cancelled"], done["seats_passed_on"]) == (2, 1)
    assert done["speaker_requests_anonymised"] == 1
    assert done["subscriptions_removed"] == 1
    assert done["messages_cancelled"] >= 1

    async with database(api) as session:
        regs = {
            r.id: r
            for r in await session.scalars(
                select(Registration).where(Registration.id.in_(s["ids"]))
            )
        }
        for reg in regs.values():
            assert (reg.name, reg.organisation, reg.answers) == (ERASED_NAME, "", {})
            assert reg.email == f"erased-{reg.id}@erased.invalid"
            assert reg.erased_at is not None
            assert (reg.constituency, reg.country) == ("civil_society", "KEN")  # counted
        assert regs[s["ids"][2]].status == "confirmed"  # the ended event keeps its count
        assert {regs[i].status for i in s["ids"][:2]} == {"cancelled"}
        bola = await session.get(Registration, s["bola"])
        assert bola is not None and bola.status == "confirmed"
        theirs = await session.get(Registration, s["their_id"])
        assert theirs is not None and theirs.email == "amina@example.org"  # not our process
        left = list(
            await session.scalars(
                select(Notification).where(
                    func.lower(Notification.recipient_email) == "amina@example.org"
                )
            )
        )
        assert {n.registration_id for n in left} <= {s["their_id"], None}
        erased = list(
            await session.scalars(
                select(Notification).where(Notification.recipient_email == ERASED_ADDRESS)
            )
        )
        assert erased and all(n.context == {} and n.recipient_name == "" for n in erased)
        assert not [n for n in erased if n.status == "planned"]
        assert any(n.status == "cancelled" for n in erased)
        subs = list(await session.scalars(select(Subscription)))
        assert [x.process_id for x in subs] == [s["theirs"]]

    stats_after = (
        await api.client.get(f"/api/events/{past}/registrations/stats", headers=api.auth)
    ).json()
    assert stats_after == stats_before[past]
    hearing_after = (
        await api.client.get(f"/api/events/{hearing}/registrations/stats", headers=api.auth)
    ).json()
    assert hearing_after["total"] == stats_before[hearing]["total"]
    assert hearing_after["by_country"] == stats_before[hearing]["by_country"]
    # The old manage link is dead, and a second erasure finds nothing left.
    assert (await api.client.get(f"/api/registrations/{s['token']}")).status_code == 404
    assert (await export(api, "amina@example.org"))["registrations"] == []
    again = await api.client.post(
        "/api/privacy/erase", json={"email": "amina@example.org"}, headers=api.auth
    )
    assert again.json()["registrations_anonymised"] == 0
    assert (
        await api.client.post("/api/privacy/erase", json={"email": "amina@example.org"})
    ).status_code == 401


async def test_retention_anonymises_events_over_for_long_enough(api: Api) -> None:
    pid = await make_process(api)
    old = (await make_event(api, pid, title="Old", confirmation_required=False))["id"]
    recent = (await make_event(api, pid, title="Recent", confirmation_required=False))["id"]
    for event_id in (old, recent):
        for name in ("Amina Diallo", "Bola Ade"):
            await register(api, event_id, person(name))
    await end_event_ago(api, old, timedelta(days=400))
    await end_event_ago(api, recent, timedelta(days=300))
    db = open_database(api.settings)
    try:
        now = datetime.now(UTC)
        assert await retention.apply_retention(db, 0, now) == 0  # 0 keeps everything
        assert await retention.apply_retention(db, 12, now) == 2
        assert await retention.apply_retention(db, 12, now) == 0  # idempotent
        async with db.reader() as session:
            rows = list(await session.execute(select(Registration.event_id, Registration.name)))
            names = {(e, n) for e, n in rows}
            assert names == {
                (old, ERASED_NAME),
                (recent, "Amina Diallo"),
                (recent, "Bola Ade"),
            }
            to_old = await session.scalar(
                select(func.count()).where(
                    Notification.event_id == old, Notification.recipient_email != ERASED_ADDRESS
                )
            )
            assert to_old == 0
        stats = await api.client.get(f"/api/events/{old}/registrations/stats", headers=api.auth)
        assert stats.json()["by_status"] == {"confirmed": 2}
    finally:
        await db.dispose()


async def test_retention_runs_on_one_node_at_a_time(api: Api, database_url: str) -> None:
    """PostgreSQL: a node holding the job's advisory lock makes the others skip their turn.
    SQLite (one node, one writer) takes no lock: the job always runs."""
    pid = await make_process(api)
    old = (await make_event(api, pid, confirmation_required=False))["id"]
    await register(api, old, person("Amina Diallo"))
    await end_event_ago(api, old, timedelta(days=400))
    db = open_database(api.settings)
    try:
        if database_url.startswith("postgresql"):
            async with db.writer.begin() as other_node:
                held = await other_node.scalar(
                    text("SELECT pg_try_advisory_xact_lock(:key)"),
                    {"key": job_locks.lock_key(retention.JOB_ID)},
                )
                assert held
                # Another connection (this node) finds the job taken and skips its turn.
                this_node = open_database(api.settings)
                try:
                    assert await retention.apply_retention(this_node, 12, datetime.now(UTC)) == 0
                finally:
                    await this_node.dispose()
        else:
            async with db.writer.begin() as session:
                assert await job_locks.run_alone(session, retention.JOB_ID)
        # Once the lock is released (the other transaction ended), the job runs.
        assert await retention.apply_retention(db, 12, datetime.now(UTC)) == 1
    finally:
        await db.dispose()


def test_retention_cutoff_counts_calendar_months() -> None:
    now = datetime(2026, 3, 31, 12, tzinfo=UTC)
    assert retention_cutoff(now, 0) is None
    assert retention_cutoff(now, 1) == datetime(2026, 2, 28, 12, tzinfo=UTC)
    assert retention_cutoff(now, 24) == datetime(2024, 3, 31, 12, tzinfo=UTC)
