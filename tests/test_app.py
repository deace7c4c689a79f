"""How the app is put together for speed (scheduler/app.py): dependencies resolved in turn,
and the startup heap kept out of the garbage collector's full passes while serving.
"""

from __future__ import annotations

import gc

from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient

from scheduler.app import create_app
from scheduler.settings import Settings
from tests.conftest import Api


async def test_every_route_resolves_its_dependencies_one_at_a_time(api: Api) -> None:
    several = 0
    for route in api.client.app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler, kwargs_model in route.route_handler_map.values():
            batches = kwargs_model.dependency_batches
            assert all(len(batch) == 1 for batch in batches), handler
            several += len(batches) > 1
    assert several > 50  # most routes take several (db, organizer, worker, ...)
    # And a route with several still gets each of them: db, organizer and answer_cache.
    assert (await api.client.get("/api/events", headers=api.auth)).status_code == 200
    assert (await api.client.get("/api/events")).status_code == 200


async def test_startup_freezes_the_heap_and_shutdown_thaws_it(settings: Settings) -> None:
    app = create_app(settings)
    async with AsyncTestClient(app=app) as client:
        assert gc.get_freeze_count() > 0
        assert (await client.get("/health")).status_code == 200
    assert gc.get_freeze_count() == 0  # nothing of this app stays out of collection
