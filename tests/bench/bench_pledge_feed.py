"""Pledge feed ingest against a local feed server, with the plain download as the floor.

The feed server (tests/feed_server.py) runs in its own process on 127.0.0.1 and serves the
same generated pledges as paged JSON (pages of 1,000 with a ``next`` link), as one JSON
document and as CSV. For each, the floor is the same feed merely downloaded and parsed with
httpx in this run (``response.json()``, or ``csv.DictReader``), best of three; the ingest is
a real sync (FeedRunner: validation, scratch file, one write transaction), best of three,
each into a new database.

Goals (printed, never asserted): ingest >= 0.5x the floor's records/s, peak RSS < 200 MB,
an unchanged re-sync <= 1 s through 304. Then a changed re-sync: the server drops 1% of the
pledges, edits every 10th and adds 1% new ones (tests/feed_server.py ``edited``), and each
feed is synced again, its rate printed against the same floor. Then the dashboard queries
on those pledges, and the same answers over HTTP through the app. Last, the least any
ingest pays, in parts (``least_paid``): the feed read, validated and staged with no
database; the bare write of its rows (the ingest's own way into a bare copy of the
table); the two one after the other; and the two at once, as a design that writes during
the download would at best. Each is printed as the best ratio to the floor it allows on
this machine.

    .venv/bin/python tests/bench/bench_pledge_feed.py [--records 100000] [--page-size 1000]
        [--database sqlite|postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import itertools
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from litestar.testing import AsyncTestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sqlalchemy import select

from scheduler import audit, feeds
from scheduler import pledges as dashboards
from scheduler.app import create_app
from scheduler.database import Database, open_database
from scheduler.feeds import FeedCreate, FeedTarget
from scheduler.gc_pause import collector_paused
from scheduler.models import Pledge, Process, utc_now
from scheduler.pledge_feed import FeedClient, FeedRunner, Fetcher, FetchPolicy, Progress
from scheduler.pledge_writes import RowForm, Stager
from scheduler.schema import migrate
from scheduler.settings import Settings
from tests.live_server import fresh_database

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 3  # of each measure (floors, first ingests): the best of each is compared


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def start_server(records: int, page_size: int) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "feed_server.py"),
            "--records",
            str(records),
            "--page-size",
            str(page_size),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    port = int(process.stdout.readline())
    return process, f"http://127.0.0.1:{port}"


def edit_feed(server: subprocess.Popen[str], every: int = 10) -> None:
    """The server's feed a day later (tests/feed_server.py ``edited``)."""
    assert server.stdin is not None and server.stdout is not None
    server.stdin.write(f"edit {every}\n")
    server.stdin.flush()
    assert server.stdout.readline().strip() == "edited"


async def floor_paged(base: str) -> int:
    async with httpx.AsyncClient(trust_env=False, timeout=120) as client:
        url: str | None = f"{base}/pledges.json"
        count = 0
        while url:
            data = (await client.get(url)).json()
            count += len(data["items"])
            url = data["next"]
        return count


async def floor_document(base: str) -> int:
    async with httpx.AsyncClient(trust_env=False, timeout=120) as client:
        return len((await client.get(f"{base}/all.json")).json()["items"])


async def floor_csv(base: str) -> int:
    async with httpx.AsyncClient(trust_env=False, timeout=120) as client:
        text = (await client.get(f"{base}/pledges.csv")).text
        return sum(1 for _ in csv.DictReader(io.StringIO(text)))


async def best_of(rounds: int, fn: Callable[[], Awaitable[int]]) -> tuple[int, float]:
    best = float("inf")
    count = 0
    for _ in range(rounds):
        started = time.perf_counter()
        count = await fn()
        best = min(best, time.perf_counter() - started)
    return count, best


def measure_floors(base: str) -> dict[str, tuple[int, float]]:
    """In a child process, so that its whole documents in memory do not count in our RSS."""
    out = subprocess.run(
        [sys.executable, __file__, "--floors", base], capture_output=True, text=True, check=True
    ).stdout
    floors = {}
    for line in out.splitlines():
        slug, count, seconds, rss = line.split()
        floors[slug] = (int(count), float(seconds))
        print(f"floor {slug:<14} {int(count):,} records in {float(seconds):.2f} s ({rss} MB RSS)")
    return floors


