"""The Litestar application, built from one Settings object."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from litestar import Litestar
from litestar.datastructures import CacheControlHeader, State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.routes import HTTPRoute
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from scheduler import __version__, audit, job_locks, logs, metrics, retention
from scheduler.answer_cache import AnswerCache
from scheduler.api_audit import AuditController
from scheduler.api_calendars import CalendarController
from scheduler.api_events import EventController
from scheduler.api_feeds import FeedController
from scheduler.api_health import health
from scheduler.api_members import MemberController
from scheduler.api_milestones import MilestoneController
from scheduler.api_notifications import NotificationController
from scheduler.api_pledges import PledgeController, cached_stats
from scheduler.api_privacy import PrivacyController
from scheduler.api_processes import ProcessController, TemplateController
from scheduler.api_registrations import RegistrationController
from scheduler.api_reminder_policies import ReminderPolicyController
from scheduler.api_speakers import SpeakerController
from scheduler.api_subscriptions import SubscriptionController, SubscriptionPages
from scheduler.api_tokens import TokenController
from scheduler.api_webhooks import WebhookController
from scheduler.auth import provide_caller
from scheduler.clock import Clock
from scheduler.cycle_templates import Template, load_templates
from scheduler.database import Database, open_database
from scheduler.errors import EXCEPTION_HANDLERS
from scheduler.fields import check_parameters
from scheduler.mail import make_sender
from scheduler.manage_links import load_secret
from scheduler.models import utc_now
from scheduler.outbox import OutboxWorker
from scheduler.pages import PublicPages, RegistrationPages
from scheduler.pages_common import STATIC_DIR, register_helpers
from scheduler.pages_organizer import organizer_router
from scheduler.pages_pledges import PledgePages
from scheduler.pledge_feed import FeedRunner
from scheduler.pledges import PledgeFilter
from scheduler.rate_limits import RateLimits
from scheduler.registration_desk import RegistrationDesk
from scheduler.registrations import expire_holds
from scheduler.security_headers import add_security_headers
from scheduler.settings import Settings
from scheduler.webhook_delivery import WebhookChannel

TEMPLATES = Path(__file__).resolve().parent / "templates"


def resolve_dependencies_in_turn(app: Litestar) -> None:
    """Have every route resolve its dependencies one after another, never in a task group.

    Litestar resolves the dependencies that do not depend on each other (``db`` and
    ``worker``, say) together, in an anyio task group: two tasks spawned and awaited per
    request, some 55 microseconds, a third of a cached ``GET /api/events``, to return
    objects that already exist. Ours are such providers, or one query (``organizer``) that
    depends on ``db`` anyway, so running them in turn loses nothing. The batches keep their
    order, so a dependency still comes after those it takes. Called at startup, after every
    route is registered.
    """
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            for _, kwargs_model in route.route_handler_map.values():
                batches = kwargs_model.dependency_batches
                kwargs_model.dependency_batches = [{d} for batch in batches for d in batch]


def create_app(settings: Settings) -> Litestar:
    logs.configure(settings.log_level, settings.log_format)
    if not settings.is_sqlite and not settings.secret_key:
        logging.getLogger("scheduler.app").warning(
            "secret_key is empty: links signed here fail on other nodes; set one for a cluster"
        )
    db = open_database(settings)
    templates = load_templates(settings.templates_dir)
    secret = load_secret(settings.secret_key, settings.data_dir)
    clock = Clock() if settings.scheduler_enabled else None
    webhooks = WebhookChannel(db, settings) if settings.webhooks_enabled else None
    worker = OutboxWorker(
        db, make_sender(settings), settings, secret, settings.public_base_url, webhooks
    )
    hold = timedelta(minutes=settings.registration_hold_minutes)
    desk = RegistrationDesk(db, hold, after_commit=worker.kick)
    answers = AnswerCache()

    async def count_pledges_again(process_id: int) -> None:
        """A sync changed these pledges: their dashboard counts are built now, in the
        sync, so that the first viewer after it does not wait for them."""
        await cached_stats(db, answers, PledgeFilter(process_id=process_id))

    feed_runner = FeedRunner(
        db, settings, after_commit=worker.kick, after_change=count_pledges_again
    )
    rate_limits = RateLimits(
        settings.rate_limits_per_ip,
        settings.rate_limits_per_email,
        settings.rate_limits_window_seconds,
    )

    async def release_expired_holds() -> None:
        async with db.writer.begin() as session:
            audit.act_as(session, audit.EXPIRE_HOLDS)
            if not await job_locks.run_alone(session, "expire-holds"):
                return  # another node is releasing them right now
            released = await expire_holds(session, utc_now(), hold)
        if released:
            worker.kick()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        resolve_dependencies_in_turn(app)
        desk.start()
        worker.start()
        if clock is not None:
            worker.schedule(clock)
            if webhooks is not None:
                webhooks.schedule(clock)
            feed_runner.schedule(clock)
            retention.schedule(clock, db, settings.retention_months)
            clock.scheduler.add_job(
                release_expired_holds,
                "interval",
                seconds=60,
                id="expire-holds",
                replace_existing=True,
            )
            clock.start()
        # Everything built so far lives as long as the server: the garbage collector's full
        # passes, which stopped every request for 65-155 ms (tests/bench/bench_events.py),
        # skip it from now on. Unfrozen at shutdown, so that tests starting many apps leak
        # nothing.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            if clock is not None:
                clock.shutdown()
            await desk.stop()
            await worker.stop()
            await db.dispose()

    # Providers close over the objects instead of reading them from ``state``: a provider
    # that takes ``state`` gets a new State built for it on every request.
    def provide_db() -> Database:
        return db

    def provide_clock() -> Clock | None:
        return clock

    def provide_templates() -> dict[str, Template]:
        return templates

    def provide_base_url() -> str:
        return settings.public_base_url

    def provide_answers() -> AnswerCache:
        return answers

    def provide_feed_runner() -> FeedRunner:
        return feed_runner

    def provide_rate_limits() -> RateLimits:
        return rate_limits

    def provide_settings() -> Settings:
        return settings

    def provide_desk() -> RegistrationDesk:
        return desk

    def provide_worker() -> OutboxWorker:
        return worker

    def provide_secret() -> bytes:
        return secret

    dependencies: dict[str, Any] = {
        "settings": Provide(provide_settings, sync_to_thread=False),
        # Not "answers": a dependency's name must not be a body field's (registrations have
        # "answers"), or Litestar takes a bad value there for a server error (500).
        "answer_cache": Provide(provide_answers, sync_to_thread=False),
        "feed_runner": Provide(provide_feed_runner, sync_to_thread=False),
        "rate_limits": Provide(provide_rate_limits, sync_to_thread=False),
        "desk": Provide(provide_desk, sync_to_thread=False),
        "worker": Provide(provide_worker, sync_to_thread=False),
        "secret": Provide(provide_secret, sync_to_thread=False),
        "db": Provide(provide_db, sync_to_thread=False),
        "clock": Provide(provide_clock, sync_to_thread=False),
        "templates": Provide(provide_templates, sync_to_thread=False),
        "base_url": Provide(provide_base_url, sync_to_thread=False),
        "caller": Provide(provide_caller),
    }
    return Litestar(
        route_handlers=[
            health,
            ProcessController,
            MemberController,
            TokenController,
            TemplateController,
            EventController,
            MilestoneController,
            CalendarController,
            RegistrationController,
            SpeakerController,
            NotificationController,
            RegistrationPages,
            PublicPages,
            PledgePages,
            organizer_router(secret),
            create_static_files_router(
                path="/static",
                directories=[STATIC_DIR],
                # URLs carry the file's hash (pages_common.static_url): safe to keep a year.
                cache_control=CacheControlHeader(max_age=31_536_000, public=True),
                include_in_schema=False,
            ),
            FeedController,
            PledgeController,
            ReminderPolicyController,
            SubscriptionController,
            SubscriptionPages,
            PrivacyController,
            AuditController,
            WebhookController,
            *([metrics.metrics_page] if settings.metrics_enabled else []),
        ],
        middleware=[audit.request_context, metrics.http_metrics],
        # Ids past 32 bits and NUL characters in the URL are refused before any handler runs.
        guards=[check_parameters],
        before_send=[add_security_headers(settings.public_base_url)],
        dependencies=dependencies,
        state=State(
            {
                "settings": settings,
                "db": db,
                "clock": clock,
                "templates": templates,
                "secret": secret,
                "worker": worker,
                "desk": desk,
            }
        ),
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        request_max_body_size=settings.max_body_bytes,
        template_config=TemplateConfig(
            directory=TEMPLATES, engine=JinjaTemplateEngine, engine_callback=register_helpers
        ),
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
                        description="An organizer's API token: the first from `scheduler "
                        "organizer create`, more from POST /api/tokens (optionally scoped to "
                        "one process, or read-only).",
                    )
                }
            ),
            security=[{}, {"organizerToken": []}],
        ),
        debug=False,
    )
