"""Every route's permission, read from the app's own OpenAPI document, on SQLite and
PostgreSQL.

``ROUTES`` says who may call each route. The test fails while a route of the document is
missing from it (the message says what to add) or while it names a route that is gone. Then
every protected route is called, its path ids filled from process A's fixtures, by each
kind of caller:

- nobody, and a revoked token: 401;
- an organizer of process B only, and the owner of A and B through a token scoped to B: 403,
  or 404 where the object is itself for members only (a feed: outsiders do not learn that
  it exists; the same rule hides other processes' drafts);
- the owner's read-only token: 403 on writes, served on reads;
- a viewer of A: 403 on writes; an organizer of A: 403 on owner-only routes;
- the least role the route needs (viewer, organizer or owner of A): served, with a 2xx.

Routes that act on the caller's own things or across the caller's processes (``signed_in``)
answer any valid token; for callers outside process A they must neither show nor touch it,
which each one's probe checks (and the probe must see A for its owner, or it proves
nothing). Public routes must serve a caller without any token.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from sqlalchemy import select

from scheduler.database import open_database
from scheduler.manage_links import load_secret, sign
from scheduler.models import Registration, WebhookDelivery
from scheduler.permissions import Caller, effective, rank
from scheduler.settings import Settings
from tests.conftest import Api, base_settings
from tests.feed_server import FeedServer, pledge

Access = Literal["public", "stakeholder", "viewer", "organizer", "owner", "signed_in"]
Probe = Callable[["World", httpx.Response], Awaitable[bool]]

YEAR = datetime.now(UTC).year + 2
# Strings only process A's data holds: an answer carrying one shows process A.
A_MARKERS = ("a-person-", "A-DRAFT-MARKER", "a-feed-marker", "A-owner-spare")


@dataclass(frozen=True)
class Rule:
    """Who may call one route, and how the sweep calls it."""

    access: Access
    why: str = ""
    # Path values beyond the defaults (process A, its hearing, milestone, feed, manage link).
    ids: Callable[[World], dict[str, object]] | None = None
    body: Callable[[World], object] | None = None
    query: Callable[[World], dict[str, object]] | None = None
    # The object itself is for members only: outsiders get 404, not 403.
    hidden: bool = False
    # signed_in routes: True when the answer shows or touched process A.
    probe: Probe | None = None


def public(why: str = "published information", **kw: Any) -> Rule:
    return Rule("public", why, **kw)


def stakeholder(why: str, **kw: Any) -> Rule:
    """A write the public makes (registering, its manage link, subscribing)."""
    return Rule("stakeholder", why, **kw)


def viewer(**kw: Any) -> Rule:
    """Reads organizer-only data of a process: any member, viewers included."""
    return Rule("viewer", **kw)


def organizer(**kw: Any) -> Rule:
    """Changes a process: organizers and owners."""
    return Rule("organizer", **kw)


def owner(**kw: Any) -> Rule:
    """Manages a process's members: owners only."""
    return Rule("owner", **kw)


def signed_in(why: str, **kw: Any) -> Rule:
    """Any valid token; acts only on the caller's own things or processes (see ``probe``)."""
    return Rule("signed_in", why, **kw)


@dataclass
class World:
    """Process A's fixtures, process B, and a token for each kind of caller."""

    a: int
    b: int
    hearing: int  # published, with accreditation: its registrations await approval
    forum: int  # published, seats at once: requests to speak
    draft: int
    doomed_event: int
    milestone: int
    doomed_milestone: int
    feed: int
    doomed_feed: int
    webhook: int
    doomed_webhook: int
    delivery: int  # a finished (failed) delivery of ``webhook``, for the retry route
    to_approve: int
    to_reject: int
    to_cancel: int
    to_revoke: int
    link: str  # a forum registrant's manage link
    first_request: int
    second_request: int
    newcomer: int  # organizer ids: not a member, an organizer of A, a viewer of A
    extra: int
    leaver: int
    spare_token_id: int
    tokens: dict[str, str]
    serial: Iterator[int] = field(default_factory=itertools.count)

    def next(self) -> int:
        return next(self.serial)


def shows_a(text: str) -> bool:
    return any(marker in text for marker in A_MARKERS)


async def body_shows_a(_: World, r: httpx.Response) -> bool:
    return shows_a(r.text)