def warm_server(base: str) -> None:
    """The server renders its feed once, outside the timings (in a child process, so that
    its whole documents in memory do not count in our RSS)."""
    subprocess.run([sys.executable, __file__, "--warm", base], check=True)


async def warm_here(base: str) -> None:
    for fn in (floor_paged, floor_document, floor_csv):
        await fn(base)


async def floors_here(base: str) -> None:
    await warm_here(base)
    for slug, fn in (
        ("json-paged", floor_paged),
        ("json-document", floor_document),
        ("csv", floor_csv),
    ):
        count, seconds = await best_of(ROUNDS, lambda fn=fn: fn(base))  # type: ignore[misc]
        print(slug, count, f"{seconds:.4f}", f"{peak_rss_mb():.0f}", flush=True)


async def add_feed(db: Database, slug: str, url: str, fmt: str) -> int:
    async with db.writer.begin() as session:
        audit.act_as(session, audit.CLI)
        process = Process(slug=slug, name=f"Bench {slug}", time_zone="UTC", languages=["en"])
        session.add(process)
        await session.flush()
        data = FeedCreate(
            process_id=process.id,
            name=slug,
            url=url,
            format=fmt,  # type: ignore[arg-type]
            interval_seconds=86400,
        )
        feed = await feeds.create_feed(session, data, frozenset({"127.0.0.1"}), 60, utc_now())
        return feed.id


class Phases:
    """When the fetch ended and the write transaction began (from the progress callback)."""

    def __init__(self) -> None:
        self.apply_started: float | None = None

    def __call__(self, progress: Progress) -> None:
        if progress.phase == "apply" and self.apply_started is None:
            self.apply_started = time.perf_counter()


async def ingest(db: Database, settings: Settings, feed_id: int) -> tuple[Any, float, float | None]:
    phases = Phases()
    started = time.perf_counter()
    with audit.acting(audit.CLI):  # as `scheduler feeds sync` would run it
        run = await FeedRunner(db, settings).run(feed_id, on_progress=phases)
    elapsed = time.perf_counter() - started
    assert run is not None and run.outcome in ("success", "not_modified"), run and run.error
    applying = time.perf_counter() - phases.apply_started if phases.apply_started else None
    return run, elapsed, applying


async def before_writing(
    db: Database, settings: Settings, url: str, fmt: str, rounds: int = ROUNDS
) -> float:
    """What an ingest pays before it writes (best of ``rounds``): the feed downloaded,
    parsed, validated and staged on disk, as a real sync does it, with no database."""
    target = FeedTarget(
        id=0,
        process_id=0,
        name="bench",
        url=url,
        format=fmt,
        field_map={},
        auth_header_name="",
        auth_header_value="",
        etag="",
        last_modified="",
    )
    best = float("inf")
    for _ in range(rounds):
        form = RowForm(db.writer_engine.dialect, target, utc_now())
        stager = Stager(settings.data_dir / "feeds", settings.feeds_batch_size, form)
        client = FeedClient(FetchPolicy.from_settings(settings))
        started = time.perf_counter()
        try:
            await Fetcher(client, target, stager, utc_now()).fetch()
            await stager.flush()
        finally:
            await client.aclose()
            stager.close()
        best = min(best, time.perf_counter() - started)
    return best


