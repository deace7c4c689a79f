"""Feed syncs against a real, misbehaving feed server on 127.0.0.1, on SQLite and PostgreSQL.

Each case ends with a clear outcome recorded on the run, and a database that is either
updated (the whole run) or untouched (not even part of a page): before a failing run the
server's records are changed, so a half-applied run would show.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import func, select, text, update

from scheduler import feeds
from scheduler.app import create_app
from scheduler.database import Database, open_database
from scheduler.feeds import Busy, FeedCreate
from scheduler.gc_pause import collector_paused
from scheduler.models import (
    Feed,
    FeedRun,
    Notification,
    Organizer,
    Pledge,
    Process,
    ProcessOrganizer,
    QuarantinedRecord,
    utc_now,
)
from scheduler.pledge_feed import FeedRunner
from scheduler.pledges import field_paths, objectives_in, validate_record
from scheduler.settings import Settings
from tests.conftest import base_settings
from tests.feed_server import FeedServer, pledge

RECORDS = [pledge(i) for i in range(12)]


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return base_settings(database_url, tmp_path).replace(
        feeds_allowed_hosts="127.0.0.1",
        feeds_retry_base_ms=10,
        feeds_max_retries=2,
        feeds_connect_timeout_seconds=2,
        feeds_read_timeout_seconds=1,
        feeds_min_interval_seconds=60,
        feeds_max_bytes=200_000,
        feeds_max_retry_after_seconds=5,
        mail_enabled=False,
    )


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = open_database(settings)
    yield database
    await database.dispose()


@pytest.fixture(autouse=True)
def collector_left_running() -> Iterator[None]:
    """Runs pause the cyclic garbage collector while they read a page or a batch
    (gc_pause.collector_paused): whatever the runs of a test meet, failures too, it
    runs again afterwards."""
    assert gc.isenabled()
    yield
    assert gc.isenabled(), "a run left the garbage collector paused"


def test_the_collector_pause_ends_as_it_began() -> None:
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(ZeroDivisionError), collector_paused():
        1 / 0  # noqa: B018
    assert gc.isenabled()
    gc.disable()  # paused by someone else: a pause inside leaves it so
    try:
        with collector_paused(), collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.fixture
def server() -> Iterator[FeedServer]:
    with FeedServer(RECORDS, page_size=5) as s:
        yield s


async def make_feed(db: Database, url: str, fmt: str = "json", **extra: Any) -> int:
    async with db.writer.begin() as session:
        process = await session.scalar(select(Process).where(Process.slug == "gcm"))
        if process is None:
            process = Process(slug="gcm", name="GCM review", time_zone="UTC", languages=["en"])
            session.add(process)
            await session.flush()
        count = await session.scalar(select(func.count()).select_from(Feed))
        data = FeedCreate(
            process_id=process.id,
            name=extra.pop("name", f"feed-{count}"),
            url=url,
            format=fmt,  # type: ignore[arg-type]
            interval_seconds=3600,
            **extra,
        )
        feed = await feeds.create_feed(session, data, frozenset({"127.0.0.1"}), 60, utc_now())
        return feed.id


async def sync(db: Database, settings: Settings, feed_id: int, **kw: Any) -> FeedRun:
    run = await FeedRunner(db, settings, **kw).run(feed_id)
    assert run is not None
    return run


async def snapshot(db: Database) -> dict[str, Any]:
    """Everything a run may write, to compare before and after."""
    async with db.reader() as session:
        pledges = (await session.execute(select(Pledge.__table__).order_by(Pledge.id))).all()
        quarantined = await session.scalar(select(func.count()).select_from(QuarantinedRecord))
        validators = await session.execute(
            select(Feed.id, Feed.etag, Feed.last_modified).order_by(Feed.id)
        )
    return {
        "pledges": [tuple(r) for r in pledges],
        "quarantined": quarantined,
        "validators": [tuple(r) for r in validators],
    }


async def pledges_by_id(db: Database) -> dict[str, Pledge]:
    async with db.reader() as session:
        return {p.source_id: p for p in await session.scalars(select(Pledge))}


def counts(run: FeedRun) -> tuple[int, int, int, int, int]:
    return (run.new, run.updated, run.unchanged, run.withdrawn, run.quarantined)


async def failing_run_leaves_no_trace(
    db: Database,
    settings: Settings,
    server: FeedServer,
    feed_id: int,
    kind: str,
    *,
    run_settings: Settings | None = None,
    **fault: Any,
) -> FeedRun:
    """After a good run, change the source and add the fault: the failing run changes nothing."""
    assert (await sync(db, settings, feed_id)).outcome in ("success", "not_modified")
    before = await snapshot(db)
    edition = server.state.version  # new content each time (the ETag follows the content)
    server.set_records([pledge(i, title=f"Changed {i} ({edition})") for i in range(3, 15)])
    server.fault(kind, **fault)
    server.forget()
    run = await sync(db, run_settings or settings, feed_id)
    assert run.outcome == "failed", run.error
    assert run.finished_at is not None and run.duration_ms is not None
    assert await snapshot(db) == before
    return run


# --- Reading and keeping in step -------------------------------------------------------------


async def test_a_paged_feed_is_read_whole_then_kept_in_step(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    feed_id = await make_feed(db, server.url("/pledges.json"))
    first = await sync(db, settings, feed_id)
    assert (first.outcome, first.http_status, counts(first)) == ("success", 200, (12, 0, 0, 0, 0))
    assert [s.query.get("page", "1") for s in server.seen] == ["1", "2", "3"]
    stored = await pledges_by_id(db)
    assert stored["P-000009"].matches_source_id == "P-000008"
    assert await objective_masks(db) == {sid: p.objectives for sid, p in stored.items()}

    # Unchanged when every page says so: the first page, then each later one, answer 304.
    server.forget()
    again = await sync(db, settings, feed_id)
    assert (again.outcome, again.http_status, counts(again)) == ("not_modified", 304, (0,) * 5)
    asked = [s.query.get("page", "1") for s in server.seen]
    assert asked[0] == "1" and sorted(asked[1:]) == ["2", "3"]  # the later ones at once
    assert all("if-none-match" in s.headers for s in server.seen)

    changed = [r for r in RECORDS if r["id"] != "P-000002"]
    changed[2] = pledge(3, title="Renamed", objectives=[23])
    server.set_records([*changed, pledge(50)])
    third = await sync(db, settings, feed_id)
    assert counts(third) == (1, 1, 10, 1, 0)
    stored = await pledges_by_id(db)
    assert stored["P-000002"].withdrawn_at == third.started_at  # kept, marked, not deleted
    assert stored["P-000003"].title == "Renamed" and stored["P-000003"].objectives == [23]
    assert (await objective_masks(db))["P-000003"] == [23]

    server.set_records([*changed, pledge(50), pledge(2)])
    back = await sync(db, settings, feed_id)
    assert counts(back) == (0, 1, 12, 0, 0)
    assert (await pledges_by_id(db))["P-000002"].withdrawn_at is None


async def test_a_paged_feed_changed_further_on_is_read_again_in_full(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    """Pages 1 and 2 unchanged, page 3 changed: the asking stops at page 3 and the feed is
    read again from page 1 (the records of the unchanged pages are needed too: what is
    gone is what no page has). Later pages are asked a few at once, in any order."""
    feed_id = await make_feed(db, server.url("/pledges.json"))
    assert (await sync(db, settings, feed_id)).new == 12  # pages of 5: 5, 5 and 2
    server.set_records([*RECORDS[:11], pledge(11, title="Edited on the last page")])
    server.forget()
    run = await sync(db, settings, feed_id)
    assert (run.outcome, counts(run)) == ("success", (0, 1, 11, 0, 0))
    asked = [(s.query.get("page", "1"), "if-none-match" in s.headers) for s in server.seen]
    conditional, plain = [(p, True) for p in "123"], [(p, False) for p in "123"]
    assert asked[:1] + sorted(asked[1:3]) + asked[3:] == conditional + plain

    # Records added: the last page changes (its next link), a fourth appears.
    server.set_records([*RECORDS[:11], pledge(11, title="Edited"), *map(pledge, range(12, 17))])
    run = await sync(db, settings, feed_id)
    assert (run.outcome, counts(run)) == ("success", (5, 1, 11, 0, 0))
    server.forget()
    assert (await sync(db, settings, feed_id)).outcome == "not_modified"
    assert sorted(s.query.get("page", "1") for s in server.seen) == ["1", "2", "3", "4"]

    # Another URL: what the server said of the old one no longer counts.
    async with db.writer.begin() as session:
        feed = await session.get(Feed, feed_id)
        assert feed is not None
        patch = feeds.FeedPatch(url=server.url("/pledges.json?page=1"))
        await feeds.update_feed(session, feed, patch, frozenset({"127.0.0.1"}), 60, utc_now())
        assert (feed.etag, feed.last_modified, feed.next_pages) == ("", "", [])
    server.forget()
    moved = await sync(db, settings, feed_id)
    assert (moved.outcome, counts(moved)) == ("success", (0, 0, 17, 0, 0))
    assert not any("if-none-match" in s.headers for s in server.seen)


async def test_remembered_pages_are_asked_a_few_at_once(db: Database, settings: Settings) -> None:
    """Fourteen pages, each answered slowly: the 304s of the thirteen after the first are
    asked six at a time, never more."""
    with FeedServer(RECORDS + [pledge(i) for i in range(12, 14)], page_size=1) as server:
        feed_id = await make_feed(db, server.url("/pledges.json"))
        assert (await sync(db, settings, feed_id)).new == 14
        server.fault("slow", seconds=0.4, times=-1)
        server.forget()
        assert (await sync(db, settings, feed_id)).outcome == "not_modified"
        assert len(server.state.seen) == 14 and server.state.most_in_flight == 6


async def test_a_remembered_page_that_cannot_be_asked_means_a_full_read(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    """A later page the server no longer has (its link expired: 410) does not fail the
    run, nor every run after it: the feed is read again from page 1."""
    feed_id = await make_feed(db, server.url("/pledges.json"))
    assert (await sync(db, settings, feed_id)).new == 12
    server.fault("status", page=2, status=410, times=1)
    server.forget()
    run = await sync(db, settings, feed_id)
    assert (run.outcome, counts(run)) == ("success", (0, 0, 12, 0, 0)), run.error
    asked = [(s.query.get("page", "1"), "if-none-match" in s.headers) for s in server.seen]
    assert asked[0] == ("1", True) and ("2", True) in asked  # 3, asked beside 2, may be let go
    assert [a for a in asked if not a[1]] == [("1", False), ("2", False), ("3", False)]
    server.forget()
    assert (await sync(db, settings, feed_id)).outcome == "not_modified"
    assert sorted(s.query.get("page", "1") for s in server.seen) == ["1", "2", "3"]

    # Trouble that passes is no reason to read it all: it fails the run, retried once only.
    before = await snapshot(db)
    server.fault("status", page=2, status=503, times=-1)
    server.forget()
    run = await sync(db, settings, feed_id)
    assert (run.outcome, run.error) == ("failed", "page 2: HTTP 503 (gave up after 3 attempts)")
    seen = [s.query.get("page", "1") for s in server.seen]
    assert seen[0] == "1" and seen.count("2") == 3 and set(seen[1:]) <= {"2", "3"}
    assert await snapshot(db) == before


async def test_a_feed_that_suddenly_sends_nothing_withdraws_nothing(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    """No records at all (an empty page, a CSV of its header alone) from a feed that has
    pledges: the run fails, saying so, and every pledge stays; a first sync may be empty."""
    paged = await make_feed(db, server.url("/pledges.json"))
    table = await make_feed(db, server.url("/pledges.csv"), "csv")
    for feed_id in (paged, table):
        assert (await sync(db, settings, feed_id)).new == 12
    before = await snapshot(db)
    server.set_records([])
    for feed_id in (paged, table):
        run = await sync(db, settings, feed_id)
        assert run.outcome == "failed"
        assert run.error.startswith("the feed sent no records at all: its pledges are kept")
    assert await snapshot(db) == before
    server.set_records(RECORDS[:11])  # a real departure is still a withdrawal
    assert (await sync(db, settings, paged)).withdrawn == 1
    server.set_records([])
    empty = await make_feed(db, server.url("/all.json"))
    assert counts(await sync(db, settings, empty)) == (0, 0, 0, 0, 0)

    # Every pledge withdrawn (as an empty source did before this guard): the feed is not
    # new, so they come back as updated, through the upsert, never as a second copy.
    async with db.writer.begin() as session:
        await session.execute(
            update(Pledge).where(Pledge.feed_id == table).values(withdrawn_at=utc_now())
        )
    server.set_records([*RECORDS[:11], pledge(11, status="fulfilled")])  # not a 304
    back = await sync(db, settings, table)
    assert (back.outcome, counts(back)) == ("success", (0, 12, 0, 0, 0))
    active = (await pledges_by_id(db)).values()
    assert sum(1 for p in active if p.feed_id == table and p.withdrawn_at is None) == 12


async def test_a_paged_feed_without_validators_on_every_page_is_read_in_full(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    """Pages that came without validators cannot be asked "changed?": read in full."""
    server.state.validators = False
    feed_id = await make_feed(db, server.url("/pledges.json"))
    assert (await sync(db, settings, feed_id)).new == 12
    server.state.validators = True
    server.forget()
    run = await sync(db, settings, feed_id)
    assert (run.outcome, counts(run)) == ("success", (0, 0, 12, 0, 0))
    assert not any("if-none-match" in s.headers for s in server.seen)
    server.forget()
    assert (await sync(db, settings, feed_id)).outcome == "not_modified"  # now they have


async def test_numbered_pages_and_relative_next_links(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    numbered = await make_feed(db, server.url("/numbered.json"))
    run = await sync(db, settings, numbered)
    assert (run.outcome, run.new) == ("success", 12)
    assert [s.query.get("page", "1") for s in server.seen] == ["1", "2", "3"]
    server.state.relative_next = True
    server.set_records([pledge(i) for i in range(100, 111)])
    linked = await make_feed(db, server.url("/pledges.json"))
    run = await sync(db, settings, linked)
    assert (run.outcome, run.new) == ("success", 11)


@pytest.mark.parametrize(("path", "fmt"), [("/pledges.csv", "csv"), ("/all.json", "json")])
async def test_an_unchanged_document_costs_one_304(
    db: Database, settings: Settings, server: FeedServer, path: str, fmt: str
) -> None:
    feed_id = await make_feed(db, server.url(path), fmt)
    first = await sync(db, settings, feed_id)
    assert (first.outcome, counts(first)) == ("success", (12, 0, 0, 0, 0))
    before = await snapshot(db)
    stored_etag = before["validators"][0][1]
    assert stored_etag.startswith('"') and before["validators"][0][2]

    second = await sync(db, settings, feed_id)
    assert (second.outcome, second.http_status, counts(second)) == (
        "not_modified",
        304,
        (0, 0, 0, 0, 0),
    )
    assert server.seen[-1].headers["if-none-match"] == stored_etag
    assert "if-modified-since" in server.seen[-1].headers
    assert await snapshot(db) == before  # 304 does no work: not even last_seen_at

    server.set_records([*RECORDS[:11], pledge(11, status="fulfilled"), pledge(12)])
    third = await sync(db, settings, feed_id)
    assert (third.outcome, counts(third)) == ("success", (1, 1, 11, 0, 0))


async def test_the_change_hook_hears_of_runs_that_changed_pledges_only(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    """After a committed run that changed pledges, the hook gets the process (the app
    counts its dashboard again there); a hook that fails does not fail the run."""
    feed_id = await make_feed(db, server.url("/all.json"))
    async with db.reader() as session:
        process_id = await session.scalar(select(Feed.process_id).where(Feed.id == feed_id))
    heard: list[tuple[int, int]] = []

    async def hook(changed_process: int) -> None:
        async with db.reader() as session:  # after the commit: the run's pledges are there
            count = await session.scalar(select(func.count(Pledge.id)))
            heard.append((changed_process, count or 0))

    first = await sync(db, settings, feed_id, after_change=hook)
    assert first.new == 12 and heard == [(process_id, 12)]
    assert (await sync(db, settings, feed_id, after_change=hook)).outcome == "not_modified"
    server.set_records(RECORDS[:11])
    assert (await sync(db, settings, feed_id, after_change=hook)).withdrawn == 1
    assert heard == [(process_id, 12), (process_id, 12)]  # withdrawn, not deleted

    async def broken(changed_process: int) -> None:
        raise RuntimeError("the dashboard is down")

    server.set_records(RECORDS)
    run = await sync(db, settings, feed_id, after_change=broken)
    assert (run.outcome, run.updated) == ("success", 1)


@pytest.mark.parametrize("path", ["/all.json", "/pledges.json"])
async def test_last_modified_alone_gives_a_304(
    db: Database, settings: Settings, server: FeedServer, path: str
) -> None:
    """A server that sends no ETag: its Last-Modified is asked back (If-Modified-Since),
    page by page, and its 304 does no work."""
    server.state.send_etag = False
    feed_id = await make_feed(db, server.url(path))
    assert (await sync(db, settings, feed_id)).new == 12
    before = await snapshot(db)
    _, etag, last_modified = before["validators"][0]
    assert etag == "" and last_modified
    server.forget()
    run = await sync(db, settings, feed_id)
    assert (run.outcome, run.http_status) == ("not_modified", 304)
    assert server.seen and all(
        "if-none-match" not in s.headers and s.headers["if-modified-since"] == last_modified
        for s in server.seen
    )
    assert len(server.seen) == (3 if path == "/pledges.json" else 1)  # pages of 5
    assert await snapshot(db) == before


async def objective_masks(db: Database) -> dict[str, list[int]]:
    """The objectives each pledge's bit mask holds, by source id (the counts read those)."""
    async with db.reader() as session:
        rows = await session.execute(select(Pledge.source_id, Pledge.objective_mask))
    return {source_id: objectives_in(mask) for source_id, mask in rows}


