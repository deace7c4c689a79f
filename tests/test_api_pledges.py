"""Feeds and pledge dashboards over the HTTP API, on SQLite and PostgreSQL.

Feeds belong to the organizers of their process, and their auth header never comes back
in any answer. Pledges are public: the list's filters, the counts and the CSV export are
checked against the same records counted here in Python.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from scheduler.database import open_database
from scheduler.models import Feed, Organizer, utc_now
from scheduler.pledges import field_paths, validate_record
from scheduler.settings import Settings
from tests.conftest import Api, base_settings
from tests.feed_server import FeedServer, pledge

SECRET = "k3y-that-must-never-be-echoed"
FORMULA = '=HYPERLINK("http://evil.example","click")'


def records() -> list[dict[str, Any]]:
    rows = [pledge(i) for i in range(60)]
    rows[10] = pledge(10, title=FORMULA)
    rows[11] = pledge(11, title="Fund 100% of the_costs", pledger_name="Ministry of Labour")
    return rows


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return base_settings(database_url, tmp_path).replace(
        feeds_allowed_hosts="127.0.0.1",
        feeds_retry_base_ms=10,
        mail_sweep_seconds=1,
    )


@pytest.fixture
def server() -> Iterator[FeedServer]:
    with FeedServer(records(), page_size=25) as s:
        yield s


async def make_process(api: Api, slug: str = "gcm") -> int:
    r = await api.client.post(
        "/api/processes",
        json={"slug": slug, "name": "GCM review", "time_zone": "UTC"},
        headers=api.auth,
    )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def feed_body(process_id: int, url: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "process_id": process_id,
        "name": "gcm-pledges",
        "url": url,
        "format": "json",
        "interval_seconds": 3600,
        "auth_header": {"name": "Authorization", "value": f"Bearer {SECRET}"},
    }
    body.update(changes)
    return body


async def make_feed(api: Api, process_id: int, url: str, **changes: Any) -> dict[str, Any]:
    r = await api.client.post(
        "/api/feeds", json=feed_body(process_id, url, **changes), headers=api.auth
    )
    assert r.status_code == 201, r.text
    assert SECRET not in r.text
    return dict(r.json())


async def synced(api: Api, feed_id: int) -> dict[str, Any]:
    r = await api.client.post(f"/api/feeds/{feed_id}/sync", headers=api.auth)
    assert r.status_code == 200, r.text
    assert SECRET not in r.text
    return dict(r.json())


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def refused(r: Any, status: int = 400) -> str:
    assert r.status_code == status, r.text
    return str(r.json()["extra"][0]["key"])


# --- Feeds --------------------------------------------------------------------------------


async def test_feeds_belong_to_the_organizers_of_their_process(
    api: Api, server: FeedServer
) -> None:
    pid = await make_process(api)
    body = feed_body(pid, server.url("/pledges.json"))
    assert (await api.client.post("/api/feeds", json=body)).status_code == 401
    other = {"Authorization": f"Bearer {await api.new_token()}"}
    assert (await api.client.post("/api/feeds", json=body, headers=other)).status_code == 403

    feed = await make_feed(api, pid, server.url("/pledges.json"))
    assert feed["auth_header_name"] == "Authorization" and feed["has_auth_header"] is True
    assert feed["running"] is False and feed["last_run"] is None and feed["next_run_at"]
    fid = feed["id"]

    for method, path in (
        ("GET", f"/api/feeds/{fid}"),
        ("PATCH", f"/api/feeds/{fid}"),
        ("POST", f"/api/feeds/{fid}/sync"),
        ("GET", f"/api/feeds/{fid}/runs"),
        ("GET", f"/api/feeds/{fid}/quarantine"),
        ("DELETE", f"/api/feeds/{fid}"),
    ):
        kw: dict[str, Any] = {"json": {"enabled": False}} if method == "PATCH" else {}
        assert (await api.client.request(method, path, **kw)).status_code == 401, path
        r = await api.client.request(method, path, headers=other, **kw)
        assert r.status_code == 404, (path, r.text)  # another process's feeds are hidden
    assert (await api.client.get("/api/feeds", headers=other)).json() == []
    assert server.seen == []

    # The owner sees everything except the header's value, anywhere.
    listed = await api.client.get("/api/feeds", headers=api.auth)
    assert [f["id"] for f in listed.json()] == [fid] and SECRET not in listed.text
    run = await synced(api, fid)
    assert server.seen[0].headers["authorization"] == f"Bearer {SECRET}"
    for path in (f"/api/feeds/{fid}", f"/api/feeds/{fid}/runs", f"/api/feeds/{fid}/quarantine"):
        r = await api.client.get(path, headers=api.auth)
        assert r.status_code == 200 and SECRET not in r.text, path
    one = (await api.client.get(f"/api/feeds/{fid}", headers=api.auth)).json()
    assert one["last_run"]["id"] == run["id"] and "auth_header_value" not in one
    assert SECRET not in (await api.client.get("/schema/openapi.json")).text


async def test_feed_input_is_checked_field_by_field(api: Api, server: FeedServer) -> None:
    pid = await make_process(api)
    url = server.url("/pledges.json")

    async def post(**changes: Any) -> Any:
        body = {**feed_body(pid, url), **changes}
        return await api.client.post("/api/feeds", json=body, headers=api.auth)

    assert refused(await post(url="http://10.0.0.5/feed.json")) == "url"
    assert refused(await post(url="http://localhost/feed.json")) == "url"
    assert refused(await post(url="ftp://127.0.0.1/feed")) == "url"
    assert refused(await post(url="http://user:pw@127.0.0.1/feed")) == "url"
    assert refused(await post(format="xml")) == "format"
    assert refused(await post(cron="0 * * * *")) == "schedule"
    assert refused(await post(interval_seconds=None)) == "schedule"
    assert refused(await post(interval_seconds=30)) == "interval_seconds"
    assert refused(await post(interval_seconds=None, cron="every hour")) == "cron"
    assert refused(await post(interval_seconds=None, cron="* * * * *")) == "cron"
    assert refused(await post(field_map={"amount": "budget"})) == "field_map"
    assert refused(await post(auth_header={"name": "Host", "value": "x"})) == "auth_header"
    bad_value = {"name": "X-Key", "value": "a\r\nX-Other: b"}
    assert refused(await post(auth_header=bad_value)).startswith("auth_header")
    unknown = await post(surprise=1)
    assert unknown.status_code == 400 and "surprise" in unknown.json()["extra"][0]["message"]
    assert (await post()).status_code == 201
    assert refused(await post(), 409) == "name"


async def test_changing_a_feed(api: Api, server: FeedServer) -> None:
    pid = await make_process(api)
    feed = await make_feed(api, pid, server.url("/all.json"))
    path = f"/api/feeds/{feed['id']}"

    async def patch(**body: Any) -> dict[str, Any]:
        r = await api.client.patch(path, json=body, headers=api.auth)
        assert r.status_code == 200, r.text
        assert SECRET not in r.text
        return dict(r.json())

    cron = await patch(cron="0 6 * * 1")
    assert (cron["cron"], cron["interval_seconds"]) == ("0 6 * * 1", None)
    assert cron["next_run_at"] != feed["next_run_at"]
    back = await patch(interval_seconds=7200)
    assert (back["cron"], back["interval_seconds"]) == (None, 7200)
    assert (await patch(auth_header=None))["has_auth_header"] is False
    off = await patch(enabled=False)
    assert off["enabled"] is False and off["next_run_at"] is None
    assert (await patch(enabled=True))["next_run_at"] is not None
    mapped = await patch(field_map={"title": "name"})
    assert mapped["field_map"] == {"title": "name"}
    r = await api.client.patch(path, json={"url": "http://169.254.169.254/"}, headers=api.auth)
    assert refused(r) == "url"
    assert (await api.client.delete(path, headers=api.auth)).status_code == 204
    assert (await api.client.get(path, headers=api.auth)).status_code == 404


async def test_the_clock_follows_changes_to_a_feed(api: Api, server: FeedServer) -> None:
    pid = await make_process(api)
    feed = await make_feed(api, pid, server.url("/all.json"))
    scheduler = api.client.app.state.clock.scheduler
    job = scheduler.get_job(f"feed-{feed['id']}")  # planned at the row's next run time
    assert job is not None and job.next_run_time == when(feed["next_run_at"])
    path = f"/api/feeds/{feed['id']}"
    moved = (await api.client.patch(path, json={"cron": "0 6 * * 1"}, headers=api.auth)).json()
    job = scheduler.get_job(f"feed-{feed['id']}")
    assert job is not None and job.next_run_time == when(moved["next_run_at"])
    assert job.next_run_time.strftime("%a %H:%M") == "Mon 06:00"
    await api.client.patch(path, json={"enabled": False}, headers=api.auth)
    assert scheduler.get_job(f"feed-{feed['id']}") is None
    await api.client.patch(path, json={"enabled": True}, headers=api.auth)
    assert scheduler.get_job(f"feed-{feed['id']}") is not None
    await api.client.delete(path, headers=api.auth)
    assert scheduler.get_job(f"feed-{feed['id']}") is None


async def test_syncs_runs_and_quarantine_over_http(api: Api, server: FeedServer) -> None:
    pid = await make_process(api)
    server.set_records([*records()[:5], {"id": "BAD", "title": "No pledger"}])
    feed = await make_feed(api, pid, server.url("/all.json"))
    first = await synced(api, feed["id"])
    assert (first["outcome"], first["new"], first["quarantined"]) == ("success", 5, 1)
    second = await synced(api, feed["id"])
    assert (second["outcome"], second["http_status"]) == ("not_modified", 304)
    server.fault("status", status=500, times=-1)
    third = await synced(api, feed["id"])
    assert third["outcome"] == "failed" and third["error"].startswith("page 1: HTTP 500")

    runs = (await api.client.get(f"/api/feeds/{feed['id']}/runs", headers=api.auth)).json()
    assert [r["outcome"] for r in runs] == ["failed", "not_modified", "success"]
    assert all(r["duration_ms"] is not None and r["finished_at"] for r in runs)
    shown = (await api.client.get(f"/api/feeds/{feed['id']}/quarantine", headers=api.auth)).json()
    assert [(q["source_id"], q["reason"]) for q in shown] == [
        ("BAD", "record 6: pledger_name: missing")
    ]
    assert shown[0]["record"] == {"id": "BAD", "title": "No pledger"}
    by_run = await api.client.get(
        f"/api/feeds/{feed['id']}/quarantine", params={"run_id": second["id"]}, headers=api.auth
    )
    assert by_run.json() == []


async def test_a_sync_already_running_answers_409(api: Api, server: FeedServer) -> None:
    pid = await make_process(api)
    feed = await make_feed(api, pid, server.url("/all.json"))
    db = open_database(api.settings)
    try:
        async with db.writer.begin() as session:  # another node is running it
            await session.execute(update(Feed).values(lease_until=utc_now() + timedelta(minutes=5)))
        busy = await api.client.post(f"/api/feeds/{feed['id']}/sync", headers=api.auth)
        assert busy.status_code == 409 and "already running" in busy.json()["detail"]
        shown = (await api.client.get(f"/api/feeds/{feed['id']}", headers=api.auth)).json()
        assert shown["running"] is True and server.seen == []
        async with db.writer.begin() as session:  # that node died; its lease ran out
            await session.execute(update(Feed).values(lease_until=utc_now() - timedelta(seconds=1)))
    finally:
        await db.dispose()
    assert (await synced(api, feed["id"]))["outcome"] == "success"


async def test_the_digest_reaches_the_organizers_mailbox(api: Api, server: FeedServer) -> None:
    pid = await make_process(api)
    db = open_database(api.settings)
    try:
        async with db.writer.begin() as session:
            await session.execute(
                update(Organizer).values(email="secretariat@example.org", language="es")
            )
    finally:
        await db.dispose()
    feed = await make_feed(api, pid, server.url("/all.json"))
    await synced(api, feed["id"])
    folder = api.settings.mail_maildir
    deadline = time.monotonic() + 15
    while not messages(folder):
        assert time.monotonic() < deadline, "no digest was mailed"
        await asyncio.sleep(0.1)
    (msg,) = messages(folder)
    assert msg["To"] == "Secretariat <secretariat@example.org>"
    assert str(msg["Subject"]).strip() == "Compromisos nuevos y modificados: GCM review"
    body = msg.get_body(("plain",))
    assert body is not None
    text = str(body.get_content())
    assert "Compromisos nuevos: 60." in text and "gcm-pledges" in text
    assert f"/api/pledges?process_id={pid}" in text
    assert "modificados:" not in text.split("Compromisos nuevos")[1]  # zero counts are left out


def messages(folder: Path) -> list[EmailMessage]:
    found = []
    for sub in ("new", "cur"):
        if (folder / sub).is_dir():
            for path in sorted((folder / sub).iterdir()):
                msg = message_from_bytes(path.read_bytes(), policy=policy.default)
                assert isinstance(msg, EmailMessage)
                found.append(msg)
    return found


# --- Dashboards ---------------------------------------------------------------------------


async def loaded(api: Api, server: FeedServer) -> tuple[int, int, list[Any]]:
    """60 pledges synced, then 5 gone from the source (withdrawn); the canonical records."""
    pid = await make_process(api)
    feed = await make_feed(api, pid, server.url("/pledges.json"))
    assert (await synced(api, feed["id"]))["new"] == 60
    server.set_records(records()[5:])
    assert (await synced(api, feed["id"]))["withdrawn"] == 5
    paths = field_paths({}, nested=True)
    canonical = [validate_record(r, paths, utc_now()) for r in records()]
    return pid, feed["id"], canonical


async def listed(api: Api, **params: Any) -> dict[str, Any]:
    r = await api.client.get("/api/pledges", params={"limit": 1000, **params})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_pledges_are_public_and_filtered(api: Api, server: FeedServer) -> None:
    pid, fid, canonical = await loaded(api, server)
    active = canonical[5:]
    everything = await listed(api)
    assert everything["total"] == 55 and len(everything["items"]) == 55
    first = everything["items"][0]
    assert first["source_id"] == "P-000005" and first["withdrawn"] is False
    assert first["objectives"] == active[0].objectives
    # What the times mean is in the schema: last_seen_at is the last write, not the last run.
    schema = (await api.client.get("/schema/openapi.json")).json()
    times = schema["components"]["schemas"]["PledgeOut"]["properties"]
    assert "older than the feed's latest successful run" in times["last_seen_at"]["description"]
    assert times["first_seen_at"]["description"] and times["withdrawn_at"]["description"]

    def ids(page: dict[str, Any]) -> list[str]:
        return [p["source_id"] for p in page["items"]]

    for params, keep in (
        ({"region": "Africa"}, lambda r: r.region == "Africa"),
        ({"country": "ken"}, lambda r: r.country == "KEN"),
        ({"pledger_type": "un_system"}, lambda r: r.pledger_type == "un_system"),
        ({"pledge_type": "matching"}, lambda r: r.pledge_type == "matching"),
        ({"form": "policy"}, lambda r: r.form == "policy"),
        ({"objective": 7}, lambda r: 7 in r.objectives),
        ({"status": "Fulfilled"}, lambda r: r.status == "fulfilled"),
        ({"q": "100% of THE_"}, lambda r: "100% of the_" in r.title.lower()),
        ({"q": "ministry"}, lambda r: "ministry" in r.pledger_name.lower()),
        ({"q": "_"}, lambda r: "_" in r.title or "_" in r.pledger_name),
        (
            {"process_id": pid, "feed_id": fid, "form": "financial", "region": "Europe"},
            lambda r: r.form == "financial" and r.region == "Europe",
        ),
    ):
        page = await listed(api, **params)
        expected = [r.source_id for r in active if keep(r)]
        assert ids(page) == expected and page["total"] == len(expected), params
        assert expected, params  # every filter has something to find

    withdrawn = await listed(api, state="withdrawn")
    assert ids(withdrawn) == [f"P-00000{i}" for i in range(5)]
    assert all(p["withdrawn"] and p["withdrawn_at"] for p in withdrawn["items"])
    assert (await listed(api, state="all"))["total"] == 60
    assert (await listed(api, process_id=pid + 1))["total"] == 0

    paged = await listed(api, limit=10, offset=50)
    assert ids(paged) == [r.source_id for r in active[50:]] and paged["total"] == 55
    one = await api.client.get(f"/api/pledges/{first['id']}")
    assert one.json() == first
    assert (await api.client.get("/api/pledges/999999")).status_code == 404

    for bad in (
        {"objective": 24},
        {"pledger_type": "alien"},
        {"country": "KE"},
        {"state": "gone"},
        {"limit": 0},
    ):
        assert (await api.client.get("/api/pledges", params=bad)).status_code == 400, bad


async def test_stats_count_every_dimension(api: Api, server: FeedServer) -> None:
    pid, _, canonical = await loaded(api, server)
    active = canonical[5:]
    r = await api.client.get("/api/pledges/stats", params={"process_id": pid})
    assert r.status_code == 200, r.text
    stats = r.json()
    assert stats["total"] == 55
    assert stats["by_region"] == dict(Counter(p.region for p in active))
    assert stats["by_country"] == dict(Counter(p.country or "" for p in active))
    assert stats["by_pledger_type"] == dict(Counter(p.pledger_type for p in active))
    assert stats["by_form"] == dict(Counter(p.form for p in active))
    assert stats["by_status"] == dict(Counter(p.status for p in active))
    objectives = Counter(o for p in active for o in p.objectives)
    assert stats["by_objective"] == {str(o): n for o, n in sorted(objectives.items())}
    months = Counter(p.submitted_at.strftime("%Y-%m") for p in active if p.submitted_at)
    assert stats["interval"] == "month" and stats["over_time"] == dict(sorted(months.items()))

    yearly = (await api.client.get("/api/pledges/stats", params={"interval": "year"})).json()
    years = Counter(p.submitted_at.strftime("%Y") for p in active if p.submitted_at)
    assert yearly["over_time"] == dict(sorted(years.items()))

    drilled = (
        await api.client.get("/api/pledges/stats", params={"region": "Europe", "objective": 3})
    ).json()
    kept = [p for p in active if p.region == "Europe" and 3 in p.objectives]
    assert drilled["total"] == len(kept) > 0
    assert drilled["by_form"] == dict(Counter(p.form for p in kept))
    gone = (await api.client.get("/api/pledges/stats", params={"state": "withdrawn"})).json()
    assert gone["total"] == 5


async def test_stats_are_cached_until_pledges_change(api: Api, server: FeedServer) -> None:
    """The counts keep their ETag (and 304) through syncs that change nothing; a sync that
    changes pledges, or deleting the feed, gives new counts at once."""
    pid, fid, _ = await loaded(api, server)
    params = {"process_id": pid}

    async def stats(tag: str | None = None) -> Any:
        headers = {"If-None-Match": tag} if tag else {}
        return await api.client.get("/api/pledges/stats", params=params, headers=headers)

    first = await stats()
    tag = first.headers["etag"]
    assert first.json()["total"] == 55
    assert (await stats(tag)).status_code == 304
    assert (await synced(api, fid))["outcome"] == "not_modified"  # nothing written
    again = await stats(tag)
    assert again.status_code == 304 and again.headers["etag"] == tag
    # Another filter is another answer, with its own tag.
    other = await api.client.get("/api/pledges/stats", params={**params, "form": "policy"})
    assert other.headers["etag"] != tag and other.json()["total"] < 55

    cache = api.client.app.dependencies["answer_cache"].dependency()
    built = cache.built
    server.set_records([*records()[5:], pledge(70), pledge(71)])
    assert (await synced(api, fid))["new"] == 2
    assert cache.built == built + 1  # the sync counted the process's pledges again
    grown = await stats(tag)
    assert grown.status_code == 200 and grown.json()["total"] == 57
    assert grown.headers["etag"] != tag
    assert cache.built == built + 1  # so the first viewer after it got them ready

    r = await api.client.delete(f"/api/feeds/{fid}", headers=api.auth)
    assert r.status_code == 204, r.text
    emptied = await stats(grown.headers["etag"])
    assert emptied.status_code == 200 and emptied.json()["total"] == 0


async def test_csv_export_streams_every_pledge_safely(api: Api, server: FeedServer) -> None:
    _, _, canonical = await loaded(api, server)
    r = await api.client.get("/api/pledges/export.csv")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["source_id"] for row in rows] == [p.source_id for p in canonical[5:]]
    by_id = {row["source_id"]: row for row in rows}
    assert by_id["P-000010"]["title"] == "'" + FORMULA  # a spreadsheet shows it, never runs it
    assert by_id["P-000012"]["objectives"] == ";".join(map(str, canonical[12].objectives))
    assert by_id["P-000012"]["withdrawn_at"] == ""
    # Times in UTC with their offset, as the datetimes give them (SQLite: from the text stored).
    for p in canonical[5:]:
        row = by_id[p.source_id]
        for column in ("submitted_at", "source_updated_at"):
            when = getattr(p, column)
            assert row[column] == ("" if when is None else when.astimezone(UTC).isoformat())
    seen = {i["source_id"]: i for i in (await listed(api))["items"]}
    for column in ("first_seen_at", "last_seen_at"):
        assert {row[column] for row in rows} == {
            datetime.fromisoformat(seen[sid][column]).isoformat() for sid in by_id
        }
        assert all(row[column].endswith("+00:00") for row in rows)
    filtered = await api.client.get("/api/pledges/export.csv", params={"form": "process"})
    kept = [p.source_id for p in canonical[5:] if p.form == "process"]
    assert [row["source_id"] for row in csv.DictReader(io.StringIO(filtered.text))] == kept
    none = await api.client.get("/api/pledges/export.csv", params={"region": "Antarctica"})
    assert none.text.strip() == ",".join(next(csv.reader(io.StringIO(r.text))))  # the header alone
