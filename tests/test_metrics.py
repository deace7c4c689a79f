"""GET /metrics: well-formed Prometheus text, counting requests, mail and reminder lateness.

Runs the whole app on SQLite and on PostgreSQL. The counters live in the process, so each
test compares values before and after what it does.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from litestar.testing import AsyncTestClient

from scheduler import metrics
from scheduler.app import create_app
from scheduler.models import Notification
from scheduler.reminders import DIGEST_KIND, REMINDER_KINDS
from scheduler.settings import Settings
from tests.conftest import Api

_SAMPLE = re.compile(r'^[a-z_:][a-z0-9_:]*(\{([a-z_]+="(\\.|[^"\\])*",?)*\})? [-+0-9.eInf]+$')


def parse(text: str) -> dict[str, float]:
    """Samples by their full name with labels; fails on any malformed line."""
    samples: dict[str, float] = {}
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if line.startswith("# HELP "):
            continue
        assert _SAMPLE.match(line), f"malformed sample line: {line!r}"
        name, value = line.rsplit(" ", 1)
        family = re.sub(r"_(bucket|sum|count)$", "", name.split("{", 1)[0])
        assert family in typed or name.split("{", 1)[0] in typed, f"no TYPE before {line!r}"
        samples[name] = float(value)
    return samples


async def scrape(api: Api) -> dict[str, float]:
    r = await api.client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(r.text)


async def test_requests_are_counted_by_route_template(api: Api) -> None:
    before = await scrape(api)
    for _ in range(3):
        assert (await api.client.get("/api/processes")).status_code == 200
    assert (await api.client.get("/api/events/987654")).status_code == 404
    after = await scrape(api)

    ok = 'scheduler_http_requests_total{route="/api/processes",method="GET",status="200"}'
    missing = (
        'scheduler_http_requests_total{route="/api/events/{event_id}",method="GET",status="404"}'
    )
    assert after[ok] - before.get(ok, 0) == 3
    assert after[missing] - before.get(missing, 0) == 1
    labels = 'route="/api/processes",method="GET"'
    count = f"scheduler_http_request_duration_seconds_count{{{labels}}}"
    inf = f'scheduler_http_request_duration_seconds_bucket{{{labels},le="+Inf"}}'
    assert after[count] - before.get(count, 0) == 3
    assert after[inf] == after[count]
    assert after["scheduler_outbox_due"] >= 0
    assert after['scheduler_info{version="0.1.0"}'] == 1


async def test_delivered_mail_is_counted(api: Api) -> None:
    auth = api.auth
    r = await api.client.post(
        "/api/processes",
        json={"slug": "metrics", "name": "Metrics", "time_zone": "UTC"},
        headers=auth,
    )
    start = datetime.now(UTC) + timedelta(days=20)
    r = await api.client.post(
        "/api/events",
        json={
            "process_id": r.json()["id"],
            "kind": "consultation",
            "title": "Consultation",
            "time_zone": "UTC",
            "start": start.isoformat(),
            "end": (start + timedelta(hours=2)).isoformat(),
            "status": "published",
            "capacity": 10,
            "confirmation_required": False,
        },
        headers=auth,
    )
    assert r.status_code == 201, r.text
    sent = 'scheduler_mail_sent_total{kind="registration_confirmed"}'
    before = (await scrape(api)).get(sent, 0)
    r = await api.client.post(
        f"/api/events/{r.json()['id']}/registrations",
        json={
            "name": "Amina",
            "email": "amina@example.org",
            "constituency": "civil_society",
            "country": "KEN",
            "language": "en",
            "time_zone": "Africa/Nairobi",
        },
    )
    assert r.status_code == 201, r.text
    for _ in range(300):
        page = await api.client.get("/api/notifications", params={"status": "sent"}, headers=auth)
        if page.json()["items"]:
            break
        await asyncio.sleep(0.05)
    assert [n["kind"] for n in page.json()["items"]] == ["registration_confirmed"]
    assert (await scrape(api))[sent] - before == 1


def test_reminder_lateness_and_failures() -> None:
    """What the outbox hook records for each result (outbox._record calls it)."""
    assert frozenset((*REMINDER_KINDS, DIGEST_KIND)) == metrics.LATE_KINDS
    now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    late = metrics.reminder_lateness.count(kind="event_reminder")
    sent = metrics.mail_sent.value(kind="event_reminder")
    failed = metrics.mail_failed.value(kind="waitlisted")
    note = Notification(kind="event_reminder", status="sent", due_at=now - timedelta(seconds=42))
    metrics.mail_result(note, now)
    metrics.mail_result(Notification(kind="waitlisted", status="failed", due_at=now), now)
    metrics.mail_result(Notification(kind="waitlisted", status="planned", due_at=now), now)
    assert metrics.reminder_lateness.count(kind="event_reminder") == late + 1
    assert metrics.mail_sent.value(kind="event_reminder") == sent + 1
    assert metrics.mail_failed.value(kind="waitlisted") == failed + 1
    samples = parse(metrics.render(None))
    le60 = 'scheduler_reminder_lateness_seconds_bucket{kind="event_reminder",le="60"}'
    le30 = 'scheduler_reminder_lateness_seconds_bucket{kind="event_reminder",le="30"}'
    assert samples[le60] - samples[le30] >= 1  # 42 s late falls in the (30, 60] bucket


def test_label_values_are_escaped() -> None:
    counter = metrics.Counter("t_total", "Test.", ("route",))
    counter.inc(route='/a"b\\c\nd')
    assert 't_total{route="/a\\"b\\\\c\\nd"} 1' in list(counter.render())


async def test_metrics_can_be_switched_off(settings: Settings, tmp_path: Path) -> None:
    app = create_app(settings.replace(metrics_enabled=False))
    async with AsyncTestClient(app=app) as client:
        assert (await client.get("/metrics")).status_code == 404
        assert (await client.get("/health")).status_code == 200
