"""The pages in a real browser: Debian's Chromium, headless, driven by Playwright, against a
real `scheduler serve` process whose mail goes to a real SMTP server on 127.0.0.1.

Scenarios from the issue: register until the event is full and see the waiting list,
confirm through the mailed link, cancel and see the next person promoted, an organizer moves
the forum and sees the hearing follow. Every main page is checked with axe-core (bundled by
the axe-playwright-python package: nothing is fetched at test time) and photographed into
test-artifacts/screenshots/. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import sync_playwright

from scheduler.i18n import date_text
from tests.live_server import LiveServer, cli, fresh_database, server_env
from tests.mail_server import MailServer, start_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"
AXE = (files("axe_playwright_python") / "axe.min.js").read_text(encoding="utf-8")
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]
FORUM_IN_DAYS = 45


@pytest.fixture(autouse=True)
def _chromium_is_installed() -> None:
    """A missing browser is a failure, never a skip: `make test` installs it."""
    assert CHROMIUM.exists(), "Debian's chromium is missing: `make test` installs it"


@dataclass
class Site:
    base: str
    token: str
    process_id: int
    slug: str
    forum_id: int
    hearing_id: int
    mail: MailServer


def _api(site_base: str, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=site_base, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A served cycle (the IMRF template, forum in 45 days), a hearing of two seats."""
    data = tmp_path_factory.mktemp("browser")
    mail = start_server()
    try:
        with fresh_database("sqlite", data) as url:
            env = server_env(
                data,
                url,
                SCHEDULER_MAIL_TRANSPORT="smtp",
                SCHEDULER_SMTP_HOST="127.0.0.1",
                SCHEDULER_SMTP_PORT=str(mail.port),
            )
            cli(env, "migrate")
            token = cli(env, "organizer", "create", "--name", "IMRF secretariat").split()[-1]
            server = LiveServer(env)
            server.start()
            try:
                yield _build(server.base_url, token, mail)
            finally:
                server.stop()
    finally:
        mail.stop()


def _build(base: str, token: str, mail: MailServer) -> Site:
    anchor = (datetime.now(UTC) + timedelta(days=FORUM_IN_DAYS)).date().isoformat()
    with _api(base, token) as api:
        r = api.post(
            "/api/processes",
            json={
                "slug": "gcm",
                "name": "Global Compact for Migration review",
                "time_zone": "America/New_York",
                "description": "The review cycle of the Global Compact for Safe, Orderly and "
                "Regular Migration.",
                "languages": ["en", "fr", "es", "ar"],
            },
        )
        assert r.status_code == 201, r.text
        process_id = r.json()["id"]
        r = api.post(
            f"/api/processes/{process_id}/instantiate",
            json={"template": "imrf", "anchor_date": anchor, "status": "published"},
        )
        assert r.status_code == 201, r.text
        events = {e["kind"]: e["id"] for e in r.json()["events"]}
        hearing = events["stakeholder_hearing"]
        question = {
            "key": "round_table",
            "label": "Which round table do you want to follow?",
            "type": "choice",
            "choices": ["Round table 1", "Round table 2", "Round table 3", "Round table 4"],
            "required": True,
        }
        r = api.patch(f"/api/events/{hearing}", json={"capacity": 2, "questions": [question]})
        assert r.status_code == 200, r.text
    return Site(base, token, process_id, "gcm", events["review_forum"], hearing, mail)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, site: Site) -> Iterator[Any]:
    context = browser.new_context(
        base_url=site.base,
        timezone_id="Europe/Paris",
        locale="en-GB",
        viewport={"width": 1280, "height": 900},
    )
    context.set_default_timeout(15_000)
    # Anything not on this machine is refused (the pages load nothing from elsewhere).
    context.route(re.compile(r"^(?!http://127\.0\.0\.1[:/]).*"), lambda route: route.abort())
    tab = context.new_page()
    yield tab
    context.close()