async def test_a_run_writes_only_what_changed_and_keeps_objectives_in_step(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    feed_id = await make_feed(db, server.url("/pledges.json"))
    first = await sync(db, settings, feed_id)
    stored = await pledges_by_id(db)
    in_order = sorted(stored.values(), key=lambda p: p.id)
    assert [p.source_id for p in in_order] == [r["id"] for r in RECORDS]  # ids in feed order
    assert {(p.first_seen_at, p.last_seen_at) for p in in_order} == {
        (first.started_at, first.started_at)
    }
    assert await objective_masks(db) == {sid: p.objectives for sid, p in stored.items()}

    before = await snapshot(db)
    server.state.validators = False  # read in full, every record compared
    again = await sync(db, settings, feed_id)
    assert counts(again) == (0, 0, 12, 0, 0)
    after = await snapshot(db)
    assert after["pledges"] == before["pledges"]  # found as they are: not one row written
    server.state.validators = True

    edited = pledge(4, title="Edited", objectives=[23])
    server.set_records(
        [
            *RECORDS[:2],  # 2 and 3 are gone
            edited,
            *RECORDS[5:7],
            pledge(6, title="A second copy"),  # set aside: the first one wins
            pledge(7, form="nope"),  # unreadable, but its id is there: not withdrawn
            *RECORDS[8:],
            pledge(20),
        ]
    )
    third = await sync(db, settings, feed_id)
    assert counts(third) == (1, 1, 8, 2, 2)
    stored = await pledges_by_id(db)
    assert {sid for sid, p in stored.items() if p.withdrawn_at is not None} == {
        "P-000002",
        "P-000003",
    }
    assert stored["P-000002"].withdrawn_at == third.started_at
    assert stored["P-000004"].title == "Edited" and stored["P-000006"].title == RECORDS[6]["title"]
    written = {sid for sid, p in stored.items() if p.last_seen_at == third.started_at}
    assert written == {"P-000004", "P-000020"}  # the others were left as they were
    assert stored["P-000020"].first_seen_at == third.started_at
    assert stored["P-000020"].id == in_order[-1].id + 1  # updating took no ids: no gaps
    assert stored["P-000004"].first_seen_at == first.started_at
    assert await objective_masks(db) == {sid: p.objectives for sid, p in stored.items()}
    assert (await objective_masks(db))["P-000004"] == [23]


async def test_many_pledges_go_many_to_a_statement_in_feed_order(
    db: Database, settings: Settings
) -> None:
    """Pages of 300, a batch each: on SQLite a statement of 200 rows and one of the rest
    (on PostgreSQL, COPY). Every row lands, in feed order, on a first sync and an upsert."""
    records = [pledge(i) for i in range(1000)]
    many = settings.replace(feeds_max_bytes=5_000_000)
    with FeedServer(records, page_size=300) as server:
        feed_id = await make_feed(db, server.url("/pledges.json"))
        first = await sync(db, many, feed_id)
        assert (first.outcome, counts(first)) == ("success", (1000, 0, 0, 0, 0))
        stored = await pledges_by_id(db)
        ids = [stored[r["id"]].id for r in records]
        assert ids == list(range(ids[0], ids[0] + 1000))  # feed order, no gaps
        assert stored["P-000999"].title == records[999]["title"]
        assert await objective_masks(db) == {r["id"]: r["objectives"] for r in records}

        edited = [
            pledge(i, title=f"Edited {i}") if i % 3 else pledge(i)
            for i in range(10, 1200)  # 0-9 gone, 1000-1199 new
        ]
        server.set_records(edited)  # the last page's 260 changes: statements of 200 and 60
        again = await sync(db, many, feed_id)
        assert counts(again) == (200, 660, 330, 10, 0)
        stored = await pledges_by_id(db)
        assert {r["id"]: r["title"] for r in edited} == {
            sid: p.title for sid, p in stored.items() if p.withdrawn_at is None
        }
        assert [stored[f"P-{i:06d}"].id for i in range(1000, 1200)] == list(
            range(ids[-1] + 1, ids[-1] + 201)
        )


async def test_a_failure_while_writing_leaves_nothing_behind(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    feed_id = await make_feed(db, server.url("/pledges.json"))
    assert (await sync(db, settings, feed_id)).outcome in ("success", "not_modified")
    server.set_records([pledge(i, title=f"Changed {i}") for i in range(3, 15)])
    await fails_while_objective_23_is_refused(db, settings, feed_id)
    ok = await sync(db, settings, feed_id)
    assert (ok.outcome, counts(ok)) == ("success", (3, 9, 0, 3, 0))
    stored = await pledges_by_id(db)
    assert await objective_masks(db) == {sid: p.objectives for sid, p in stored.items()}


async def test_a_failure_while_writing_a_first_sync_leaves_nothing_behind(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    """A feed's first sync is written the quickest way (on PostgreSQL, COPY straight into
    the table): a failure there too takes every row with it."""
    records = [*RECORDS, pledge(13)]  # 13 has objective 23, which the database refuses
    server.set_records(records)
    feed_id = await make_feed(db, server.url("/pledges.json"))
    await fails_while_objective_23_is_refused(db, settings, feed_id)
    ok = await sync(db, settings, feed_id)
    assert (ok.outcome, counts(ok)) == ("success", (13, 0, 0, 0, 0))
    assert await objective_masks(db) == {r["id"]: r["objectives"] for r in records}


async def fails_while_objective_23_is_refused(
    db: Database, settings: Settings, feed_id: int
) -> None:
    """A sync while the database itself refuses objective 23 (pledge 13 has it): the
    pledges before it are written by then, and must go with the rest. Then allowed again."""
    before = await snapshot(db)
    async with db.writer.begin() as session:
        for statement in REFUSE_23[db.writer_engine.dialect.name]:
            await session.execute(text(statement))
    failed = await sync(db, settings, feed_id)
    assert failed.outcome == "failed" and "objective 23 refused" in failed.error, failed.error
    assert await snapshot(db) == before
    async with db.writer.begin() as session:
        await session.execute(text("DROP TRIGGER refuse_23" + DROP_ON[db.is_sqlite]))


REFUSE_23 = {
    "sqlite": [
        "CREATE TRIGGER refuse_23 BEFORE INSERT ON pledges "
        "WHEN NEW.objective_mask & (1 << 23) <> 0 "
        "BEGIN SELECT RAISE(ABORT, 'objective 23 refused'); END"
    ],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION refuse_23() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.objective_mask & (1 << 23) <> 0 THEN "
        "RAISE EXCEPTION 'objective 23 refused'; END IF; "
        "RETURN NEW; END $$",
        "CREATE TRIGGER refuse_23 BEFORE INSERT ON pledges "
        "FOR EACH ROW EXECUTE FUNCTION refuse_23()",
    ],
}
DROP_ON = {True: "", False: " ON pledges"}


async def test_a_page_read_whole_or_as_it_streams_gives_the_same_pledges(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    server.set_records([*RECORDS, pledge(12, title='Ünïcode ✓ "quoted" ]}')])
    whole = await make_feed(db, server.url("/all.json"), name="whole")
    streamed = await make_feed(db, server.url("/all.json"), name="streamed")
    assert (await sync(db, settings, whole)).new == 13  # 5 KB: under the record cap
    small_cap = settings.replace(feeds_max_record_bytes=1000)  # longer than that: streamed
    assert (await sync(db, small_cap, streamed)).new == 13
    async with db.reader() as session:
        rows = (
            await session.execute(
                select(Pledge.feed_id, Pledge.source_id, Pledge.content_hash, Pledge.title)
            )
        ).all()
    by_feed = {
        feed: sorted((sid, digest, title) for f, sid, digest, title in rows if f == feed)
        for feed in (whole, streamed)
    }
    assert by_feed[whole] == by_feed[streamed] and len(by_feed[whole]) == 13


# --- Misbehaving servers ----------------------------------------------------------------------


async def test_a_slow_server_times_out_and_is_retried(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    feed_id = await make_feed(db, server.url("/all.json"))
    once = settings.replace(feeds_max_retries=1)
    run = await failing_run_leaves_no_trace(
        db, settings, server, feed_id, "slow", seconds=1.5, times=-1, run_settings=once
    )
    assert run.error.startswith("page 1: timed out (ReadTimeout") and run.http_status is None
    assert run.error.endswith("(gave up after 2 attempts)") and len(server.seen) == 2

    server.clear_faults()
    server.fault("slow", seconds=1.5, times=1)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    ok = await sync(db, settings, feed_id, sleep=sleep)
    assert (ok.outcome, ok.new, ok.updated, ok.withdrawn) == ("success", 3, 9, 3)
    assert waits == [0.01]  # a timeout is backed off like a 5xx


async def test_a_body_that_stalls_midway_times_out(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    feed_id = await make_feed(db, server.url("/pledges.json"))
    no_retry = settings.replace(feeds_max_retries=0)
    run = await failing_run_leaves_no_trace(
        db, settings, server, feed_id, "stall", page=2, seconds=1.5, times=-1, run_settings=no_retry
    )
    assert run.error.startswith("page 2: timed out reading the body"), run.error


async def test_server_errors_are_retried_then_reported(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    feed_id = await make_feed(db, server.url("/pledges.json"))
    server.fault("status", page=2, status=500, times=2)  # twice, then fine
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(seconds)

    run = await sync(db, settings, feed_id, sleep=sleep)
    assert (run.outcome, counts(run)) == ("success", (12, 0, 0, 0, 0))  # no page counted twice
    pages = [s.query.get("page", "1") for s in server.seen]
    assert pages == ["1", "2", "2", "2", "3"]
    assert waits == [0.01, 0.02]  # backing off: the base (feeds_retry_base_ms), then twice it

    failed = await failing_run_leaves_no_trace(
        db, settings, server, feed_id, "status", page=3, status=502, times=-1
    )
    assert failed.error == "page 3: HTTP 502 (gave up after 3 attempts)"
    assert failed.http_status == 502


async def test_a_client_error_is_not_retried(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    feed_id = await make_feed(db, server.url("/pledges.json"))
    run = await failing_run_leaves_no_trace(
        db, settings, server, feed_id, "status", status=403, times=-1
    )
    assert run.error == "page 1: HTTP 403 Forbidden" and run.http_status == 403
    assert len(server.seen) == 1


async def test_retry_after_is_honoured(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    feed_id = await make_feed(db, server.url("/pledges.csv"), "csv")
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(seconds)

    server.fault("status", status=429, retry_after="1", times=1)
    server.fault("status", status=503, retry_after="0", times=1)
    started = time.monotonic()
    run = await sync(db, settings, feed_id, sleep=sleep)
    assert (run.outcome, run.new) == ("success", 12)
    assert waits == [1.0, 0.0] and time.monotonic() - started >= 1.0


async def test_a_retry_after_too_long_ends_the_run_and_moves_the_next_one(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    feed_id = await make_feed(db, server.url("/pledges.csv"), "csv")
    run = await failing_run_leaves_no_trace(
        db, settings, server, feed_id, "status", status=429, retry_after="3600", times=-1
    )
    assert "asks to wait 3600 s" in run.error and run.http_status == 429
    async with db.reader() as session:
        feed = await session.get(Feed, feed_id)
    assert feed is not None and feed.next_run_at is not None
    assert feed.next_run_at >= run.started_at + timedelta(seconds=3600)
    assert feed.lease_until is None


@pytest.mark.parametrize(("path", "fmt"), [("/pledges.json", "json"), ("/pledges.csv", "csv")])
async def test_a_body_cut_off_leaves_nothing_behind(
    db: Database, settings: Settings, server: FeedServer, path: str, fmt: str
) -> None:
    feed_id = await make_feed(db, server.url(path), fmt)
    page = 2 if fmt == "json" else None  # in JSON, page 1 was good: still all or nothing
    run = await failing_run_leaves_no_trace(
        db, settings, server, feed_id, "truncate", path=path, page=page, times=-1
    )
    assert "cut off" in run.error and "gave up after 3 attempts" in run.error

    server.clear_faults()
    server.fault("truncate", path=path, page=page, times=1)  # once: the retry gets it all
    ok = await sync(db, settings, feed_id)
    assert (ok.outcome, ok.new, ok.updated, ok.withdrawn) == ("success", 3, 9, 3)


async def test_malformed_bodies_end_the_run_without_retrying(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    feed_id = await make_feed(db, server.url("/pledges.json"))
    run = await failing_run_leaves_no_trace(
        db, settings, server, feed_id, "malformed", page=2, times=-1
    )
    assert run.error.startswith("page 2: malformed JSON:"), run.error
    assert [s.query.get("page", "1") for s in server.seen] == ["1", "2"]  # no retry

    server.clear_faults()
    csv_feed = await make_feed(db, server.url("/pledges.csv"), "csv")
    body = b'id,title\n1,"never closed\n'
    run = await failing_run_leaves_no_trace(
        db, settings, server, csv_feed, "body", path="/pledges.csv", body=body, times=-1
    )
    assert run.error == "page 1: malformed CSV: a quoted field is never closed (the CSV ends early)"

    server.clear_faults()
    run = await failing_run_leaves_no_trace(
        db, settings, server, csv_feed, "body", path="/pledges.csv", body=b"", times=-1
    )
    assert run.error == "page 1: the body is empty"

    # Memory holds one unfinished record at most: a line that never ends, or a quote never
    # closed, is refused once it outgrows the record cap (not held up to the body cap).
    capped = settings.replace(feeds_max_record_bytes=1000)
    refused = "page 1: malformed CSV: a record longer than 1,000 characters"
    for body in (b"id,title\n1," + b"x" * 5000, b'id,title\n1,"' + b"x\n" * 3000):
        server.clear_faults()
        run = await failing_run_leaves_no_trace(
            db,
            settings,
            server,
            csv_feed,
            "body",
            run_settings=capped,
            path="/pledges.csv",
            body=body,
            times=-1,
        )
        assert run.error.startswith(refused), run.error


async def test_wrong_content_types_are_refused(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    feed_id = await make_feed(db, server.url("/all.json"))
    run = await failing_run_leaves_no_trace(
        db,
        settings,
        server,
        feed_id,
        "body",
        path="/all.json",
        content_type="text/html; charset=utf-8",
        body=b"<html><body>Please log in</body></html>",
        times=-1,
    )
    assert run.error == "page 1: expected JSON, got content type 'text/html'"

    server.clear_faults()
    csv_feed = await make_feed(db, server.url("/pledges.csv"), "csv")
    run = await failing_run_leaves_no_trace(
        db,
        settings,
        server,
        csv_feed,
        "content_type",
        path="/pledges.csv",
        content_type="application/json",
        times=-1,
    )
    assert run.error == "page 1: expected CSV, got content type 'application/json'"


@pytest.mark.parametrize("declared", [True, False])
async def test_oversize_bodies_are_cut_off(
    db: Database, settings: Settings, server: FeedServer, declared: bool
) -> None:
    feed_id = await make_feed(db, server.url("/all.json"))
    run = await failing_run_leaves_no_trace(
        db, settings, server, feed_id, "oversize", size=300_000, declare_length=declared, times=-1
    )
    assert "feeds_max_bytes (200,000" in run.error, run.error


async def test_redirects_stay_on_the_same_host(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    feed_id = await make_feed(db, server.url("/old-feed"))
    server.fault("redirect", path="/old-feed", location="/all.json", times=-1)
    run = await sync(db, settings, feed_id)
    assert (run.outcome, run.new) == ("success", 12)

    other = await make_feed(db, server.url("/all.json"))
    moved = "http://localhost:{port}/all.json"
    run = await failing_run_leaves_no_trace(
        db, settings, server, other, "redirect", path="/all.json", location=moved, times=-1
    )
    assert "to another host (localhost); refused" in run.error
    assert [s.path for s in server.seen] == ["/all.json"]  # and never went to localhost


async def test_redirects_to_another_host_when_allowed_and_allow_listed(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    """With feeds_redirect_other_hosts on, a redirect may lead to another host of the
    allow-list (the auth header stays behind); one off the list is still refused."""
    feed_id = await make_feed(
        db,
        server.url("/old-feed"),
        auth_header=feeds.AuthHeader(name="X-Api-Key", value="s3cret"),
    )
    moved = "http://localhost:{port}/all.json"
    server.fault("redirect", path="/old-feed", location=moved, times=-1)
    allowed = settings.replace(
        feeds_redirect_other_hosts=True, feeds_allowed_hosts="127.0.0.1,localhost"
    )
    run = await sync(db, allowed, feed_id)
    assert (run.outcome, run.new) == ("success", 12), run.error
    assert [(s.path, s.headers.get("host", "").split(":")[0]) for s in server.seen] == [
        ("/old-feed", "127.0.0.1"),
        ("/all.json", "localhost"),
    ]
    assert [s.headers.get("x-api-key") for s in server.seen] == ["s3cret", None]

    off_the_list = settings.replace(feeds_redirect_other_hosts=True)
    run = await failing_run_leaves_no_trace(
        db,
        allowed,
        server,
        feed_id,
        "redirect",
        run_settings=off_the_list,
        path="/old-feed",
        location=moved,
        times=-1,
    )
    assert "host 'localhost' is not in the feeds_allowed_hosts setting" in run.error


async def test_duplicate_ids_keep_the_first_and_quarantine_the_rest(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    server.set_records([*RECORDS, pledge(4, title="Second copy"), pledge(4, title="Third")])
    feed_id = await make_feed(db, server.url("/pledges.json"))
    run = await sync(db, settings, feed_id)
    assert (run.outcome, counts(run)) == ("success", (12, 0, 0, 0, 2))
    assert (await pledges_by_id(db))["P-000004"].title == RECORDS[4]["title"]
    async with db.reader() as session:
        reasons = list(
            await session.scalars(select(QuarantinedRecord.reason).order_by(QuarantinedRecord.id))
        )
    assert reasons == [
        f"record {n}: id 'P-000004' appears again (the first record wins)" for n in (13, 14)
    ]


async def test_schema_drift_quarantines_and_a_field_map_repairs_it(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    feed_id = await make_feed(db, server.url("/pledges.csv"), "csv")
    assert (await sync(db, settings, feed_id)).new == 12
    before = await snapshot(db)

    # The source renames a column: every record is set aside, none is taken for withdrawn.
    server.state.csv_columns = tuple(
        "name" if c == "title" else c for c in server.state.csv_columns
    )
    server.set_records([{**r, "name": r["title"]} for r in RECORDS])
    drifted = await sync(db, settings, feed_id)
    assert (drifted.outcome, counts(drifted)) == ("success", (0, 0, 0, 0, 12))
    after = await snapshot(db)
    # Seen (last_seen_at moves on), but neither changed nor withdrawn.
    assert [p[:-1] for p in after["pledges"]] == [p[:-1] for p in before["pledges"]]
    async with db.reader() as session:
        shown = await session.scalar(
            select(QuarantinedRecord).where(QuarantinedRecord.run_id == drifted.id).limit(1)
        )
    assert shown is not None and shown.reason == "record 1: title: missing"
    assert shown.source_id == "P-000000" and shown.record["name"] == RECORDS[0]["title"]

    async with db.writer.begin() as session:
        feed = await session.get(Feed, feed_id)
        assert feed is not None
        await feeds.update_feed(
            session,
            feed,
            feeds.FeedPatch(field_map={"title": "name"}),
            frozenset({"127.0.0.1"}),
            60,
            utc_now(),
        )
    repaired = await sync(db, settings, feed_id)
    assert (repaired.outcome, counts(repaired)) == ("success", (0, 0, 12, 0, 0))

    # Drift in the id itself: nobody can tell what is gone, so nothing is withdrawn.
    server.state.csv_columns = tuple("key" if c == "id" else c for c in server.state.csv_columns)
    server.set_records([{**r, "key": r["id"], "name": r["title"]} for r in RECORDS[:5]])
    blind = await sync(db, settings, feed_id)
    assert (blind.outcome, counts(blind)) == ("success", (0, 0, 0, 0, 5))
    assert "nothing was marked withdrawn" in blind.error
    assert all(p.withdrawn_at is None for p in (await pledges_by_id(db)).values())


async def test_bad_records_are_quarantined_and_good_ones_kept(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    server.set_records(
        [
            *RECORDS[:3],
            pledge(3, country="ATLANTIS"),
            {"id": "P-X", "title": "No type"},
            "not an object",
            pledge(5, objectives=[0, 24]),
        ]
    )
    feed_id = await make_feed(db, server.url("/all.json"))
    run = await sync(db, settings, feed_id)
    assert (run.outcome, counts(run)) == ("success", (3, 0, 0, 0, 4))
    async with db.reader() as session:
        rows = list(await session.scalars(select(QuarantinedRecord).order_by(QuarantinedRecord.id)))
    assert [(q.source_id, q.reason.split(":")[0]) for q in rows] == [
        ("P-000003", "record 4"),
        ("P-X", "record 5"),
        ("", "record 6"),
        ("P-000005", "record 7"),
    ]
    assert rows[2].record == {"value": "not an object"}
    assert "ATLANTIS" in rows[0].reason


async def test_a_quarantined_record_keeps_the_whole_object_it_came_as(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    odd = {**pledge(6, form="nope"), "note": "a field nobody asked for"}
    server.set_records([*RECORDS[:6], odd, *RECORDS[7:]])  # page 2 of 3
    feed_id = await make_feed(db, server.url("/pledges.json"))
    run = await sync(db, settings, feed_id)
    assert (run.outcome, counts(run)) == ("success", (11, 0, 0, 0, 1))
    async with db.reader() as session:
        shown = await session.scalar(select(QuarantinedRecord))
    assert shown is not None and shown.reason.startswith("record 7: form:")
    assert shown.record == odd
    assert sorted(await pledges_by_id(db)) == [r["id"] for r in RECORDS if r["id"] != "P-000006"]


async def test_a_page_read_whole_but_not_valid_as_it_stands_is_checked_record_by_record(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    """Every record of page 1 is in the common form, so the page reads into the plain type,
    but one is a member state without a country: the page goes through the record checks,
    which quarantine that one (whole) and keep the rest, as on any other page."""
    stateless = {**pledge(4, country=""), "note": "a field nobody asked for"}
    server.set_records([*RECORDS[:4], stateless, *RECORDS[5:]])  # page 1 of 3: 0-4
    feed_id = await make_feed(db, server.url("/pledges.json"))
    run = await sync(db, settings, feed_id)
    assert (run.outcome, counts(run)) == ("success", (11, 0, 0, 0, 1))
    async with db.reader() as session:
        shown = await session.scalar(select(QuarantinedRecord))
    assert shown is not None and shown.reason == (
        "record 5: country: required for a member state (ISO 3166-1 alpha-3)"
    )
    assert shown.record == stateless
    stored = await pledges_by_id(db)
    assert sorted(stored) == [r["id"] for r in RECORDS if r["id"] != "P-000004"]
    assert stored["P-000005"].content_hash == valid_hash(RECORDS[5])


def valid_hash(record: dict[str, Any]) -> str:
    return validate_record(record, field_paths({}, nested=True), utc_now()).content_hash


async def test_hosts_off_the_allow_list_are_never_asked(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    feed_id = await make_feed(db, server.url("/all.json"))
    server.forget()
    run = await sync(db, settings.replace(feeds_allowed_hosts="pledges.example.org"), feed_id)
    assert run.outcome == "failed" and "not in the feeds_allowed_hosts setting" in run.error
    assert server.seen == []


async def test_the_auth_header_goes_with_every_page(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    feed_id = await make_feed(
        db,
        server.url("/pledges.json"),
        auth_header=feeds.AuthHeader(name="X-Api-Key", value="s3cret"),
    )
    assert (await sync(db, settings, feed_id)).outcome == "success"
    assert [s.headers.get("x-api-key") for s in server.seen] == ["s3cret"] * 3
    assert all(s.headers["user-agent"].startswith("ForumScheduler/") for s in server.seen)


async def test_a_run_that_takes_too_long_is_stopped(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    feed_id = await make_feed(db, server.url("/all.json"))
    slow = settings.replace(feeds_run_timeout_seconds=1, feeds_read_timeout_seconds=5)
    run = await failing_run_leaves_no_trace(
        db, settings, server, feed_id, "slow", seconds=2, times=-1, run_settings=slow
    )
    assert run.error == "the run took longer than 1 s (feeds_run_timeout_seconds)"


# --- Once across nodes --------------------------------------------------------------------


async def set_lease(db: Database, feed_id: int, seconds: float) -> None:
    async with db.writer.begin() as session:
        await session.execute(
            update(Feed)
            .where(Feed.id == feed_id)
            .values(lease_until=utc_now() + timedelta(seconds=seconds))
        )


async def test_a_held_lease_keeps_other_nodes_out_until_it_expires(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    feed_id = await make_feed(db, server.url("/all.json"))
    await set_lease(db, feed_id, 300)  # another node is running it
    runner = FeedRunner(db, settings)
    with pytest.raises(Busy):
        await runner.run(feed_id, manual=True)
    async with db.writer.begin() as session:
        await session.execute(update(Feed).values(next_run_at=utc_now() - timedelta(minutes=1)))
    assert await runner.run(feed_id, manual=False) is None
    assert server.seen == []

    # That node died mid-run: once its lease has expired, the feed is ours again.
    async with db.writer.begin() as session:
        session.add(FeedRun(feed_id=feed_id, started_at=utc_now(), outcome="running"))
    await set_lease(db, feed_id, -1)
    run = await runner.run(feed_id, manual=False)
    assert run is not None and run.outcome == "success"
    async with db.reader() as session:
        outcomes = list(await session.scalars(select(FeedRun.outcome).order_by(FeedRun.id)))
        feed = await session.get(Feed, feed_id)
    assert outcomes == ["failed", "success"]
    assert feed is not None and feed.lease_until is None
    assert feed.next_run_at is not None and feed.next_run_at > utc_now() + timedelta(minutes=59)
    # Not due any more: a second node whose timer fires late does not run it again.
    assert await runner.run(feed_id, manual=False) is None


async def test_two_nodes_due_at_once_run_the_feed_once(
    settings: Settings, server: FeedServer
) -> None:
    first, second = open_database(settings), open_database(settings)  # two nodes' pools
    try:
        feed_id = await make_feed(first, server.url("/all.json"))
        async with first.writer.begin() as session:
            await session.execute(update(Feed).values(next_run_at=utc_now()))
        server.fault("slow", seconds=0.3, times=-1)
        results = await asyncio.gather(
            FeedRunner(first, settings).run(feed_id, manual=False),
            FeedRunner(second, settings).run(feed_id, manual=False),
        )
        assert sorted(r is None for r in results) == [False, True]
        async with first.reader() as session:
            runs = await session.scalar(select(func.count()).select_from(FeedRun))
            pledges = await session.scalar(select(func.count()).select_from(Pledge))
        assert (runs, pledges, len(server.seen)) == (1, 12, 1)
    finally:
        await first.dispose()
        await second.dispose()


async def test_a_run_whose_lease_is_taken_over_writes_nothing(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    feed_id = await make_feed(db, server.url("/all.json"))
    server.fault("slow", seconds=1.0, times=-1)
    slow = settings.replace(feeds_read_timeout_seconds=5)

    async def take_over() -> None:
        await asyncio.sleep(0.4)
        await set_lease(db, feed_id, 600)  # the lease ran out and another node claimed it

    run, _ = await asyncio.gather(FeedRunner(db, slow).run(feed_id), take_over())
    assert run is not None and run.outcome == "failed"
    assert run.error == "another node took the feed over (lease lost)"
    assert (await snapshot(db))["pledges"] == []
    async with db.reader() as session:
        feed = await session.get(Feed, feed_id)
    assert feed is not None and feed.lease_until is not None  # the other node's, untouched


# --- Digest, clock, command line ------------------------------------------------------------


async def test_one_digest_per_run_to_each_organizer_with_an_address(
    db: Database, settings: Settings, server: FeedServer
) -> None:
    feed_id = await make_feed(db, server.url("/all.json"))
    async with db.writer.begin() as session:
        process_id = await session.scalar(select(Process.id))
        # Ben has no address; Chidi only views the process: neither is told.
        for name, email, lang, role in (
            ("Amina", "amina@example.org", "fr", "organizer"),
            ("Ben", "", "en", "owner"),
            ("Chidi", "chidi@example.org", "en", "viewer"),
        ):
            organizer = Organizer(name=name, email=email, language=lang)
            session.add(organizer)
            await session.flush()
            session.add(
                ProcessOrganizer(process_id=process_id, organizer_id=organizer.id, role=role)
            )
    run = await sync(db, settings, feed_id)
    server.set_records([pledge(1)])
    second = await sync(db, settings, feed_id)
    third = await sync(db, settings, feed_id)
    assert third.outcome == "not_modified"
    async with db.reader() as session:
        notes = list(await session.scalars(select(Notification).order_by(Notification.id)))
    assert [(n.kind, n.recipient_email, n.language) for n in notes] == [
        ("pledge_digest", "amina@example.org", "fr")
    ] * 2
    assert notes[0].dedupe_key == f"pledge-digest:{run.id}:{notes[0].organizer_id}"
    assert notes[0].context["new_count"] == 12 and notes[0].context["event_title"] == "GCM review"
    assert notes[0].context["pledge_titles"] == "; ".join(r["title"] for r in RECORDS[:5])
    assert notes[1].context["withdrawn_count"] == 11 and second.withdrawn == 11


async def test_the_clock_runs_due_feeds_from_the_rows(
    settings: Settings, server: FeedServer
) -> None:
    db = open_database(settings)
    try:
        feed_id = await make_feed(db, server.url("/all.json"))
        async with db.writer.begin() as session:
            await session.execute(update(Feed).values(next_run_at=utc_now()))
    finally:
        await db.dispose()
    app = create_app(settings.replace(scheduler_enabled=True))
    async with AsyncTestClient(app=app):  # the lifespan starts the clock, which reads the rows
        deadline = time.monotonic() + 15
        while not server.seen:
            assert time.monotonic() < deadline, "the clock never ran the due feed"
            await asyncio.sleep(0.1)
        db = open_database(settings)
        try:
            while True:
                async with db.reader() as session:
                    run = await session.scalar(select(FeedRun).where(FeedRun.feed_id == feed_id))
                if run is not None and run.outcome != "running":
                    break
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            assert (run.outcome, run.new) == ("success", 12)
            async with db.reader() as session:
                feed = await session.get(Feed, feed_id)
            assert feed is not None and feed.next_run_at is not None
            assert feed.next_run_at > utc_now() + timedelta(minutes=59)
            # The job is planned again from the row, for the next run.
            while True:
                job = app.state.clock.scheduler.get_job(f"feed-{feed_id}")
                if job is not None and job.next_run_time == feed.next_run_at:
                    break
                assert time.monotonic() < deadline, job
                await asyncio.sleep(0.05)
        finally:
            await db.dispose()


def test_feeds_sync_by_hand_from_the_command_line(tmp_path: Path) -> None:
    records = [pledge(i) for i in range(30)]
    with FeedServer(records, page_size=10) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")}
        env.update(
            SCHEDULER_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}",
            SCHEDULER_DATA_DIR=str(tmp_path),
            SCHEDULER_FEEDS_ALLOWED_HOSTS="127.0.0.1",
            SCHEDULER_FEEDS_RETRY_BASE_MS="10",
        )

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "scheduler", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )

        assert run("migrate").returncode == 0

        async def add_feeds() -> None:
            settings = base_settings(env["SCHEDULER_DATABASE_URL"], tmp_path)
            db = open_database(settings)
            try:
                await make_feed(db, server.url("/pledges.json"), name="gcm-json")
                await make_feed(db, server.url("/pledges.csv"), "csv", name="gcm-csv")
            finally:
                await db.dispose()

        asyncio.run(add_feeds())
        one = run("feeds", "sync", "gcm-json")
        assert one.returncode == 0, one.stderr
        assert one.stdout.startswith("feed gcm-json: success in ")
        assert "30 new, 0 updated, 0 unchanged, 0 withdrawn, 0 quarantined" in one.stdout
        assert "feed gcm-json: page 1, " in one.stderr and "records" in one.stderr

        both = run("feeds", "sync")
        assert both.returncode == 0, both.stderr
        lines = both.stdout.splitlines()
        assert lines[0].startswith("feed gcm-json: not modified (304)")  # every page said so
        assert lines[1].startswith("feed gcm-csv: success") and "30 new" in lines[1]

        again = run("feeds", "sync", "gcm-csv")
        assert again.stdout.startswith("feed gcm-csv: not modified (304)")

        server.fault("status", status=500, times=-1)
        failed = run("feeds", "sync", "gcm-json")
        assert failed.returncode == 1
        assert "failed after" in failed.stdout and "HTTP 500" in failed.stdout

        unknown = run("feeds", "sync", "nope")
        assert unknown.returncode == 2 and "no feed named 'nope'" in unknown.stderr
