"""The migrations build exactly the tables the models describe, on both back ends."""

from __future__ import annotations

import json

import sqlalchemy as sa
from litestar.testing import AsyncTestClient
from sqlalchemy import select

from scheduler import tokens
from scheduler.app import create_app
from scheduler.database import open_database
from scheduler.feeds import FeedCreate, create_feed
from scheduler.models import Notification, Pledge, Process, UTCDateTime, utc_now
from scheduler.organizers import create_organizer
from scheduler.pledges import objectives_in
from scheduler.processes import ProcessCreate, create_process
from scheduler.schema import downgrade, migrate, pending_model_changes
from scheduler.settings import Settings
from scheduler.tokens import hash_token


async def test_migrations_match_models(settings: Settings) -> None:
    db = open_database(settings)
    try:
        assert await pending_model_changes(db.writer_engine) == []
    finally:
        await db.dispose()


async def test_tokens_from_before_roles_survive_both_ways(settings: Settings) -> None:
    """0007 moves each organizer's one token into api_tokens (and back when downgraded):
    no token stops working, no viewer comes out of a downgrade able to write, and a
    process without an owner gets its longest-standing member as owner."""
    db = open_database(settings)
    old_secret = "fs_" + "o" * 43
    organizers = sa.table(
        "organizers",
        sa.column("name", sa.String()),
        sa.column("token_hash", sa.String()),
        sa.column("email", sa.String()),
        sa.column("language", sa.String()),
        sa.column("time_zone", sa.String()),
        sa.column("created_at", UTCDateTime()),
    )
    try:
        async with db.writer.begin() as session:
            process = await create_process(
                session, ProcessCreate(slug="gcm", name="GCM", time_zone="UTC"), owner_id=None
            )
            kept, first = await create_organizer(session, "Kept", ["gcm"])
            tokens.issue(session, kept.id, utc_now(), label="later", process_id=process.id)
            await create_organizer(session, "Reader", ["gcm"], role="viewer")
            # A row that only points at the organizer (SQLite rebuilds their table twice).
            note = Notification(kind="organizer_reminder", recipient_email="k@example.org")
            note.organizer_id = kept.id
            session.add(note)
        await downgrade(db.writer_engine, "0006")
        async with db.writer_engine.begin() as conn:
            hashes = dict(
                (await conn.execute(sa.text("SELECT name, token_hash FROM organizers"))).all()
            )
            assert hashes["Kept"] == hash_token(first)
            assert len(hashes["Reader"]) == 64 and hashes["Reader"] != hashes["Kept"]
            roles = (
                await conn.execute(sa.text("SELECT organizer_id, role FROM process_organizers"))
            ).all()
            assert roles == [(kept.id, "organizer")]
            await conn.execute(
                organizers.insert().values(
                    name="Old",
                    token_hash=hash_token(old_secret),
                    email="",
                    language="en",
                    time_zone="UTC",
                    created_at=utc_now(),
                )
            )
        await migrate(db.writer_engine)
        assert await pending_model_changes(db.writer_engine) == []
        async with db.reader() as session:
            assert await session.scalar(select(Notification.organizer_id)) == kept.id
    finally:
        await db.dispose()

    async with AsyncTestClient(app=create_app(settings)) as client:
        for secret in (first, old_secret):
            r = await client.get("/api/tokens", headers={"Authorization": f"Bearer {secret}"})
            assert r.status_code == 200, r.text
            (token,) = r.json()
            assert token["process_id"] is None and token["read_only"] is False
            assert token["label"] == "issued before roles (0007)" and token["current"] is True
        r = await client.get(
            f"/api/processes/{process.id}/members", headers={"Authorization": f"Bearer {first}"}
        )
        assert r.status_code == 200, r.text
        assert [(m["organizer_id"], m["role"]) for m in r.json()] == [(kept.id, "owner")]


async def test_objectives_become_bits_and_back(settings: Settings) -> None:
    """0010 turns each pledge's objective rows into its bit mask (and back when
    downgraded): no count by objective changes either way."""
    db = open_database(settings)
    chosen = {"a": [1, 23], "b": [], "c": [5, 7, 12]}
    try:
        async with db.writer.begin() as session:
            process = Process(slug="gcm", name="GCM", time_zone="UTC", languages=["en"])
            session.add(process)
            await session.flush()
            data = FeedCreate(
                process_id=process.id,
                name="f",
                url="http://127.0.0.1/p.json",
                format="json",
                interval_seconds=3600,
            )
            feed = await create_feed(session, data, frozenset({"127.0.0.1"}), 60, utc_now())
            feed_id, process_id = feed.id, process.id
        await downgrade(db.writer_engine, "0009")
        async with db.writer_engine.begin() as conn:
            for source_id, objectives in chosen.items():
                await conn.execute(
                    sa.text(
                        "INSERT INTO pledges (feed_id, process_id, source_id, title, "
                        "pledger_name, pledger_type, region, pledge_type, form, objectives, "
                        "status, source_url, content_hash, first_seen_at, last_seen_at) "
                        "VALUES (:f, :p, :s, 't', 'n', 'other', '', 'single', 'policy', :o, "
                        "'', '', 'h', :now, :now)"
                    ),
                    {
                        "f": feed_id,
                        "p": process_id,
                        "s": source_id,
                        "o": json.dumps(objectives),
                        "now": utc_now().replace(tzinfo=None),
                    },
                )
                await conn.execute(
                    sa.text(
                        "INSERT INTO pledge_objectives (pledge_id, objective) "
                        "SELECT id, :o FROM pledges WHERE source_id = :s"
                    ),
                    [{"o": o, "s": source_id} for o in objectives] or [{"o": 0, "s": "-"}],
                )
        await migrate(db.writer_engine)
        async with db.reader() as session:
            found = await session.execute(select(Pledge.source_id, Pledge.objective_mask))
            masks = dict(found.all())
        assert {s: objectives_in(m) for s, m in masks.items()} == chosen
        await downgrade(db.writer_engine, "0009")
        async with db.writer_engine.begin() as conn:
            rows = await conn.execute(
                sa.text(
                    "SELECT p.source_id, o.objective FROM pledge_objectives AS o "
                    "JOIN pledges AS p ON p.id = o.pledge_id ORDER BY 1, 2"
                )
            )
            back: dict[str, list[int]] = {s: [] for s in chosen}
            for source_id, objective in rows:
                back[source_id].append(objective)
        assert back == chosen
        await migrate(db.writer_engine)
        assert await pending_model_changes(db.writer_engine) == []
    finally:
        await db.dispose()