async def exported_a(_: World, r: httpx.Response) -> bool:
    return bool(r.json()["registrations"])


async def erased_a(_: World, r: httpx.Response) -> bool:
    return bool(r.json()["registrations_anonymised"])


async def revoked_spare(world: World, r: httpx.Response) -> bool:
    return r.status_code == 204


def registrant(n: str) -> dict[str, str]:
    return {
        "name": f"Person {n}",
        "email": f"a-person-{n}@example.org",
        "constituency": "civil_society",
        "country": "KEN",
        "region": "Africa",
        "language": "en",
        "time_zone": "Africa/Nairobi",
        "organisation": f"Organisation {n}",
    }


def event_body(world_a: int, title: str, **changes: object) -> dict[str, object]:
    return {
        "process_id": world_a,
        "kind": "consultation",
        "title": title,
        "time_zone": "America/New_York",
        "start": f"{YEAR}-03-05T10:00:00-05:00",
        "end": f"{YEAR}-03-05T13:00:00-05:00",
        "status": "published",
        **changes,
    }


def milestone_body(world_a: int, title: str) -> dict[str, object]:
    return {
        "process_id": world_a,
        "kind": "report_deadline",
        "title": title,
        "due": f"{YEAR}-02-01T17:00:00-05:00",
        "time_zone": "America/New_York",
        "status": "published",
    }


# --- The table ----------------------------------------------------------------------------
# One entry per (method, OpenAPI path). To classify a new route, add it with who may call it:
# public("why"), stakeholder("why"), viewer(), organizer(), owner() or signed_in("why",
# probe=...); give ids=/body=/query= when the defaults below do not make a valid request.

