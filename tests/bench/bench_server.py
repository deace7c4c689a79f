"""The real app plus one naive baseline route, served by uvicorn, for the registration bench.

The baseline is what a first version would do: one ORM insert per request in its own
transaction, with no capacity check, no waiting list and no mail. The bench compares the
real registration route against it in the same server and the same run.

Run as ``python tests/bench/bench_server.py`` with the usual ``SCHEDULER_*`` variables.
"""

from __future__ import annotations

import msgspec
import uvicorn
from litestar import post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from scheduler.app import create_app
from scheduler.database import Database
from scheduler.manage_links import new_nonce
from scheduler.models import Event, Registration
from scheduler.registrations import RegistrationCreate
from scheduler.settings import load_settings


class NaiveReceipt(msgspec.Struct):
    id: int
    status: str


@post("/bench/naive/{event_id:int}/registrations", include_in_schema=False)
async def naive_register(
    db: NamedDependency[Database], event_id: FromPath[int], data: JSONBody[RegistrationCreate]
) -> NaiveReceipt:
    async with db.writer.begin() as session:
        event = await session.get(Event, event_id)
        assert event is not None
        reg = Registration(
            event_id=event_id,
            process_id=event.process_id,
            name=data.name,
            email=data.email.lower(),
            organisation=data.organisation,
            constituency=data.constituency,
            country=data.country,
            region=data.region,
            language=data.language,
            time_zone=data.time_zone,
            answers=data.answers,
            status="confirmed",
            token_nonce=new_nonce(),
        )
        session.add(reg)
        await session.flush()
        return NaiveReceipt(reg.id, reg.status)


def main() -> None:
    settings = load_settings()
    app = create_app(settings)
    app.register(naive_register)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
