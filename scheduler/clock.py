"""The clock: APScheduler 3.11 in the app's event loop.

It holds no business state. Jobs are plain functions that read and write database rows;
whatever is due can always be rebuilt from the rows at start.
"""

from __future__ import annotations

from datetime import datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from scheduler.models import utc_now


class Clock:
    def __init__(self) -> None:
        self.scheduler = AsyncIOScheduler(
            timezone="UTC",
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600},
        )
        self.last_tick: datetime | None = None

    def start(self) -> None:
        self.scheduler.add_job(
            self._tick, "interval", seconds=30, id="heartbeat", replace_existing=True
        )
        self.scheduler.start()
        self.last_tick = utc_now()

    async def _tick(self) -> None:
        self.last_tick = utc_now()

    @property
    def running(self) -> bool:
        return bool(self.scheduler.running)

    def shutdown(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
