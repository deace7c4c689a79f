"""The registration desk: new registrations are placed in batches, one transaction each.

Under a burst (a hearing opening its registration), every request would otherwise pay for
its own transaction on the single SQLite writer. The desk queues requests and places all
that are waiting in one transaction: the event is locked once, counts are read once, rows
are inserted together and committed once. Answers are given only after the commit. If a
batch fails as a whole (a lost race with another node, a dropped connection), each request
is tried again alone, so one bad request never fails its neighbours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from scheduler import audit
from scheduler.database import Database
from scheduler.models import utc_now
from scheduler.registrations import Receipt, RegistrationCreate, register_many

log = logging.getLogger("scheduler.registration_desk")


@dataclass
class _Request:
    event_id: int
    data: RegistrationCreate
    answer: asyncio.Future[Receipt] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class RegistrationDesk:
    def __init__(
        self,
        db: Database,
        hold: timedelta,
        *,
        max_batch: int = 200,
        after_commit: Callable[[], None] | None = None,
    ) -> None:
        self._db = db
        self._hold = hold
        self._max_batch = max_batch
        self._after_commit = after_commit
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="registration-desk")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def register(self, event_id: int, data: RegistrationCreate) -> Receipt:
        """Place one registration; raises the domain error that refuses it, if any."""
        if self._task is None or self._task.done():
            raise RuntimeError("the registration desk is not running")
        request = _Request(event_id, data)
        await self._queue.put(request)
        return await request.answer

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._place(batch)
            except Exception:
                log.exception("registration batch failed; placing each request alone")
                for request in batch:
                    if request.answer.done():
                        continue
                    try:
                        await self._place([request])
                    except Exception as exc:  # answered as a 503 by the handler
                        if not request.answer.done():
                            request.answer.set_exception(exc)

    async def _place(self, batch: list[_Request]) -> None:
        async with self._db.writer.begin() as session:
            audit.act_as(session, audit.PUBLIC)  # people registering themselves
            results = await register_many(
                session, [(r.event_id, r.data) for r in batch], utc_now(), self._hold
            )
        if self._after_commit is not None:
            self._after_commit()
        for request, result in zip(batch, results, strict=True):
            if request.answer.done():  # the client went away
                continue
            if isinstance(result, Exception):
                request.answer.set_exception(result)
            else:
                request.answer.set_result(result)