ROUTES: dict[tuple[str, str], Rule] = {
    ("GET", "/health"): public("the load balancer's check"),
    ("GET", "/api/processes"): public(),
    ("POST", "/api/processes"): signed_in(
        "creates a new process, owned by the caller",
        body=lambda w: {"slug": f"new-{w.next()}", "name": "New cycle", "time_zone": "UTC"},
    ),
    ("GET", "/api/processes/{process_id}"): public(),
    ("PATCH", "/api/processes/{process_id}"): organizer(body=lambda w: {"description": "x"}),
    ("GET", "/api/processes/{process_id}/timeline"): public("drafts only for members"),
    ("POST", "/api/processes/{process_id}/instantiate"): organizer(
        body=lambda w: {"template": "imrf", "anchor_date": f"{YEAR + 1}-05-14"}
    ),
    ("GET", "/api/processes/{process_id}/members"): viewer(),
    ("POST", "/api/processes/{process_id}/members"): owner(
        body=lambda w: {"organizer_id": w.newcomer, "role": "viewer"}
    ),
    ("PATCH", "/api/processes/{process_id}/members/{organizer_id}"): owner(
        ids=lambda w: {"organizer_id": w.extra}, body=lambda w: {"role": "viewer"}
    ),
    ("DELETE", "/api/processes/{process_id}/members/{organizer_id}"): owner(
        ids=lambda w: {"organizer_id": w.leaver}
    ),
    ("GET", "/api/processes/{process_id}/calendar.ics"): public("drafts only for members"),
    ("GET", "/api/processes/{process_id}/reminder-policies"): viewer(),
    ("PUT", "/api/processes/{process_id}/reminder-policies"): organizer(
        body=lambda w: {"policies": [{"kind": "consultation", "offsets": [1440]}]}
    ),
    ("POST", "/api/processes/{process_id}/subscriptions"): stakeholder(
        "anyone may ask to be reminded of deadlines (double opt-in, rate limited)",
        body=lambda w: {"email": "a-subscriber@example.org"},
    ),
    ("GET", "/api/subscriptions/{token}"): public(
        "the mailed link is the credential", ids=lambda w: {"token": "1.unknown"}
    ),
    ("POST", "/api/subscriptions/{token}/confirm"): stakeholder(
        "the mailed link is the credential", ids=lambda w: {"token": "1.unknown"}
    ),
    ("POST", "/api/subscriptions/{token}/unsubscribe"): stakeholder(
        "one-click unsubscribe from the mail", ids=lambda w: {"token": "1.unknown"}
    ),
    ("GET", "/api/tokens"): signed_in("the caller's own tokens", probe=body_shows_a),
    ("POST", "/api/tokens"): signed_in(
        "a token of the caller's own", body=lambda w: {"label": f"sweep {w.next()}"}
    ),
    ("DELETE", "/api/tokens/{token_id}"): signed_in(
        "the caller's own tokens only (others' are 404)",
        ids=lambda w: {"token_id": w.spare_token_id},
        probe=revoked_spare,
    ),
    ("GET", "/api/templates"): public(),
    ("GET", "/api/events"): public("drafts only for members"),
    ("POST", "/api/events"): organizer(body=lambda w: event_body(w.a, "Created in the sweep")),
    ("GET", "/api/events/{event_id}"): public("drafts only for members"),
    ("PATCH", "/api/events/{event_id}"): organizer(body=lambda w: {"description": "x"}),
    ("DELETE", "/api/events/{event_id}"): organizer(ids=lambda w: {"event_id": w.doomed_event}),
    ("POST", "/api/events/{event_id}/move"): organizer(
        body=lambda w: {"start": f"{YEAR}-05-13T10:00:00-04:00", "preview": True}
    ),
    ("GET", "/api/events/{event_id}/calendar.ics"): public("drafts only for members"),
    ("POST", "/api/events/{event_id}/registrations"): stakeholder(
        "the public registration form (rate limited)",
        ids=lambda w: {"event_id": w.forum},
        body=lambda w: registrant("new"),
    ),
    ("POST", "/api/events/{event_id}/registrations/resend"): stakeholder(
        "mails the manage link to the address itself; always 202",
        body=lambda w: {"email": "a-person-1@example.org"},
    ),
    ("GET", "/api/events/{event_id}/registrations"): viewer(),
    ("GET", "/api/events/{event_id}/registrations.csv"): viewer(),
    ("GET", "/api/events/{event_id}/registrations/stats"): viewer(),
    ("GET", "/api/events/{event_id}/waiting-list"): viewer(),
    ("POST", "/api/events/{event_id}/registrations/{registration_id}/approve"): organizer(
        ids=lambda w: {"registration_id": w.to_approve}, body=lambda w: {}
    ),
    ("POST", "/api/events/{event_id}/registrations/{registration_id}/reject"): organizer(
        ids=lambda w: {"registration_id": w.to_reject}, body=lambda w: {"reason": "x"}
    ),
    ("POST", "/api/events/{event_id}/registrations/{registration_id}/cancel"): organizer(
        ids=lambda w: {"registration_id": w.to_cancel}
    ),
    ("POST", "/api/events/{event_id}/registrations/{registration_id}/revoke-links"): organizer(
        ids=lambda w: {"registration_id": w.to_revoke}
    ),
    ("GET", "/api/registrations/{token}"): public("the mailed manage link is the credential"),
    ("PATCH", "/api/registrations/{token}"): stakeholder(
        "the registrant, through the mailed manage link", body=lambda w: {"name": "Person L"}
    ),
    ("POST", "/api/registrations/{token}/confirm"): stakeholder(
        "the registrant's double opt-in click"
    ),
    ("POST", "/api/registrations/{token}/speaker-request"): stakeholder(
        "the registrant asks for the floor through the manage link",
        body=lambda w: {"topic": "Labour mobility", "language": "en"},
    ),
    ("DELETE", "/api/registrations/{token}/speaker-request"): stakeholder(
        "the registrant withdraws through the manage link"
    ),
    ("GET", "/api/registrations/{token}/calendar.ics"): public("the manage link's calendar"),
    ("POST", "/api/registrations/{token}/cancel"): stakeholder(
        "the registrant cancels through the manage link"
    ),
    ("POST", "/api/registrations/{token}/revoke"): stakeholder(
        "the registrant revokes a leaked link (a new one goes to their address)"
    ),
    ("GET", "/api/events/{event_id}/speaker-requests"): viewer(ids=lambda w: {"event_id": w.forum}),
    ("POST", "/api/events/{event_id}/speakers/select"): organizer(
        ids=lambda w: {"event_id": w.forum}, body=lambda w: {"count": 1, "slot_minutes": 5}
    ),
    ("PUT", "/api/events/{event_id}/speakers"): organizer(
        ids=lambda w: {"event_id": w.forum},
        body=lambda w: {"order": [w.first_request], "slot_minutes": 5},
    ),
    ("POST", "/api/events/{event_id}/speaker-requests/{request_id}/decline"): organizer(
        ids=lambda w: {"event_id": w.forum, "request_id": w.second_request},
        body=lambda w: {"reason": "x"},
    ),
    ("GET", "/api/events/{event_id}/speakers"): public("the published speaking order"),
    ("GET", "/api/milestones"): public("drafts only for members"),
    ("POST", "/api/milestones"): organizer(body=lambda w: milestone_body(w.a, "Sweep deadline")),
    ("GET", "/api/milestones/{milestone_id}"): public("drafts only for members"),
    ("PATCH", "/api/milestones/{milestone_id}"): organizer(body=lambda w: {"description": "x"}),
    ("DELETE", "/api/milestones/{milestone_id}"): organizer(
        ids=lambda w: {"milestone_id": w.doomed_milestone}
    ),
    ("GET", "/api/notifications"): signed_in(
        "messages of the caller's processes and to the caller", probe=body_shows_a
    ),
    ("GET", "/api/feeds"): signed_in("the feeds of the caller's processes", probe=body_shows_a),
    ("POST", "/api/feeds"): organizer(
        body=lambda w: {
            "process_id": w.a,
            "name": f"a-feed-created-{w.next()}",
            "url": "http://127.0.0.1:9/none.json",
            "format": "json",
            "interval_seconds": 3600,
        }
    ),
    ("GET", "/api/feeds/{feed_id}"): viewer(hidden=True),
    ("PATCH", "/api/feeds/{feed_id}"): organizer(
        hidden=True, body=lambda w: {"interval_seconds": 7200}
    ),
    ("DELETE", "/api/feeds/{feed_id}"): organizer(
        hidden=True, ids=lambda w: {"feed_id": w.doomed_feed}
    ),
    ("POST", "/api/feeds/{feed_id}/sync"): organizer(hidden=True),
    ("GET", "/api/feeds/{feed_id}/runs"): viewer(hidden=True),
    ("GET", "/api/feeds/{feed_id}/quarantine"): viewer(hidden=True),
    ("GET", "/api/pledges"): public("the public pledge dashboard"),
    ("GET", "/api/pledges/stats"): public("the public pledge dashboard"),
    ("GET", "/api/pledges/export.csv"): public("the public pledge dashboard"),
    ("GET", "/api/pledges/{pledge_id}"): public("the public pledge dashboard"),
    ("GET", "/api/audit"): signed_in("the trail of the caller's processes", probe=body_shows_a),
    ("GET", "/api/audit/export.csv"): signed_in(
        "the trail of the caller's processes", probe=body_shows_a
    ),
    ("GET", "/api/audit/export.ndjson"): signed_in(
        "the trail of the caller's processes", probe=body_shows_a
    ),
    ("GET", "/api/processes/{process_id}/webhooks"): viewer(),
    ("POST", "/api/processes/{process_id}/webhooks"): organizer(
        body=lambda w: {"url": "http://127.0.0.1:9/hook", "event_types": ["event.moved"]}
    ),
    ("GET", "/api/webhooks/{webhook_id}"): viewer(hidden=True),
    ("PATCH", "/api/webhooks/{webhook_id}"): organizer(
        hidden=True, body=lambda w: {"description": "changed"}
    ),
    ("DELETE", "/api/webhooks/{webhook_id}"): organizer(
        hidden=True, ids=lambda w: {"webhook_id": w.doomed_webhook}
    ),
    ("POST", "/api/webhooks/{webhook_id}/rotate-secret"): organizer(hidden=True),
    ("POST", "/api/webhooks/{webhook_id}/test"): organizer(hidden=True),
    ("GET", "/api/webhooks/{webhook_id}/deliveries"): viewer(hidden=True),
    ("POST", "/api/webhooks/{webhook_id}/deliveries/{delivery_id}/retry"): organizer(
        hidden=True, ids=lambda w: {"delivery_id": w.delivery}
    ),
    ("GET", "/api/privacy/export"): signed_in(
        "what the caller's processes hold about an address",
        query=lambda w: {"email": "a-person-1@example.org"},
        probe=exported_a,
    ),
    ("POST", "/api/privacy/erase"): signed_in(
        "erases within the processes the caller organizes",
        body=lambda w: {"email": "a-person-erasable@example.org"},
        probe=erased_a,
    ),
}


