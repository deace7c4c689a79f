"""Security headers on every answer, and a Content-Security-Policy the pages really fit.

In-process on SQLite and PostgreSQL for the headers; the templates are read for anything
the policy would block; Chromium (against a real server) loads the main pages, the Gantt
view and the pledge charts and reports no CSP violation.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import sync_playwright

from scheduler.security_headers import CONTENT_SECURITY_POLICY
from scheduler.settings import Settings
from tests.conftest import Api, base_settings
from tests.live_server import LiveServer, cli, fresh_database, server_env
from tests.test_api_registrations import make_event, make_process

TEMPLATES = Path(__file__).resolve().parent.parent / "scheduler" / "templates"
CHROMIUM = Path("/usr/bin/chromium")
COMMON = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}


def assert_common(r: httpx.Response) -> None:
    for name, value in COMMON.items():
        assert r.headers.get(name) == value, (r.request.url, name)
    # Added once, even where a handler sets its own headers.
    assert r.headers.get_list("x-frame-options") == ["DENY"]


async def test_every_kind_of_answer_gets_the_headers(api: Api) -> None:
    pid = await make_process(api)
    eid = (await make_event(api, pid))["id"]
    answers = [
        await api.client.get("/"),
        await api.client.get(f"/events/{eid}"),
        await api.client.get(f"/events/{eid}/register"),
        await api.client.get("/organize/sign-in"),
        await api.client.get("/static/site.css"),
        await api.client.get("/static/site.js"),
        await api.client.get(f"/api/events/{eid}"),
        await api.client.get(f"/api/events/{eid}/calendar.ics"),
        await api.client.get("/api/events/999999"),  # 404 from a handler
        await api.client.get("/no/such/page"),  # 404 from the router
        await api.client.post("/api/processes", json={}),  # 401
        await api.client.get("/health"),
    ]
    for r in answers:
        assert r.status_code < 500, r.text
        assert_common(r)
        assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "strict-transport-security" not in r.headers  # plain http base URL
    # The API docs load their viewer from a CDN: no CSP there, the rest stays.
    docs = await api.client.get("/schema")
    assert docs.status_code == 200
    assert_common(docs)
    assert "content-security-policy" not in docs.headers


def test_the_policy_forbids_what_it_should() -> None:
    directives = dict(d.split(" ", 1) for d in CONTENT_SECURITY_POLICY.split("; "))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"  # no inline script, no eval
    assert directives["style-src"] == "'self'"  # no <style> element
    assert directives["frame-ancestors"] == "'none'"
    assert directives["form-action"] == "'self'"
    assert directives["base-uri"] == "'none'"


def test_no_template_has_what_the_policy_blocks() -> None:
    """Scripts only by src, no <style> element, no event-handler attribute, no javascript:."""
    for path in TEMPLATES.glob("*.html"):
        source = path.read_text(encoding="utf-8")
        for tag in re.findall(r"<script\b[^>]*>", source):
            assert "src=" in tag, f"{path.name}: inline script {tag}"
        assert not re.search(r"<style\b", source), f"{path.name}: <style> element"
        assert not re.search(r"\son[a-z]+\s*=", source), f"{path.name}: event handler attribute"
        assert "javascript:" not in source.lower(), path.name


@pytest.fixture
def https_settings(database_url: str, tmp_path: Path) -> Settings:
    return base_settings(database_url, tmp_path).replace(base_url="https://forum.example.org")


async def test_hsts_only_when_the_public_address_is_https(https_settings: Settings) -> None:
    from litestar.testing import AsyncTestClient

    from scheduler.app import create_app

    async with AsyncTestClient(app=create_app(https_settings)) as client:
        for path in ("/", "/health", "/schema"):
            r = await client.get(path)
            assert r.headers["strict-transport-security"] == "max-age=31536000"


# --- In a real browser --------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, int, int]]:
    """A real server with the IMRF cycle; (base URL, token, process id, forum id)."""
    data = tmp_path_factory.mktemp("csp")
    with fresh_database("sqlite", data) as url:
        env = server_env(data, url)
        cli(env, "migrate")
        token = cli(env, "organizer", "create", "--name", "Secretariat").split()[-1]
        server = LiveServer(env)
        server.start()
        try:
            auth = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=server.base_url, headers=auth, timeout=30) as api:
                r = api.post(
                    "/api/processes",
                    json={"slug": "gcm", "name": "GCM review", "time_zone": "America/New_York"},
                )
                assert r.status_code == 201, r.text
                pid = r.json()["id"]
                anchor = (datetime.now(UTC) + timedelta(days=60)).date().isoformat()
                r = api.post(
                    f"/api/processes/{pid}/instantiate",
                    json={"template": "imrf", "anchor_date": anchor, "status": "published"},
                )
                assert r.status_code == 201, r.text
                forum = next(e["id"] for e in r.json()["events"] if e["kind"] == "review_forum")
            yield server.base_url, token, pid, forum
        finally:
            server.stop()


def test_the_pages_break_no_rule_of_their_policy(served: tuple[str, str, int, int]) -> None:
    assert CHROMIUM.exists(), "Debian's chromium is missing: `make test` installs it"
    base, token, pid, forum = served
    violations: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            context = browser.new_context(base_url=base)
            context.route(re.compile(r"^(?!http://127\.0\.0\.1[:/]).*"), lambda r: r.abort())
            page = context.new_page()

            def watch(message: Any) -> None:
                if "Content Security Policy" in message.text:
                    violations.append(f"{page.url}: {message.text}")

            page.on("console", watch)
            # Also caught in the page itself (some violations never reach the console).
            context.add_init_script(
                "document.addEventListener('securitypolicyviolation', e => console.error("
                "'Content Security Policy: ' + e.violatedDirective + ' ' + e.blockedURI));"
            )
            for path in ("/", "/processes/gcm", f"/events/{forum}", f"/events/{forum}/register"):
                page.goto(path)
                page.wait_for_load_state("networkidle")
            page.goto("/processes/gcm/pledges")
            page.wait_for_load_state("networkidle")
            page.goto("/organize/sign-in")
            page.get_by_label("Organizer token").fill(token)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(re.compile(r"/organize$"))
            page.goto(f"/organize/processes/{pid}")
            page.wait_for_load_state("networkidle")
            # The Gantt bars are placed by their style attributes: allowed, and applied.
            bar = page.locator(".gantt-bar").first
            assert bar.evaluate("b => b.style.getPropertyValue('--width')").strip().endswith("%")
            assert bar.evaluate("b => getComputedStyle(b).width") not in ("", "auto", "0px")
            # The site's script ran (it sets the time-zone cookie), inline ones could not.
            assert page.evaluate("document.cookie").count("tz=") == 1
        finally:
            browser.close()
    assert not violations, "\n".join(violations)