async def least_paid(
    db: Database, settings: Settings, feed_id: int, url: str, floor: tuple[int, float]
) -> None:
    """The least any ingest pays, in parts. The validation: the feed read, validated and
    staged with no database (``before_writing``). The bare write: the feed's rows, ready in
    Python, written into a bare copy of the table (its primary and unique keys only, no
    other index, no foreign key, no comparison) the way the ingest writes (on SQLite, 200
    rows to a statement; on PostgreSQL, COPY). Then both at once, as a design that writes during the
    download would at best: on SQLite the driver holds the interpreter's lock while it
    binds each row, so the two take turns instead of overlapping. Each best of ROUNDS, as
    the floors are; by now the server has the edited feed (as many pledges)."""
    columns = ", ".join(PLEDGE_COLUMNS)
    validating = await before_writing(db, settings, url, "json")
    async with db.writer_engine.connect() as conn:
        rows = [
            # JSON as text, as the driver takes it back (asyncpg hands it over decoded).
            tuple(json.dumps(v) if isinstance(v, list) else v for v in r)
            for r in await conn.exec_driver_sql(
                f"SELECT {columns} FROM pledges "
                f"WHERE feed_id = {feed_id:d} AND withdrawn_at IS NULL"
            )
        ]
        # In the transaction the SELECT began, rolled back at the end: nothing stays.
        await conn.exec_driver_sql("CREATE TABLE bench_bare AS SELECT * FROM pledges WHERE 1 = 0")
        await conn.exec_driver_sql("CREATE UNIQUE INDEX bench_bare_key ON bench_bare (id)")
        await conn.exec_driver_sql(
            "CREATE UNIQUE INDEX bench_bare_source ON bench_bare (feed_id, source_id)"
        )

        async def write() -> None:
            if db.is_sqlite:  # as the ingest writes: 200 rows to a statement
                per = 200
                row = f"({', '.join('?' * len(PLEDGE_COLUMNS))})"
                flat = itertools.chain.from_iterable
                whole = len(rows) - len(rows) % per
                await conn.exec_driver_sql(
                    f"INSERT INTO bench_bare ({columns}) VALUES {', '.join([row] * per)}",
                    [tuple(flat(rows[at : at + per])) for at in range(0, whole, per)],
                )
                if whole < len(rows):
                    rest = ", ".join([row] * (len(rows) - whole))
                    await conn.exec_driver_sql(
                        f"INSERT INTO bench_bare ({columns}) VALUES {rest}",
                        tuple(flat(rows[whole:])),
                    )
            else:
                driver = (await conn.get_raw_connection()).driver_connection
                assert driver is not None
                await driver.copy_records_to_table(
                    "bench_bare", records=rows, columns=list(PLEDGE_COLUMNS)
                )

        async def timed_into_empty(*work: Awaitable[Any]) -> float:
            # TRUNCATE on PostgreSQL: no dead rows left behind for the keys to meet.
            empty = "DELETE FROM bench_bare" if db.is_sqlite else "TRUNCATE bench_bare"
            await conn.exec_driver_sql(empty)
            started = time.perf_counter()
            await asyncio.gather(*work)
            return time.perf_counter() - started

        writing = min([await timed_into_empty(write()) for _ in range(ROUNDS)])
        together = min(
            [
                await timed_into_empty(write(), before_writing(db, settings, url, "json", rounds=1))
                for _ in range(ROUNDS)
            ]
        )
        await conn.rollback()
    _, floor_s = floor
    print(f"  download and parse (the floor)                  {floor_s:6.2f} s")
    for label, seconds in (
        ("download, parse, validate, stage: no database", validating),
        (f"bare write of the same {len(rows):,} rows", writing),
        ("the two, one after the other", validating + writing),
        ("the two at once (writing during the download)", together),
    ):
        print(f"  {label:<47} {seconds:6.2f} s  at best {floor_s / seconds:4.2f}x the floor")


PLEDGE_COLUMNS = tuple(c.name for c in Pledge.__table__.columns)


async def timed(label: str, fn: Callable[[], Awaitable[Any]], rounds: int = 3) -> None:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        await fn()
        best = min(best, time.perf_counter() - started)
    print(f"  {label:<44} {best * 1000:8.1f} ms")