# --- The table matches the app ------------------------------------------------------------


def suggestion(method: str, path: str) -> str:
    """The line to add for an unclassified route, with the likeliest rule first."""
    if method == "GET":
        rule = 'viewer(),  # or public("why"), signed_in("why", probe=...)'
    else:
        rule = 'organizer(),  # or owner(), stakeholder("why"), signed_in("why", probe=...)'
    return f'    ("{method}", "{path}"): {rule}'


async def documented_routes(api: Api) -> set[tuple[str, str]]:
    doc = (await api.client.get("/schema/openapi.json")).json()
    methods = {"get", "post", "put", "patch", "delete"}
    return {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops if m in methods}


async def test_every_documented_route_is_in_the_table_and_no_other(api: Api) -> None:
    documented = await documented_routes(api)
    assert len(documented) > 60
    missing = sorted(documented - set(ROUTES))
    gone = sorted(set(ROUTES) - documented)
    report = []
    if missing:
        report.append(
            f"{len(missing)} route(s) of /schema/openapi.json are not classified in ROUTES "
            "(tests/test_permissions.py); add each with who may call it:\n"
            + "\n".join(suggestion(m, p) for m, p in missing)
        )
    if gone:
        report.append(
            "ROUTES names routes the app no longer has; remove them:\n"
            + "\n".join(f'    ("{m}", "{p}")' for m, p in gone)
        )
    assert not report, "\n\n".join(report)


