"""What the audit trail costs: the same work with its listeners on and off, in one run.

Three paths on one migrated SQLite file, in process (no HTTP, so the listeners' share is
not hidden by the server's): a burst of registrations placed by the desk's
``register_many`` in batches of 200 (the public: nothing recorded), the outbox claiming a
wave of due messages (messages are not recorded), and an organizer changing the titles of
many events in one transaction (one entry each: the price of what the trail is for). Each
path runs ``--rounds`` times per mode, alternating, and keeps its best; the ratio on/off is
printed. Nothing is asserted.

    .venv/bin/python tests/bench/bench_audit.py [--people 4000] [--wave 4000] [--events 400]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import event, func, select, update

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scheduler import audit
from scheduler.database import Database, TrackedSession, open_database
from scheduler.models import AuditEntry, Event, Notification, Process, utc_now
from scheduler.outbox import claim_due, planned_row
from scheduler.registrations import RegistrationCreate, register_many
from scheduler.schema import migrate
from scheduler.settings import Settings

HOOKS = (("after_flush", audit.collect), ("before_commit", audit.write))
START = datetime.now(UTC) + timedelta(days=60)


def switch(on: bool) -> None:
    for name, hook in HOOKS:
        present = event.contains(TrackedSession, name, hook)
        if on and not present:
            event.listen(TrackedSession, name, hook)
        elif not on and present:
            event.remove(TrackedSession, name, hook)


async def seed(db: Database, events: int) -> tuple[int, list[int]]:
    async with db.writer.begin() as session:
        audit.act_as(session, audit.CLI)
        process = Process(slug="bench", name="Bench", time_zone="UTC", languages=["en"])
        session.add(process)
        await session.flush()
        rows = [
            Event(
                process_id=process.id,
                kind="stakeholder_hearing",
                title=f"Hearing {n}",
                time_zone="UTC",
                starts_at=START,
                ends_at=START + timedelta(hours=8),
                series_ends_at=START + timedelta(hours=8),
                status="published",
                capacity=None,
                confirmation_required=False,
            )
            for n in range(events + 1)
        ]
        session.add_all(rows)
        await session.flush()
        return rows[0].id, [r.id for r in rows[1:]]


async def registrations(db: Database, event_id: int, people: int, tag: str) -> None:
    for first in range(0, people, 200):
        batch = [
            (
                event_id,
                RegistrationCreate(
                    name=f"Person {tag} {n}",
                    email=f"{tag}-{n}@example.org",
                    constituency="civil_society",
                    country="KEN",
                    language="en",
                    time_zone="Africa/Nairobi",
                ),
            )
            for n in range(first, min(first + 200, people))
        ]
        async with db.writer.begin() as session:
            audit.act_as(session, audit.PUBLIC)
            await register_many(session, batch, utc_now(), timedelta(minutes=30))


async def wave(db: Database, size: int) -> None:
    now = utc_now()
    async with db.writer.begin() as session:
        await session.execute(update(Notification).values(status="sent"))
        rows = [
            planned_row(
                kind="registration_confirmed",
                recipient_email=f"w{n}@example.org",
                recipient_name="",
                language="en",
                time_zone="UTC",
                context={},
                now=now,
            )
            for n in range(size)
        ]
        await session.execute(Notification.__table__.insert(), rows)
    claimed = 0
    while claimed < size:
        async with db.writer.begin() as session:
            audit.act_as(session, audit.REMINDER_SWEEP)
            got = await claim_due(
                session,
                utc_now(),
                limit=500,
                lease_seconds=60,
                is_sqlite=True,
                mail_from="bench@example.org",
            )
        claimed += len(got)


async def retitle(db: Database, event_ids: list[int], tag: str) -> None:
    async with db.writer.begin() as session:
        audit.act_as(session, audit.CLI)
        for row in await session.scalars(select(Event).where(Event.id.in_(event_ids))):
            row.title = f"{row.title.split(' #')[0]} #{tag}"


async def best(rounds: int, work: Callable[[bool, int], Awaitable[None]]) -> dict[bool, float]:
    times: dict[bool, float] = {True: float("inf"), False: float("inf")}
    for n in range(rounds):
        for on in (False, True):
            switch(on)
            started = time.perf_counter()
            await work(on, n)
            times[on] = min(times[on], time.perf_counter() - started)
    switch(True)
    return times


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings().replace(
            database_url=f"sqlite+aiosqlite:///{folder}/bench.db", data_dir=Path(folder)
        )
        db = open_database(settings)
        try:
            await migrate(db.writer_engine)
            hearing, others = await seed(db, args.events)
            results = {
                f"registrations ({args.people} in batches of 200)": await best(
                    args.rounds,
                    lambda on, n: registrations(db, hearing, args.people, f"{on}{n}"),
                ),
                f"outbox claims a wave of {args.wave}": await best(
                    args.rounds, lambda on, n: wave(db, args.wave)
                ),
                f"organizer retitles {args.events} events (one entry each)": await best(
                    args.rounds, lambda on, n: retitle(db, others, f"{on}{n}")
                ),
            }
            async with db.reader() as session:
                entries = await session.scalar(select(func.count()).select_from(AuditEntry))
        finally:
            await db.dispose()
    print(f"audit listeners on vs off (best of {args.rounds}, SQLite, in process)")
    for label, t in results.items():
        print(
            f"  {label:58s} off {t[False] * 1000:8.1f} ms  on {t[True] * 1000:8.1f} ms"
            f"  ratio on/off = {t[True] / t[False]:.2f}"
        )
    print(f"  audit entries written: {entries:,}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--people", type=int, default=4000)
    parser.add_argument("--wave", type=int, default=4000)
    parser.add_argument("--events", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main_async(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
