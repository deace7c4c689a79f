"""What announcing registrations to a webhook costs the burst path, against the same path
without one, in the same run.

Two processes with one event each; one process has a webhook subscribed to
registration.created. Batches of ``--batch`` registrations go through ``register_many`` (the
registration desk's one transaction per batch), alternating between the two events, and the
median batch times are compared. Without a webhook the emission costs one indexed query per
batch; with one, each registration also gets a delivery row in one multi-row INSERT.

Goal (printed, never asserted): with a webhook, a batch takes at most 1.25x as long.

    .venv/bin/python tests/bench/bench_webhook_emission.py [--database sqlite|postgres]
        [--batch 200] [--rounds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sqlalchemy import func, select

from scheduler import webhooks
from scheduler.database import Database, open_database
from scheduler.models import Event, Process, WebhookDelivery
from scheduler.registrations import RegistrationCreate, register_many
from scheduler.schema import migrate
from scheduler.settings import Settings
from tests.live_server import fresh_database


async def seed(db: Database, now: datetime) -> dict[str, int]:
    """An event per process, and a webhook on the second process; event ids by name."""
    events = {}
    async with db.writer.begin() as session:
        for slug in ("without", "with"):
            process = Process(slug=slug, name=slug, time_zone="UTC")
            session.add(process)
            await session.flush()
            start = now + timedelta(days=30)
            event = Event(
                process_id=process.id,
                kind="stakeholder_hearing",
                title="Hearing",
                time_zone="UTC",
                starts_at=start,
                ends_at=start + timedelta(hours=8),
                series_ends_at=start + timedelta(hours=8),
                status="published",
                capacity=1000,
                confirmation_required=False,
            )
            session.add(event)
            await session.flush()
            events[slug] = event.id
            if slug == "with":
                url = "http://127.0.0.1:9/hook"  # never sent: only planned
                data = webhooks.WebhookCreate(url=url, event_types=["registration.created"])
                await webhooks.create_webhook(session, process.id, data, url, None, now)
    return events


async def run(url: str, data_dir: Path, batch: int, rounds: int) -> dict[str, float]:
    db = open_database(Settings().replace(database_url=url, data_dir=data_dir))
    try:
        await migrate(db.writer_engine)
        events = await seed(db, datetime.now(UTC))
        times: dict[str, list[float]] = {name: [] for name in events}
        made = 0
        for round_ in range(rounds + 1):  # the first round warms up (statement caches)
            for name, event_id in events.items():
                requests = []
                for _ in range(batch):
                    made += 1
                    person = RegistrationCreate(
                        name=f"Person {made}",
                        email=f"person{made}@example.org",
                        constituency="civil_society",
                        country="KEN",
                        language="en",
                        time_zone="Africa/Nairobi",
                    )
                    requests.append((event_id, person))
                started = time.perf_counter()
                async with db.writer.begin() as session:
                    await register_many(session, requests, datetime.now(UTC), timedelta(hours=1))
                if round_:
                    times[name].append(time.perf_counter() - started)
        async with db.reader() as session:
            planned = await session.scalar(select(func.count()).select_from(WebhookDelivery))
        assert planned == batch * (rounds + 1), planned
        return {name: statistics.median(values) for name, values in times.items()}
    finally:
        await db.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fs-bench-webhooks-"))
    try:
        with fresh_database(args.database, tmp) as url:
            median = asyncio.run(run(url, tmp, args.batch, args.rounds))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratio = median["with"] / median["without"]
    print(
        f"webhook emission bench ({args.database}, median of {args.rounds} batches of {args.batch})"
    )
    print(f"  without a webhook : {median['without'] * 1000:7.1f} ms a batch")
    print(f"  with a webhook    : {median['with'] * 1000:7.1f} ms a batch")
    print(
        f"  ratio with/without = {ratio:.2f} (goal <= 1.25): {'MET' if ratio <= 1.25 else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