def test_the_table_is_consistent() -> None:
    for (method, path), rule in ROUTES.items():
        read = method == "GET"
        where = f"ROUTES[{method!r}, {path!r}]"
        if rule.access in ("public", "viewer"):
            assert read, f"{where}: {rule.access}() is for reads; a write is stakeholder(), "
            "organizer(), owner() or signed_in()"
        if rule.access in ("stakeholder", "organizer", "owner"):
            assert not read, (
                f"{where}: {rule.access}() is for writes; a read is public() or viewer()"
            )
        if rule.access in ("stakeholder", "signed_in"):
            assert rule.why, f"{where}: say why it is {rule.access}()"
        assert rule.probe is None or rule.access == "signed_in", (
            f"{where}: probe is for signed_in()"
        )


def test_what_a_token_acts_as() -> None:
    """The pure rule under require_role: the member's role, narrowed by the token."""
    full = Caller(organizer_id=1, name="x", token_id=1)
    scoped = Caller(organizer_id=1, name="x", token_id=2, scope=7)
    read_only = Caller(organizer_id=1, name="x", token_id=3, read_only=True)
    both = Caller(organizer_id=1, name="x", token_id=4, scope=7, read_only=True)
    cases = [
        (full, 7, "owner", "owner"),
        (full, 7, "viewer", "viewer"),
        (full, 7, None, None),
        (full, 7, "admin", None),  # an unknown stored value grants nothing
        (scoped, 7, "organizer", "organizer"),
        (scoped, 8, "owner", None),
        (read_only, 7, "owner", "viewer"),
        (read_only, 7, None, None),
        (both, 7, "owner", "viewer"),
        (both, 8, "owner", None),
    ]
    for caller, process_id, member, acting in cases:
        assert effective(caller, process_id, member) == acting, (caller, process_id, member)
    assert [rank(r) for r in (None, "viewer", "organizer", "owner")] == [0, 1, 2, 3]


# --- The sweep ----------------------------------------------------------------------------


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return base_settings(database_url, tmp_path).replace(
        feeds_allowed_hosts="127.0.0.1",
        webhooks_allowed_hosts="127.0.0.1",
        webhooks_enabled=False,
        mail_enabled=False,
    )


@pytest.fixture
def server() -> Iterator[FeedServer]:
    with FeedServer([pledge(i) for i in range(5)], page_size=10) as s:
        yield s


async def test_every_protected_route_refuses_whoever_may_not_call_it(
    api: Api, server: FeedServer
) -> None:
    world = await build_world(api, server)
    problems: list[str] = []
    for (method, path), rule in ROUTES.items():
        problems += await check_route(api, world, method, path, rule)
    assert not problems, f"{len(problems)} permission problem(s):\n" + "\n".join(problems)