async def dashboards_on(db: Database, process_id: int) -> None:
    flt = dashboards.PledgeFilter(process_id=process_id)

    async def stats() -> None:
        async with db.reader() as session:
            await dashboards.stats(session, flt)

    async def stats_drilled() -> None:
        async with db.reader() as session:
            await dashboards.stats(
                session,
                dashboards.PledgeFilter(process_id=process_id, region="Africa", objective=5),
            )

    async def first_page() -> None:
        async with db.reader() as session:
            await dashboards.count(session, flt)
            list(await session.scalars(dashboards.list_query(flt).limit(100)))

    async def text_search() -> None:
        text_flt = dashboards.PledgeFilter(process_id=process_id, text="pledger 99")
        async with db.reader() as session:
            await dashboards.count(session, text_flt)
            list(await session.scalars(dashboards.list_query(text_flt).limit(100)))

    async def export() -> None:
        async with db.reader() as session:
            query = dashboards.csv_query(flt, db.writer_engine.dialect.name)
            result = await session.stream(query.execution_options(yield_per=1000))
            out = io.StringIO()
            writer = csv.writer(out)
            async for batch in result.partitions(1000):  # as the route writes them
                with collector_paused():
                    writer.writerows(map(dashboards.csv_cells, batch))
                    del batch
                out.seek(0)
                out.truncate()

    await timed("stats (every dimension, over time)", stats)
    await timed("stats, drilled (region + objective)", stats_drilled)
    await timed("list: first 100 + total", first_page)
    await timed("list: text search + total", text_search)
    await timed("CSV export of every pledge", export, rounds=1)


async def routes_on(settings: Settings, process_id: int) -> None:
    """The same answers over HTTP, as the app serves them (in this process, no network):
    the counts built once, then from the cache, then 304 for a client that holds them."""
    quiet = settings.replace(
        scheduler_enabled=False, log_level="warning", secret_key="bench-" + "k" * 32
    )
    app = create_app(quiet)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per request
    async with AsyncTestClient(app=app, base_url="http://127.0.0.1:8000") as client:
        stats_url = f"/api/pledges/stats?process_id={process_id}"
        await client.get("/health")  # the app's first request (cold) is not the stats'

        async def get(url: str, status: int = 200, **headers: str) -> httpx.Response:
            response = await client.get(url, headers=headers)
            assert response.status_code == status, (url, response.status_code)
            return response

        started = time.perf_counter()
        tag = (await get(stats_url)).headers["etag"]
        print(f"  {'GET stats, built':<44} {(time.perf_counter() - started) * 1000:8.1f} ms")
        await timed("GET stats, from the cache", lambda: get(stats_url))
        await timed(
            "GET stats, 304 (the client holds them)",
            lambda: get(stats_url, 304, **{"If-None-Match": tag}),
        )
        await timed("GET the dashboard page", lambda: get("/processes/json-paged/pledges"))
        await timed(
            "GET list: first 100 + total", lambda: get(f"/api/pledges?process_id={process_id}")
        )
        await timed(
            "GET CSV export of every pledge",
            lambda: get(f"/api/pledges/export.csv?process_id={process_id}"),
            rounds=1,
        )


def main(records: int, page_size: int, database: str, data_dir: Path) -> None:
    server, base = start_server(records, page_size)
    try:
        print(f"feed server {base}: {records:,} pledges, JSON pages of {page_size:,}")
        floors = measure_floors(base)
        print(f"peak RSS before the ingests: {peak_rss_mb():.0f} MB")
        best: dict[str, tuple[float, float | None]] = {}
        for round_ in range(1, ROUNDS + 1):
            # Each round's first ingests into a new database; the last one goes on.
            round_dir = data_dir / f"round-{round_}"
            round_dir.mkdir()
            with fresh_database(database, round_dir) as url:
                asyncio.run(
                    ingests(
                        url,
                        base,
                        records,
                        floors,
                        database,
                        round_dir,
                        lambda: edit_feed(server),
                        best,
                        last=round_ == ROUNDS,
                    )
                )
    finally:
        server.terminate()
        server.wait(timeout=30)