def shoot(page: Any, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def axe(page: Any, name: str) -> None:
    """No serious or critical WCAG 2.1 A/AA violation on the page as it stands."""
    # Evaluated, not added as a <script> element: the pages' CSP refuses inline scripts.
    page.evaluate(AXE)
    result = page.evaluate(
        """(tags) => axe.run(document, {runOnly: {type: "tag", values: tags},
                                       resultTypes: ["violations"]})""",
        AXE_TAGS,
    )
    bad = [
        f"{v['id']} ({v['impact']}): {v['help']} -> "
        + "; ".join(n["target"][0] if n["target"] else "?" for n in v["nodes"][:3])
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert not bad, f"{name}: " + "\n".join(bad)


def mail_to(site: Site, address: str, kind_words: str, timeout: float = 20) -> str:
    """The text of the newest mail to ``address`` whose subject contains ``kind_words``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for received in reversed(site.mail.messages):
            msg = received.parsed()
            if address in received.rcpt_tos and kind_words.lower() in str(msg["Subject"]).lower():
                body = msg.get_body(preferencelist=("plain",))
                assert body is not None
                return str(body.get_content())
        time.sleep(0.1)
    subjects = [(m.rcpt_tos, m.parsed()["Subject"]) for m in site.mail.messages]
    raise AssertionError(f"no mail to {address} about {kind_words!r}; got {subjects}")


def register(page: Any, site: Site, n: int, name: str) -> None:
    page.goto(f"/events/{site.hearing_id}/register")
    page.get_by_label("Full name").fill(name)
    page.get_by_label("Email address").fill(f"person{n}@example.org")
    page.get_by_label("You take part as").select_option("civil_society")
    page.get_by_label("Country").select_option("KEN")
    page.get_by_label("Round table 2").check()
    page.get_by_role("button", name="Register").click()
    page.wait_for_url(re.compile(r"/registered\?"))


def test_register_until_full_confirm_by_mail_cancel_and_promote(page: Any, site: Site) -> None:
    # The form names every problem at its field.
    page.goto(f"/events/{site.hearing_id}")
    # On a first visit the page learns the browser's zone and reloads once to show it.
    page.wait_for_function("document.documentElement.dataset.tz === 'Europe/Paris'")
    assert "Paris" in page.locator("thead").inner_text()
    axe(page, "event")
    shoot(page, "01-event")
    # The first Tab reaches the skip link, which takes keyboard users to the content.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    page.get_by_role("link", name="Register").click()
    page.focus("#f-name")
    for expected in ("f-email", "f-organisation", "f-constituency", "f-country"):
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == expected
    page.get_by_label("Email address").fill("not an address")
    page.get_by_role("button", name="Register").click()
    summary = page.locator("#error-summary")
    assert "There is a problem" in summary.inner_text()
    assert page.locator("#f-email").get_attribute("aria-invalid") == "true"
    assert "name@example.org" in page.locator("#f-email-error").inner_text()
    assert "Fill in this field" in page.locator("#f-name-error").inner_text()
    assert page.locator("#f-answers-round_table-error").is_visible()
    assert page.evaluate("document.activeElement.id") == "error-summary"
    axe(page, "register-errors")
    shoot(page, "02-register-errors")

    # Two seats: the third person is told they are first on the waiting list.
    register(page, site, 1, "Amina Diallo")
    assert "Seat held" in page.inner_text("main")
    shoot(page, "03-registered-held")
    register(page, site, 2, "Bruno Costa")
    register(page, site, 3, "Chen Wei")
    main = page.inner_text("main")
    assert "On the waiting list" in main and "waiting list: 1" in main
    axe(page, "registered-waiting")
    shoot(page, "04-registered-waiting")
    page.goto(f"/events/{site.hearing_id}")
    assert "The event is full" in page.inner_text("main")

    # Amina confirms with the link in her mail, read from the SMTP server.
    text = mail_to(site, "person1@example.org", "confirm")
    confirm_link = re.search(r"http://127\.0\.0\.1:\d+/registrations/[\w.-]+/confirm", text)
    assert confirm_link is not None, text
    page.goto(confirm_link.group(0))
    shoot(page, "05-confirm")
    page.get_by_role("button", name="Confirm my seat").click()
    assert page.locator("#registration-status").inner_text() == "Seat confirmed"
    assert "Your seat is confirmed" in page.inner_text("main")
    axe(page, "manage")
    shoot(page, "06-manage-confirmed")
    manage_url = page.url

    # Chen's manage link shows the place on the waiting list.
    chen = mail_to(site, "person3@example.org", "waiting")
    chen_link = re.search(r"http://127\.0\.0\.1:\d+/registrations/[\w.-]+", chen)
    assert chen_link is not None, chen
    page.goto(chen_link.group(0))
    assert page.locator("#registration-status").inner_text() == "On the waiting list"
    assert page.locator("dd.position").inner_text() == "1"

    # Amina cancels (and accepts the question); Chen is promoted to a held seat.
    page.goto(manage_url)
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel my registration").click()
    page.wait_for_url(re.compile(r"done=cancelled"))
    assert page.locator("#registration-status").inner_text() == "Cancelled"
    page.goto(chen_link.group(0))
    assert page.locator("#registration-status").inner_text() == "Seat held: please confirm"
    mail_to(site, "person3@example.org", "seat")
    shoot(page, "07-promoted")


def test_organizer_moves_the_forum_and_the_hearing_follows(page: Any, site: Site) -> None:
    page.goto("/organize")
    page.wait_for_url(re.compile(r"/organize/sign-in"))
    axe(page, "sign-in")
    shoot(page, "10-sign-in")
    page.get_by_label("Organizer token").fill("fs_wrong")
    page.get_by_role("button", name="Sign in").click()
    assert "not known" in page.locator("#f-token-error").inner_text()
    # By keyboard alone: Tab reaches the token field, Enter sends the form.
    page.goto("/organize/sign-in")
    for _ in range(20):
        if page.evaluate("document.activeElement.id") == "f-token":
            break
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "f-token"
    page.keyboard.type(site.token)
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/organize$"))
    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies["fs_organizer"]
    assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Lax"

    page.get_by_role("link", name="Cycle timeline").first.click()
    hearing_row = page.locator(f"#row-event-{site.hearing_id}")
    before = hearing_row.locator(".when").inner_text()
    axe(page, "timeline")
    shoot(page, "11-timeline")

    page.get_by_role("link", name=re.compile(r"^Move International Migration Review Forum")).click()
    new_day = (datetime.now(UTC) + timedelta(days=FORUM_IN_DAYS + 7)).date()
    page.get_by_label("Date").fill(new_day.isoformat())
    page.get_by_label("Time").fill("10:00")
    page.get_by_role("button", name="Preview what moves").click()
    preview = page.locator(f"#preview-event-{site.hearing_id}")
    assert "Informal multi-stakeholder hearing" in preview.inner_text()
    axe(page, "move-preview")
    shoot(page, "12-move-preview")
    page.get_by_role("button", name=re.compile(r"^Move these")).click()
    page.wait_for_url(re.compile(r"/organize/processes/\d+\?moved="))
    hearing_row = page.locator(f"#row-event-{site.hearing_id}")
    after = hearing_row.locator(".when").inner_text()
    assert after != before
    hearing_day = new_day - timedelta(days=1)
    noon = datetime(hearing_day.year, hearing_day.month, hearing_day.day, 17, tzinfo=UTC)
    assert date_text(noon, "America/New_York", "en") in after
    assert "Moved" in hearing_row.inner_text()
    shoot(page, "13-timeline-moved")
    with _api(site.base, site.token) as api:
        hearing = api.get(f"/api/events/{site.hearing_id}").json()
    assert hearing["start_local"].startswith(hearing_day.isoformat())

    # Registrations, the waiting list, speakers; the reminder ledger; feeds.
    page.goto(f"/organize/events/{site.hearing_id}")
    assert "Waiting list" in page.inner_text("main")
    axe(page, "organizer-event")
    shoot(page, "14-organizer-event")
    page.goto(f"/organize/processes/{site.process_id}/reminders")
    assert page.locator("table.ledger tbody tr").count() > 0
    axe(page, "ledger")
    shoot(page, "15-ledger")
    page.goto(f"/organize/processes/{site.process_id}/feeds")
    axe(page, "feeds")
    shoot(page, "16-feeds")

    # A form posted without its CSRF token is refused, even with the session cookie.
    status = page.evaluate(
        """async ([url, form]) => (
            await fetch(url, {method: "POST", body: new URLSearchParams(form)})
        ).status""",
        [
            f"{site.base}/organize/events/{site.forum_id}/move",
            {"date": "2030-01-01", "time": "10:00", "action": "apply"},
        ],
    )
    assert status == 403
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/organize/sign-in\?done=signed_out"))


def test_public_pages_languages_time_zones_and_charts(browser: Any, site: Site) -> None:
    context = browser.new_context(
        base_url=site.base,
        timezone_id="Asia/Tokyo",
        locale="fr-FR",
        viewport={"width": 390, "height": 844},
    )
    context.route(re.compile(r"^(?!http://127\.0\.0\.1[:/]).*"), lambda route: route.abort())
    page = context.new_page()
    try:
        # The browser's language is taken; the browser's zone becomes "your time".
        page.goto("/")
        assert page.locator("html").get_attribute("lang") == "fr"
        axe(page, "home")
        shoot(page, "20-home-fr-mobile")
        page.goto(f"/events/{site.forum_id}")
        page.wait_for_function("document.documentElement.dataset.tz === 'Asia/Tokyo'")
        assert (
            "Tokyo"
            in page.locator("#schedule-title + form + datalist + .table-wrap thead").inner_text()
        )
        shoot(page, "21-event-fr-tokyo")
        # Switch to another zone by hand.
        page.get_by_label("Votre fuseau horaire").fill("America/Santiago")
        page.get_by_role("button", name="Afficher les heures").click()
        page.wait_for_function("document.documentElement.dataset.tz === 'America/Santiago'")
        assert "Santiago" in page.inner_text("main")

        # Arabic, chosen once, is kept and laid out right to left.
        page.get_by_role("link", name="العربية").click()
        assert page.locator("html").get_attribute("dir") == "rtl"
        page.goto(f"/processes/{site.slug}")
        assert page.locator("html").get_attribute("lang") == "ar"
        axe(page, "process-ar")
        shoot(page, "22-process-ar")
        page.goto(f"/processes/{site.slug}/pledges")
        axe(page, "pledges-ar")
        shoot(page, "23-pledges-ar")
        page.goto("/language/es?next=/processes/gcm")
        assert page.locator("html").get_attribute("lang") == "es"
        assert "Calendario" in page.inner_text("main")
        axe(page, "process-es")
        shoot(page, "24-process-es")
    finally:
        context.close()