async def check_route(api: Api, world: World, method: str, path: str, rule: Rule) -> list[str]:
    values: dict[str, object] = {
        "process_id": world.a,
        "event_id": world.hearing,
        "milestone_id": world.milestone,
        "feed_id": world.feed,
        "webhook_id": world.webhook,
        "token": world.link,
        "pledge_id": 1,
    }
    if rule.ids is not None:
        values.update(rule.ids(world))
    url = re.sub(r"{(\w+)}", lambda m: str(values[m.group(1)]), path)
    problems: list[str] = []
    tokens = world.tokens

    async def call(token: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body = rule.body(world) if rule.body is not None else None
        query = rule.query(world) if rule.query is not None else None
        r: httpx.Response = await api.client.request(
            method, url, headers=headers, params=query, json=body
        )
        return r

    async def expect(who: str, token: str | None, *wanted: int) -> httpx.Response:
        r = await call(token)
        if r.status_code not in wanted:
            problems.append(
                f"{method} {path} by {who}: {r.status_code}, expected "
                f"{' or '.join(map(str, wanted))}: {r.text[:200]}"
            )
        return r

    async def served(who: str, token: str | None) -> httpx.Response:
        r = await call(token)
        if not r.is_success:
            problems.append(
                f"{method} {path} by {who}: {r.status_code}, expected 2xx: {r.text[:200]}"
            )
        return r

    write = method != "GET"
    if rule.access in ("public", "stakeholder"):
        r = await call(None)
        if r.status_code in (401, 403) or r.status_code >= 500:
            problems.append(f"{method} {path} without a token: {r.status_code}: {r.text[:200]}")
        return problems

    await expect("nobody", None, 401)
    await expect("a revoked token", tokens["revoked"], 401)

    if rule.access == "signed_in":
        if write:
            await expect("the owner's read-only token", tokens["owner_read_only"], 403)
        outsiders = [("an organizer of B only", "outsider"), ("the owner's B token", "owner_on_b")]
        if write:
            outsiders.append(("a viewer of A", "viewer"))
        for who, key in outsiders:
            r = await call(tokens[key])
            if r.status_code in (403, 404):
                continue  # refused: fine
            if not r.is_success:
                problems.append(f"{method} {path} by {who}: {r.status_code}: {r.text[:200]}")
            elif rule.probe is not None and await rule.probe(world, r):
                problems.append(f"{method} {path} by {who} showed or touched process A")
        r = await served("the owner of A", tokens["owner"])
        if r.is_success and rule.probe is not None and not await rule.probe(world, r):
            problems.append(f"{method} {path}: the probe sees nothing of A for its owner")
        return problems

    refused = 404 if rule.hidden else 403
    await expect("an organizer of B only", tokens["outsider"], refused)
    await expect("the owner's token scoped to B", tokens["owner_on_b"], refused)
    if not write:
        await served("the owner's read-only token", tokens["owner_read_only"])
        await served("a viewer of A", tokens["viewer"])
        return problems
    await expect("the owner's read-only token", tokens["owner_read_only"], 403)
    await expect("a viewer of A", tokens["viewer"], 403)
    if rule.access == "owner":
        await expect("an organizer of A", tokens["organizer"], 403)
        await served("the owner of A", tokens["owner"])
    else:
        await served("an organizer of A", tokens["organizer"])
    return problems


# --- Process A, process B and their people ------------------------------------------------


async def finished_delivery(api: Api, webhook_id: int) -> int:
    """The ping's delivery, ended as a failed one (sending is off here) so it may be retried."""
    db = open_database(api.settings)
    try:
        async with db.writer.begin() as session:
            row = await session.scalar(
                select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
            )
            assert row is not None
            row.status, row.last_error = "failed", "connection refused"
            return row.id
    finally:
        await db.dispose()


async def build_world(api: Api, server: FeedServer) -> World:
    owner_auth = api.auth

    async def post(url: str, body: object, auth: dict[str, str] | None = owner_auth) -> Any:
        r = await api.client.post(url, json=body, headers=auth or {})
        assert r.status_code in (200, 201, 202), (url, r.status_code, r.text)
        return r.json()

    a = (await post("/api/processes", {"slug": "a-cycle", "name": "A", "time_zone": "UTC"}))["id"]
    b = (await post("/api/processes", {"slug": "b-cycle", "name": "B", "time_zone": "UTC"}))["id"]
    _, outsider = await api.new_organizer("B organizer", ["b-cycle"])
    _, organizer_a = await api.new_organizer("A organizer", ["a-cycle"])
    _, viewer_a = await api.new_organizer("A viewer", ["a-cycle"], role="viewer")
    extra, _ = await api.new_organizer("A extra", ["a-cycle"])
    leaver, _ = await api.new_organizer("A leaver", ["a-cycle"], role="viewer")
    newcomer, _ = await api.new_organizer("Newcomer")

    on_b = await post("/api/tokens", {"label": "on B", "process_id": b})
    read_only = await post("/api/tokens", {"label": "read only", "read_only": True})
    spare = await post("/api/tokens", {"label": "A-owner-spare"})
    revoked = await post("/api/tokens", {"label": "revoked"})
    r = await api.client.delete(f"/api/tokens/{revoked['id']}", headers=owner_auth)
    assert r.status_code == 204, r.text

    hearing = await post(
        "/api/events",
        event_body(a, "A hearing", kind="stakeholder_hearing", accreditation_required=True),
    )
    forum = await post(
        "/api/events", event_body(a, "A forum", kind="review_forum", confirmation_required=False)
    )
    draft = await post("/api/events", event_body(a, "A-DRAFT-MARKER", status="draft"))
    doomed = await post("/api/events", event_body(a, "A doomed"))
    milestone = await post("/api/milestones", milestone_body(a, "A deadline"))
    doomed_milestone = await post("/api/milestones", milestone_body(a, "A doomed deadline"))
    feed_body = {"process_id": a, "url": server.url("/pledges.json"), "format": "json"}
    feed = await post(
        "/api/feeds", {**feed_body, "name": "a-feed-marker", "interval_seconds": 3600}
    )
    doomed_feed = await post(
        "/api/feeds", {**feed_body, "name": "a-feed-doomed", "interval_seconds": 3600}
    )

    hook_body = {"url": "http://127.0.0.1:9/a-webhook-marker", "event_types": ["event.moved"]}
    webhook = await post(f"/api/processes/{a}/webhooks", hook_body)
    doomed_webhook = await post(f"/api/processes/{a}/webhooks", hook_body)
    await post(f"/api/webhooks/{webhook['id']}/test", {})
    delivery = await finished_delivery(api, webhook["id"])

    waiting = [
        (await post(f"/api/events/{hearing['id']}/registrations", registrant(str(n)), None))["id"]
        for n in range(1, 5)
    ]
    seated = [
        (await post(f"/api/events/{forum['id']}/registrations", registrant(n), None))["id"]
        for n in ("speaker-1", "speaker-2", "link", "erasable")
    ]
    links = [await manage_link(api.settings, reg_id) for reg_id in seated[:3]]
    ask = {"topic": "Safe pathways", "language": "en"}
    first = await post(f"/api/registrations/{links[0]}/speaker-request", ask, None)
    second = await post(f"/api/registrations/{links[1]}/speaker-request", ask, None)

    return World(
        a=a,
        b=b,
        hearing=hearing["id"],
        forum=forum["id"],
        draft=draft["id"],
        doomed_event=doomed["id"],
        milestone=milestone["id"],
        doomed_milestone=doomed_milestone["id"],
        feed=feed["id"],
        doomed_feed=doomed_feed["id"],
        webhook=webhook["id"],
        doomed_webhook=doomed_webhook["id"],
        delivery=delivery,
        to_approve=waiting[0],
        to_reject=waiting[1],
        to_cancel=waiting[2],
        to_revoke=waiting[3],
        link=links[2],
        first_request=first["id"],
        second_request=second["id"],
        newcomer=newcomer,
        extra=extra,
        leaver=leaver,
        spare_token_id=spare["id"],
        tokens={
            "owner": api.token,
            "owner_on_b": on_b["token"],
            "owner_read_only": read_only["token"],
            "revoked": revoked["token"],
            "outsider": outsider,
            "organizer": organizer_a,
            "viewer": viewer_a,
        },
    )


async def manage_link(settings: Settings, registration_id: int) -> str:
    db = open_database(settings)
    try:
        async with db.reader() as session:
            reg = await session.get(Registration, registration_id)
            assert reg is not None
            nonce = reg.token_nonce
    finally:
        await db.dispose()
    return sign(registration_id, nonce, load_secret(settings.secret_key, settings.data_dir))