async def ingests(
    url: str,
    base: str,
    records: int,
    floors: dict[str, tuple[int, float]],
    database: str,
    data_dir: Path,
    edit: Callable[[], None],
    best: dict[str, tuple[float, float | None]],
    *,
    last: bool,
) -> None:
    """One round of first ingests (the best of each kept in ``best``); the last round
    prints them and goes on with the re-syncs, the dashboards and the least paid."""
    settings = Settings().replace(
        database_url=url,
        data_dir=data_dir,
        feeds_allowed_hosts="127.0.0.1",
        mail_enabled=False,
    )
    db = open_database(settings)
    try:
        await migrate(db.writer_engine)
        targets = {
            "json-paged": ("/pledges.json", "json"),
            "json-document": ("/all.json", "json"),
            "csv": ("/pledges.csv", "csv"),
        }
        feed_ids = {}
        for slug, (path, fmt) in targets.items():
            feed_ids[slug] = await add_feed(db, slug, base + path, fmt)
        for slug, feed_id in feed_ids.items():
            run, elapsed, applying = await ingest(db, settings, feed_id)
            assert run.new == floors[slug][0] == records, (run.new, floors[slug])
            if slug not in best or elapsed < best[slug][0]:
                best[slug] = (elapsed, applying)
        if not last:
            return
        print(
            f"\ningest into {database} ({'one writer' if db.is_sqlite else 'pool'}), "
            f"best of {ROUNDS} into new databases, as the floors are:"
        )
        print(
            f"  {'feed':<14} {'floor rec/s':>12} {'ingest rec/s':>13} {'ratio':>6} "
            f"{'ingest s':>9} {'of which writing':>17}"
        )
        for slug, (elapsed, applying) in best.items():
            count, floor_s = floors[slug]
            floor_rate, rate = count / floor_s, count / elapsed
            print(
                f"  {slug:<14} {floor_rate:12,.0f} {rate:13,.0f} {rate / floor_rate:5.2f}x "
                f"{elapsed:8.2f}s {applying or 0:16.2f}s"
            )
        print(f"peak RSS after the ingests: {peak_rss_mb():.0f} MB")
        print("\nunchanged re-sync:")
        for slug, feed_id in feed_ids.items():
            run, elapsed, _ = await ingest(db, settings, feed_id)
            how = (
                "304 Not Modified"
                if run.outcome == "not_modified"
                else f"200, {run.unchanged:,} unchanged (no validators kept)"
            )
            print(f"  {slug:<14} {elapsed * 1000:8.0f} ms  {how}")
        print("\nchanged re-sync (1% gone, 10% edited, 1% new):")
        edit()
        warm_server(base)
        print(
            f"  {'feed':<14} {'floor rec/s':>12} {'sync rec/s':>13} {'ratio':>6} "
            f"{'sync s':>9} {'of which writing':>17}  new/updated/unchanged/withdrawn"
        )
        for slug, feed_id in feed_ids.items():
            count, floor_s = floors[slug]
            run, elapsed, applying = await ingest(db, settings, feed_id)
            seen = run.new + run.updated + run.unchanged
            floor_rate, rate = count / floor_s, seen / elapsed
            print(
                f"  {slug:<14} {floor_rate:12,.0f} {rate:13,.0f} {rate / floor_rate:5.2f}x "
                f"{elapsed:8.2f}s {applying or 0:16.2f}s  "
                f"{run.new:,}/{run.updated:,}/{run.unchanged:,}/{run.withdrawn:,}"
            )
        print(f"peak RSS at the end of the syncs: {peak_rss_mb():.0f} MB")
        async with db.reader() as session:
            process_id = await session.scalar(
                select(Process.id).where(Process.slug == "json-paged")
            )
        assert process_id is not None
        note = ""
        if not db.is_sqlite:
            # What autovacuum leaves a minute later: index-only scans need the visibility map.
            async with db.writer_engine.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.exec_driver_sql("VACUUM (ANALYZE) pledges")
            note = " (after VACUUM ANALYZE, as autovacuum leaves them)"
        print(f"\ndashboards on {records:,} pledges of one process{note}:")
        await dashboards_on(db, process_id)
        print("\nthe same over HTTP (the app in this process):")
        await routes_on(settings, process_id)
        # Last: it holds every row in memory at once, which would count in the RSS above.
        print("\nthe least an ingest of json-paged pays:")
        await least_paid(
            db, settings, feed_ids["json-paged"], base + "/pledges.json", floors["json-paged"]
        )
    finally:
        await db.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--floors", metavar="BASE_URL", help=argparse.SUPPRESS)
    parser.add_argument("--warm", metavar="BASE_URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floors:
        asyncio.run(floors_here(args.floors))
        sys.exit(0)
    if args.warm:
        asyncio.run(warm_here(args.warm))
        sys.exit(0)
    with tempfile.TemporaryDirectory() as tmp:
        main(args.records, args.page_size, args.database, Path(tmp))
