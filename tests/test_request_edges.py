"""The edges every route shares, checked on every route the app has: numeric path ids out
of the 32-bit range answer 404 (never a 500 from the database), and bodies larger than
max_body_bytes answer 413, forms and pages included. SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
from typing import Any

from litestar.routes import HTTPRoute

from tests.conftest import Api
from tests.test_api_registrations import make_event, make_process

PARAM = re.compile(r"{(\w+):(\w+)}")
WRITES = ("POST", "PUT", "PATCH", "DELETE")


def http_routes(api: Api) -> list[tuple[str, str]]:
    """(method, path template) of every route, HEAD and OPTIONS left out."""
    found = []
    for route in api.client.app.routes:
        if isinstance(route, HTTPRoute):
            for method in sorted(route.methods - {"HEAD", "OPTIONS"}):
                found.append((method, route.path))
    return found


def fill(path: str, ints: dict[str, int], default: int = 1) -> str:
    def value(m: re.Match[str]) -> str:
        name, kind = m.group(1), m.group(2)
        if kind == "int":
            return str(ints.get(name, default))
        return "static" if kind == "path" else "x"

    return PARAM.sub(value, path)


async def test_ids_beyond_32_bits_are_not_found_on_every_route(api: Api) -> None:
    pid = await make_process(api)
    await make_event(api, pid)
    routes = [(m, p) for m, p in http_routes(api) if ":int}" in p]
    assert len(routes) > 40  # the API and the pages
    checked = 0
    for method, path in routes:
        names = [n for n, kind in PARAM.findall(path) if kind == "int"]
        for name in names:
            for huge in (2**31, 2**63, 10**30, 0, -1):
                url = fill(path, {name: huge})
                r = await api.client.request(method, url, headers=api.auth, json={})
                if method in WRITES and path.startswith("/organize"):
                    # A form without its CSRF token is refused before anything is looked up.
                    assert r.status_code == 403, (method, url, r.status_code)
                    continue
                assert r.status_code == 404, (method, url, r.status_code, r.text[:200])
                assert r.json()["status_code"] == 404
                checked += 1
    assert checked > 200
    # The largest id there can be is an ordinary "not found".
    r = await api.client.get(f"/api/events/{2**31 - 1}")
    assert r.status_code == 404


async def test_query_ids_and_offsets_beyond_range_are_refused(api: Api) -> None:
    for url in (
        f"/api/events?process_id={2**31}",
        f"/api/events?offset={2**63}",
        f"/api/milestones?process_id={2**40}",
        f"/api/notifications?event_id={2**31}",
        f"/api/notifications?offset={2**63}",
        f"/api/events/1/registrations?offset={2**63}",
    ):
        r = await api.client.get(url, headers=api.auth)
        assert r.status_code in (400, 404), (url, r.status_code, r.text[:200])


async def test_bodies_over_the_limit_get_413_on_every_route_that_reads_one(api: Api) -> None:
    pid = await make_process(api)
    eid = (await make_event(api, pid))["id"]
    limit = api.settings.max_body_bytes
    blob = "x" * (limit + 1)
    json_type = {"content-type": "application/json"}
    bodies: list[dict[str, Any]] = [
        {"content": ('{"name": "' + blob + '"}').encode(), "headers": json_type},
        {"data": {"name": blob}},  # a urlencoded form, as the pages send
        {"files": {"upload": ("big.csv", blob.encode())}},  # multipart
    ]
    refused = 0
    for route in api.client.app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for method, (handler, _) in sorted(route.route_handler_map.items()):
            if method not in WRITES:
                continue
            # Token 1 is the one this sweep sends: revoking it would end the sweep early.
            url = fill(route.path, {"process_id": pid, "event_id": eid, "token_id": 2})
            takes_data = "data" in handler.parsed_fn_signature.parameters
            for body in bodies:
                headers = {**api.auth, **body.get("headers", {})}
                rest = {k: v for k, v in body.items() if k != "headers"}
                r = await api.client.request(method, url, headers=headers, **rest)
                assert r.status_code < 500, (method, url, r.status_code, r.text[:200])
                if takes_data:
                    # Refused before a byte is kept: 413 (organizer forms: CSRF first).
                    expected = 403 if route.path.startswith("/organize") else 413
                    assert r.status_code == expected, (method, url, r.status_code)
                refused += r.status_code == 413
    assert refused > 60
    # The public forms (the sweep above deleted the event): 413 there, every time.
    eid = (await make_event(api, pid))["id"]
    json_body, form_body, multipart_body = bodies
    for url, sent in (
        (f"/events/{eid}/register", form_body),
        (f"/events/{eid}/register", multipart_body),
        ("/organize/sign-in", form_body),
        ("/organize/sign-in", multipart_body),
        (f"/api/events/{eid}/registrations", json_body),
        (f"/api/processes/{pid}/subscriptions", json_body),
    ):
        r = await api.client.post(url, **sent)
        assert r.status_code == 413, (url, r.status_code)


def test_no_body_field_is_named_like_a_dependency(api: Api) -> None:
    """Litestar reports a bad value in a body field that shares a dependency's name as a
    server error (500): the registrations' ``answers`` once met the answer cache."""
    checked = 0
    for route in api.client.app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            data = handler.parsed_fn_signature.parameters.get("data")
            if data is None:
                continue
            fields = set(getattr(data.annotation, "__struct_fields__", ()))
            clash = fields & set(handler.resolve_dependencies())
            assert not clash, (route.path, clash)
            checked += bool(fields)
    assert checked > 20


async def test_nul_characters_are_refused_not_crashed_on(api: Api) -> None:
    """PostgreSQL stores no NUL in text: in the URL it is refused on both back ends, in a
    body PostgreSQL's refusal becomes a 400 (SQLite simply stores it)."""
    pid = await make_process(api)
    r = await api.client.get("/api/pledges", params={"q": "a\x00b"})
    assert r.status_code == 400 and r.json()["extra"][0]["key"] == "q"
    r = await api.client.get("/processes/gc%00m")
    assert r.status_code == 404
    r = await api.client.post(
        "/api/events",
        json={
            "process_id": pid,
            "kind": "consultation",
            "title": "Nul\x00title",
            "time_zone": "UTC",
            "start": "2030-01-01T10:00:00Z",
            "end": "2030-01-01T12:00:00Z",
        },
        headers=api.auth,
    )
    postgres = api.settings.database_url.startswith("postgresql")
    assert r.status_code == (400 if postgres else 201), r.text
    r = await api.client.post(
        f"/api/processes/{pid}/subscriptions", json={"email": "a\x00b@example.org"}
    )
    assert r.status_code == 400 and r.json()["extra"][0]["key"] == "email"
