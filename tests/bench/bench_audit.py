"""What the audit trail costs: the same work with its listeners on and off, in one run.

Three paths on one migrated SQLite file, in process (no HTTP, so the listeners' share is
not hidden by the server's): a burst of registrations placed by the desk's
``register_many`` in batches of 200 (the public: nothing recorded), the outbox claiming a
wave of due messages (messages are not recorded), and an organizer changing the titles of
many events in one transaction (one entry each: the price of what the trail is for). Each
path runs ``--rounds`` times per mode, alternating which mode goes first, each time on
fresh rows (its own event; a wave inserted before the clock starts), and keeps its best;
the ratio on/off is printed. Nothing is asserted.

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
from typing import Any

from sqlalchemy import event, func, select, update

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scheduler import audit
from scheduler.database import Database, TrackedSession, open_database
from scheduler.models import AuditEntry, Event, Notification, Process, utc_now
from scheduler.outbox import claim_due, planned_row
from scheduler.registrations import RegistrationCreate, register_many
from scheduler.schema import migrate
from scheduler.settings import Settings

HOOK_SECONDS = [0.0]  # time spent inside the audit hooks, the listeners' own cost


def _timed(hook: Callable[..., None]) -> Callable[..., None]:
    def run(*args: Any) -> None:
        started = time.perf_counter()
        try:
            hook(*args)
        finally:
            HOOK_SECONDS[0] += time.perf_counter() - started

    return run


_write = _timed(audit.write)


def _write_after_flush(session: Any) -> None:
    session.flush()  # the commit's own flush, not the trail's cost (its collect is timed)
    _write(session)


HOOKS = (("after_flush", _timed(audit.collect)), ("before_commit", _write_after_flush))
START = datetime.now(UTC) + timedelta(days=60)


def switch(on: bool) -> None:
    for name, hook in (("after_flush", audit.collect), ("before_commit", audit.write)):
        if event.contains(TrackedSession, name, hook):  # the app's own, untimed
            event.remove(TrackedSession, name, hook)
    for name, hook in HOOKS:
        present = event.contains(TrackedSession, name, hook)
        if on and not present:
            event.listen(TrackedSession, name, hook)
        elif not on and present:
            event.remove(TrackedSession, name, hook)


async def seed(db: Database, events: int, hearings: int) -> tuple[list[int], list[int]]:
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
            for n in range(events + hearings)
        ]
        session.add_all(rows)
        await session.flush()
        return [r.id for r in rows[:hearings]], [r.id for r in rows[hearings:]]


async def registrations(db: Database, event_id: int, people: int, tag: str) -> float:
    started = time.perf_counter()
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
    return time.perf_counter() - started


async def wave(db: Database, size: int) -> float:
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
    started = time.perf_counter()
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
    return time.perf_counter() - started


async def retitle(db: Database, event_ids: list[int], tag: str) -> float:
    started = time.perf_counter()
    async with db.writer.begin() as session:
        audit.act_as(session, audit.CLI)
        for row in await session.scalars(select(Event).where(Event.id.in_(event_ids))):
            row.title = f"{row.title.split(' #')[0]} #{tag}"
    return time.perf_counter() - started


async def best(
    rounds: int, work: Callable[[bool, int], Awaitable[float]]
) -> tuple[dict[bool, float], float]:
    """Each mode's best time (the mode that goes first alternates from round to round), and
    the share of the "on" runs' time spent inside the hooks themselves."""
    times: dict[bool, float] = {True: float("inf"), False: float("inf")}
    total = hooks = 0.0
    for n in range(rounds):
        for on in (False, True) if n % 2 == 0 else (True, False):
            switch(on)
            HOOK_SECONDS[0] = 0.0
            elapsed = await work(on, n)
            times[on] = min(times[on], elapsed)
            if on:
                total, hooks = total + elapsed, hooks + HOOK_SECONDS[0]
    return times, hooks / total


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings().replace(
            database_url=f"sqlite+aiosqlite:///{folder}/bench.db", data_dir=Path(folder)
        )
        db = open_database(settings)
        try:
            await migrate(db.writer_engine)
            hearings, others = await seed(db, args.events, 2 * args.rounds)
            results = {
                f"registrations ({args.people} in batches of 200)": await best(
                    args.rounds,
                    lambda on, n: registrations(db, hearings[2 * n + on], args.people, f"{on}{n}"),
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
    for label, (t, share) in results.items():
        print(
            f"  {label:58s} off {t[False] * 1000:8.1f} ms  on {t[True] * 1000:8.1f} ms"
            f"  ratio on/off = {t[True] / t[False]:.2f}  in the hooks: {share:.1%}"
        )
    print("  (on a busy machine the ratios wander; the hooks' share is their own cost)")
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
