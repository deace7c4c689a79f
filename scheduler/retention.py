"""The retention job: personal data of events over for ``retention_months`` is anonymised.

Once a day on every node; a PostgreSQL advisory lock (``job_locks``) lets one node work
while the others skip their turn, and the work is idempotent (already anonymised rows are
left alone), so a node running later finds nothing left. Batches keep each transaction
short on a large database.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from scheduler import audit, job_locks, privacy
from scheduler.clock import Clock
from scheduler.database import Database
from scheduler.models import utc_now

log = logging.getLogger("scheduler.retention")

JOB_ID = "retention"
BATCH = 1000


async def apply_retention(db: Database, months: int, now: datetime) -> int:
    """Anonymise what is past retention at ``now``; the number of registrations done."""
    cutoff = privacy.retention_cutoff(now, months)
    if cutoff is None:
        return 0
    done = 0
    while True:
        async with db.writer.begin() as session:
            audit.act_as(session, audit.RETENTION_PURGE)
            if not await job_locks.run_alone(session, JOB_ID):
                return done  # another node is on it
            count = await privacy.anonymise_ended(session, cutoff, now, BATCH)
        done += count
        if count < BATCH:
            break
    if done:
        log.info("retention: anonymised %d registrations of events over before %s", done, cutoff)
    return done


def schedule(clock: Clock, db: Database, months: int) -> None:
    """Run daily, the first time a few minutes after start; nothing to do with 0 months."""
    if months <= 0:
        return

    async def run() -> None:
        await apply_retention(db, months, utc_now())

    clock.scheduler.add_job(
        run,
        "interval",
        hours=24,
        next_run_time=utc_now() + timedelta(minutes=5),
        id=JOB_ID,
        replace_existing=True,
    )
