"""The Litestar application, built from one Settings object."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from scheduler import __version__
from scheduler.api_calendars import CalendarController
from scheduler.api_events import EventController
from scheduler.api_health import health
from scheduler.api_milestones import MilestoneController
from scheduler.api_processes import ProcessController, TemplateController
from scheduler.auth import provide_organizer
from scheduler.clock import Clock
from scheduler.cycle_templates import Template, load_templates
from scheduler.database import Database, open_database
from scheduler.errors import EXCEPTION_HANDLERS
from scheduler.settings import Settings


def create_app(settings: Settings) -> Litestar:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s %(message)s"
    )
    db = open_database(settings)
    templates = load_templates(settings.templates_dir)
    clock = Clock() if settings.scheduler_enabled else None

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        if clock is not None:
            clock.start()
        try:
            yield
        finally:
            if clock is not None:
                clock.shutdown()
            await db.dispose()

    def provide_db(state: State) -> Database:
        database: Database = state.db
        return database

    def provide_clock(state: State) -> Clock | None:
        value: Clock | None = state.clock
        return value

    def provide_templates(state: State) -> dict[str, Template]:
        value: dict[str, Template] = state.templates
        return value

    def provide_base_url(state: State) -> str:
        value: str = state.settings.public_base_url
        return value

    dependencies: dict[str, Any] = {
        "db": Provide(provide_db, sync_to_thread=False),
        "clock": Provide(provide_clock, sync_to_thread=False),
        "templates": Provide(provide_templates, sync_to_thread=False),
        "base_url": Provide(provide_base_url, sync_to_thread=False),
        "organizer": Provide(provide_organizer),
    }
    return Litestar(
        route_handlers=[
            health,
            ProcessController,
            TemplateController,
            EventController,
            MilestoneController,
            CalendarController,
        ],
        dependencies=dependencies,
        state=State({"settings": settings, "db": db, "clock": clock, "templates": templates}),
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Forum Scheduler",
            version=__version__,
            description="Plans review cycles: processes, events, milestones, calendars.",
            path="/schema",
            components=Components(
                security_schemes={
                    "organizerToken": SecurityScheme(
                        type="http",
                        scheme="bearer",
                        description="Organizer token from `scheduler organizer create`.",
                    )
                }
            ),
            security=[{}, {"organizerToken": []}],
        ),
        debug=False,
    )
