"""The server-rendered pages, on SQLite and on PostgreSQL: every page answers, in four
languages (Arabic right to left), errors name their fields, organizer sessions are Secure and
HttpOnly, and organizer forms without their CSRF token are refused."""

from __future__ import annotations

import random
import re
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update

from scheduler import i18n
from scheduler.database import open_database
from scheduler.manage_links import load_secret, sign
from scheduler.models import Event, Feed, Pledge, Registration
from scheduler.pledges import objective_mask
from scheduler.settings import Settings
from tests.conftest import Api

TEMPLATES = Path(__file__).resolve().parent.parent / "scheduler" / "templates"
CSRF = re.compile(r'name="_csrf_token" value="([^"]+)"')
REGIONS = ("Africa", "Americas", "Arab States", "Asia and the Pacific", "Europe")


async def cycle(api: Api, slug: str = "gcm", forum_in_days: int = 45) -> dict[str, int]:
    """A published IMRF cycle; returns the process id and event ids by kind."""
    r = await api.client.post(
        "/api/processes",
        json={"slug": slug, "name": "Global Compact review", "time_zone": "America/New_York"},
        headers=api.auth,
    )
    assert r.status_code == 201, r.text
    ids = {"process": r.json()["id"]}
    anchor = (datetime.now(UTC) + timedelta(days=forum_in_days)).date().isoformat()
    r = await api.client.post(
        f"/api/processes/{ids['process']}/instantiate",
        json={"template": "imrf", "anchor_date": anchor, "status": "published"},
        headers=api.auth,
    )
    assert r.status_code == 201, r.text
    ids.update({e["kind"]: e["id"] for e in r.json()["events"]})
    return ids


async def set_event(api: Api, event_id: int, **changes: Any) -> None:
    r = await api.client.patch(f"/api/events/{event_id}", json=changes, headers=api.auth)
    assert r.status_code == 200, r.text


async def set_columns(settings: Settings, event_id: int, **values: Any) -> None:
    """Registration rules the API sets only at creation (double opt-in, accreditation)."""
    db = open_database(settings)
    try:
        async with db.writer.begin() as session:
            await session.execute(update(Event).where(Event.id == event_id).values(**values))
    finally:
        await db.dispose()


async def manage_token(settings: Settings, email: str) -> str:
    db = open_database(settings)
    try:
        async with db.reader() as session:
            reg = await session.scalar(select(Registration).where(Registration.email == email))
    finally:
        await db.dispose()
    assert reg is not None
    return sign(reg.id, reg.token_nonce, load_secret(settings.secret_key, settings.data_dir))


async def seed_pledges(settings: Settings, process_id: int, count: int = 60) -> None:
    """Pledges as a feed sync would leave them (the dashboard only reads them)."""
    rng = random.Random(7)
    now = datetime.now(UTC)
    db = open_database(settings)
    try:
        async with db.writer.begin() as session:
            feed = Feed(
                process_id=process_id,
                name=f"pledges-{process_id}",
                url="https://pledges.example.org/feed.json",
                format="json",
                interval_seconds=3600,
            )
            session.add(feed)
            await session.flush()
            rows = []
            for n in range(count):
                row = {
                    "feed_id": feed.id,
                    "process_id": process_id,
                    "source_id": f"p{n}",
                    "title": f"Pledge {n}",
                    "pledger_name": f"Pledger {n % 17}",
                    "pledger_type": rng.choice(("member_state", "stakeholder", "un_system")),
                    "country": rng.choice(("KEN", "MEX", "PHL", "DEU", "JOR")),
                    "region": REGIONS[n % len(REGIONS)] if n % 11 else "",
                    "pledge_type": "single",
                    "form": rng.choice(("financial", "human_resource", "process", "policy")),
                    "objectives": (chosen := sorted(rng.sample(range(1, 24), 2))),
                    "objective_mask": objective_mask(chosen),
                    "status": "active",
                    "submitted_at": now - timedelta(days=rng.randrange(0, 360)),
                    "content_hash": f"{n:064x}",
                }
                rows.append(row)
            await session.execute(insert(Pledge), rows)
    finally:
        await db.dispose()


async def sign_in(api: Api) -> str:
    """Sign the test client in as the API's organizer; returns the page's CSRF token.

    The session cookie is Secure, so the client speaks to the app as https.
    """
    api.client.base_url = "https://127.0.0.1:8000"  # type: ignore[assignment]
    page = await api.client.get("/organize/sign-in")
    token = CSRF.search(page.text)
    assert token is not None
    r = await api.client.post(
        "/organize/sign-in",
        data={"token": api.token, "_csrf_token": token.group(1), "next": "/organize"},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    return token.group(1)


# --- Catalogs -----------------------------------------------------------------------------


def test_catalogs_english_french_spanish_complete_arabic_consistent() -> None:
    cats = i18n.catalogs()
    placeholders = re.compile(r"\{(\w+)\}")
    for lang in ("fr", "es", "ar"):
        extra = set(cats[lang]) - set(cats["en"])
        assert not extra, f"{lang} has keys English lacks: {sorted(extra)}"
        for key, text in cats[lang].items():
            assert set(placeholders.findall(text)) == set(placeholders.findall(cats["en"][key])), (
                lang,
                key,
            )
    for lang in ("fr", "es"):
        missing = set(cats["en"]) - set(cats[lang])
        assert not missing, f"{lang} lacks: {sorted(missing)}"
    used = set()
    for template in TEMPLATES.glob("*.html"):
        used |= set(
            re.findall(r"""\bt\(["']([a-z_]+\.[a-z0-9_.]*[a-z0-9])["']""", template.read_text())
        )
    assert used, "no t() calls found"
    assert not used - set(cats["en"]), sorted(used - set(cats["en"]))
    for path in (TEMPLATES.parent / "locales").glob("*.toml"):
        tomllib.loads(path.read_text(encoding="utf-8"))


def test_language_negotiation() -> None:
    assert i18n.negotiate(None, None, accept_language="de-DE,fr;q=0.8,en;q=0.5") == "fr"
    assert i18n.negotiate("xx", "es", accept_language="fr") == "es"
    assert i18n.negotiate(None, None, "ar-EG", accept_language="fr") == "ar"
    assert i18n.negotiate(accept_language="de") == "en"
    assert i18n.direction("ar") == "rtl" and i18n.direction("fr") == "ltr"


# --- Public pages -------------------------------------------------------------------------


async def test_every_public_page_answers(api: Api) -> None:
    ids = await cycle(api)
    await seed_pledges(api.settings, ids["process"])
    r = await api.client.post(
        f"/api/events/{ids['stakeholder_hearing']}/registrations",
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
    token = await manage_token(api.settings, "amina@example.org")
    pages = [
        "/",
        "/processes/gcm",
        f"/events/{ids['review_forum']}",
        f"/events/{ids['stakeholder_hearing']}",
        f"/events/{ids['round_table']}",
        f"/events/{ids['stakeholder_hearing']}/register",
        f"/events/{ids['stakeholder_hearing']}/registered?status=waiting&position=3",
        f"/registrations/{token}",
        f"/registrations/{token}/confirm",
        "/processes/gcm/pledges",
        "/processes/gcm/pledges?region=Africa&form=policy&objective=3",
        "/organize/sign-in",
    ]
    for path in pages:
        page = await api.client.get(path)
        assert page.status_code == 200, (path, page.text[:500])
        assert page.headers["content-type"].startswith("text/html"), path
        assert '<html lang="en" dir="ltr"' in page.text, path
        assert "<main" in page.text and "{{" not in page.text, path
    for missing in ("/processes/nope", "/events/99999", "/processes/nope/pledges"):
        assert (await api.client.get(missing)).status_code == 404
    css = await api.client.get("/static/site.css")
    assert css.status_code == 200 and "max-age=31536000" in css.headers["cache-control"]
    assert (await api.client.get("/static/site.js")).status_code == 200


async def test_languages_persist_and_arabic_is_right_to_left(api: Api) -> None:
    ids = await cycle(api)
    path = f"/events/{ids['stakeholder_hearing']}"
    french = await api.client.get(path, headers={"Accept-Language": "fr-CH, fr;q=0.9, en;q=0.5"})
    assert 'lang="fr" dir="ltr"' in french.text and "Programme" in french.text
    chosen = await api.client.get(f"/language/es?next={path}", follow_redirects=False)
    assert chosen.status_code == 303 and chosen.headers["location"] == path
    assert "lang=es" in chosen.headers["set-cookie"]
    spanish = await api.client.get(path, headers={"Accept-Language": "fr"})
    assert 'lang="es"' in spanish.text and "Inscripción" in spanish.text
    arabic = await api.client.get(f"{path}?lang=ar")
    assert '<html lang="ar" dir="rtl"' in arabic.text and "البرنامج" in arabic.text
    # Dates and numbers in the visitor's language (Babel).
    assert re.search(
        r"(janv\.|févr\.|mars|avr\.|mai|juin|juil\.|août|sept\.|oct\.|nov\.|déc\.)", french.text
    )
    # A next= that leaves the site is ignored.
    away = await api.client.get("/language/fr?next=//evil.example/", follow_redirects=False)
    assert away.headers["location"] == "/"
    unknown = await api.client.get("/language/xx?next=/", follow_redirects=False)
    assert "set-cookie" not in unknown.headers


async def test_time_zone_choice_shows_the_visitors_own_time(api: Api) -> None:
    ids = await cycle(api)
    path = f"/events/{ids['review_forum']}"
    r = await api.client.get(f"/timezone?tz=Asia/Tokyo&next={path}", follow_redirects=False)
    assert r.status_code == 303 and "Asia/Tokyo" in r.headers["set-cookie"]
    page = await api.client.get(path)
    assert 'data-tz="Asia/Tokyo"' in page.text and "Tokyo" in page.text
    bad = await api.client.get(f"/timezone?tz=Mars/Base&next={path}", follow_redirects=False)
    assert bad.headers["location"].endswith("tz_error=1")
    page = await api.client.get(bad.headers["location"])
    assert 'aria-invalid="true"' in page.text


async def test_registration_errors_name_their_fields(api: Api) -> None:
    ids = await cycle(api)
    hearing = ids["stakeholder_hearing"]
    await set_event(
        api,
        hearing,
        questions=[
            {"key": "why", "label": "Why do you come?", "type": "text", "required": True},
            {"key": "access", "label": "Need step-free access?", "type": "yes_no"},
        ],
    )
    r = await api.client.post(
        f"/events/{hearing}/register",
        data={"name": "", "email": "nope", "country": "XYZ", "time_zone": "Mars/Base"},
    )
    assert r.status_code == 400
    page = r.text
    assert 'id="error-summary"' in page
    for label, field in (
        ("Full name", "f-name"),
        ("Email address", "f-email"),
        ("You take part as", "f-constituency"),
        ("Country", "f-country"),
        ("Your time zone", "f-time_zone"),
        ("Why do you come?", "f-answers-why"),
    ):
        assert f'<a href="#{field}">{label}: ' in page, label
        assert re.search(rf'id="{field}"[^>]*aria-invalid="true"', page), field
        assert f'id="{field}-error"' in page, field
    assert "Enter an email address such as name@example.org." in page
    assert 'value="nope"' in page  # what was typed is kept
    french = await api.client.post(
        f"/events/{hearing}/register", data={"email": "nope"}, headers={"Accept-Language": "fr"}
    )
    assert "Nom complet : Remplissez ce champ." in french.text.replace("\u00a0", " ")

    form = {
        "name": "Amina",
        "email": "amina@example.org",
        "constituency": "academia",
        "country": "KEN",
        "language": "fr",
        "time_zone": "Africa/Nairobi",
        "answers.why": "To speak",
        "answers.access": "yes",
    }
    r = await api.client.post(f"/events/{hearing}/register", data=form, follow_redirects=False)
    assert r.status_code == 303, r.text
    again = await api.client.post(f"/events/{hearing}/register", data=form)
    assert again.status_code == 400 and "already registered" in again.text
    assert '<a href="#f-email">Email address: ' in again.text
    db = open_database(api.settings)
    try:
        async with db.reader() as session:
            reg = await session.scalar(select(Registration))
    finally:
        await db.dispose()
    assert reg is not None and reg.answers == {"why": "To speak", "access": True}


async def test_full_event_puts_people_on_the_waiting_list(api: Api) -> None:
    ids = await cycle(api)
    hearing = ids["stakeholder_hearing"]
    await set_event(api, hearing, capacity=1)
    positions = []
    for n in range(3):
        r = await api.client.post(
            f"/events/{hearing}/register",
            data={
                "name": f"Person {n}",
                "email": f"p{n}@example.org",
                "constituency": "other",
                "country": "MEX",
                "language": "es",
                "time_zone": "America/Mexico_City",
            },
            follow_redirects=False,
        )
        assert r.status_code == 303
        positions.append(r.headers["location"])
    assert positions[0].endswith("status=held")
    assert positions[2].endswith("status=waiting&position=2")
    page = await api.client.get(positions[2])
    assert "On the waiting list" in page.text and "waiting list: 2" in page.text
    event = await api.client.get(f"/events/{hearing}")
    assert "The event is full" in event.text


async def test_manage_page_update_speak_withdraw_cancel(api: Api) -> None:
    ids = await cycle(api)
    hearing = ids["stakeholder_hearing"]
    await set_columns(api.settings, hearing, confirmation_required=False)
    r = await api.client.post(
        f"/events/{hearing}/register",
        data={
            "name": "Amina",
            "email": "amina@example.org",
            "constituency": "academia",
            "country": "KEN",
            "language": "en",
            "time_zone": "Africa/Nairobi",
        },
        follow_redirects=False,
    )
    assert r.headers["location"].endswith("status=confirmed")
    token = await manage_token(api.settings, "amina@example.org")
    base = f"/registrations/{token}"
    bad = await api.client.post(f"{base}/update", data={"name": "", "time_zone": "Nowhere"})
    assert bad.status_code == 400 and '<a href="#f-name">Full name: ' in bad.text
    r = await api.client.post(
        f"{base}/update",
        data={"name": "Amina D.", "language": "fr", "time_zone": "Europe/Paris"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == f"{base}?done=updated"
    page = await api.client.get(r.headers["location"])
    assert 'lang="fr"' in page.text and "Amina D." in page.text and "Paris" in page.text

    r = await api.client.post(f"{base}/speaker-request", data={"topic": "", "language": "fr"})
    assert r.status_code == 400 and 'id="f-topic-error"' in r.text
    r = await api.client.post(
        f"{base}/speaker-request",
        data={"topic": "Safe pathways", "language": "fr"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    page = await api.client.get(base)
    assert "Safe pathways" in page.text and "Demandée" in page.text
    r = await api.client.post(f"{base}/speaker-request/withdraw", follow_redirects=False)
    assert r.status_code == 303
    r = await api.client.post(f"{base}/cancel", follow_redirects=False)
    page = await api.client.get(r.headers["location"])
    assert "Votre inscription est annulée." in page.text
    again = await api.client.post(f"{base}/cancel")
    assert again.status_code == 409


async def test_pledge_dashboard_draws_charts_and_filters(api: Api) -> None:
    ids = await cycle(api)
    await seed_pledges(api.settings, ids["process"], count=60)
    page = await api.client.get("/processes/gcm/pledges")
    assert page.status_code == 200
    assert "Pledges: 60" in page.text
    assert page.text.count("<svg viewBox=") == 5
    # 6 regions (one "none given"), 23 objectives, 4 forms, 4 pledgers, and the months.
    assert page.text.count('class="bar"') >= 6 + 23 + 4 + 4 + 6
    assert "api/pledges/stats?process_id=" in page.text
    africa = await api.client.get("/processes/gcm/pledges?region=Africa")
    total = re.search(r"Pledges: (\d+)", africa.text)
    assert total is not None and 0 < int(total.group(1)) < 60
    arabic = await api.client.get("/processes/gcm/pledges?lang=ar")
    assert 'dir="rtl"' in arabic.text and "لوحة التعهدات" in arabic.text


# --- Organizer pages ----------------------------------------------------------------------


async def test_organizer_session_cookie_and_csrf(api: Api) -> None:
    ids = await cycle(api)
    api.client.base_url = "https://127.0.0.1:8000"  # type: ignore[assignment]
    signed_out = await api.client.get("/organize", follow_redirects=False)
    assert signed_out.status_code == 303
    assert signed_out.headers["location"].startswith("/organize/sign-in?next=")
    csrf_cookie = signed_out.headers["set-cookie"]
    form = await api.client.get("/organize/sign-in")
    assert "fs_csrf=" in csrf_cookie and "Secure" in csrf_cookie and "HttpOnly" in csrf_cookie
    csrf = CSRF.search(form.text)
    assert csrf is not None
    refused = await api.client.post("/organize/sign-in", data={"token": api.token})
    assert refused.status_code == 403 and "This form has expired" in refused.text
    wrong = await api.client.post(
        "/organize/sign-in", data={"token": "fs_nope", "_csrf_token": csrf.group(1)}
    )
    assert wrong.status_code == 400 and 'id="f-token-error"' in wrong.text
    r = await api.client.post(
        "/organize/sign-in",
        data={"token": api.token, "_csrf_token": csrf.group(1), "next": "/organize"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/organize"
    session = r.headers["set-cookie"]
    assert session.startswith("fs_organizer=")
    for flag in ("Secure", "HttpOnly", "SameSite=lax", "Path=/organize"):
        assert flag in session, flag
    assert api.token not in session

    pid = ids["process"]
    for path in (
        "/organize",
        f"/organize/processes/{pid}",
        f"/organize/processes/{pid}?year={datetime.now(UTC).year}",
        f"/organize/events/{ids['review_forum']}/move",
        f"/organize/events/{ids['stakeholder_hearing']}",
        f"/organize/processes/{pid}/reminders",
        f"/organize/processes/{pid}/feeds",
    ):
        page = await api.client.get(path)
        assert page.status_code == 200, (path, page.text[:300])
        assert "Sign out" in page.text

    move = f"/organize/events/{ids['review_forum']}/move"
    new_day = (datetime.now(UTC) + timedelta(days=52)).date().isoformat()
    body = {"date": new_day, "time": "10:00", "action": "apply"}
    assert (await api.client.post(move, data=body)).status_code == 403
    before = (await api.client.get(f"/api/events/{ids['stakeholder_hearing']}")).json()
    preview = await api.client.post(
        move, data={**body, "action": "preview", "_csrf_token": csrf.group(1)}
    )
    assert preview.status_code == 200
    assert f'id="preview-event-{ids["stakeholder_hearing"]}"' in preview.text
    unchanged = (await api.client.get(f"/api/events/{ids['stakeholder_hearing']}")).json()
    assert unchanged["start"] == before["start"]
    done = await api.client.post(
        move, data={**body, "_csrf_token": csrf.group(1)}, follow_redirects=False
    )
    assert done.status_code == 303 and "moved=" in done.headers["location"]
    after = (await api.client.get(f"/api/events/{ids['stakeholder_hearing']}")).json()
    hearing_day = (datetime.now(UTC) + timedelta(days=51)).date().isoformat()
    assert after["start_local"].startswith(hearing_day)
    timeline = await api.client.get(done.headers["location"])
    assert f'id="row-event-{ids["stakeholder_hearing"]}"' in timeline.text
    assert "badge-moved" in timeline.text
    bad = await api.client.post(
        move, data={"date": "soon", "time": "", "_csrf_token": csrf.group(1)}
    )
    assert bad.status_code == 400 and "Enter a date and a time." in bad.text

    out = await api.client.post(
        "/organize/sign-out", data={"_csrf_token": csrf.group(1)}, follow_redirects=False
    )
    assert out.status_code == 303
    assert (await api.client.get("/organize", follow_redirects=False)).status_code == 303


async def test_organizer_of_another_process_is_refused(api: Api) -> None:
    ids = await cycle(api)
    other = await api.new_token("Other secretariat")
    api.token = other
    await sign_in(api)
    page = await api.client.get(f"/organize/processes/{ids['process']}")
    assert page.status_code == 403
    assert (await api.client.get(f"/organize/events/{ids['review_forum']}")).status_code == 403


async def test_organizer_approves_rejects_cancels_and_orders_speakers(api: Api) -> None:
    ids = await cycle(api)
    hearing = ids["stakeholder_hearing"]
    await set_event(api, hearing, capacity=2)
    await set_columns(api.settings, hearing, accreditation_required=True)
    for n in range(3):
        r = await api.client.post(
            f"/api/events/{hearing}/registrations",
            json={
                "name": f"Person {n}",
                "email": f"p{n}@example.org",
                "organisation": f"Org {n}",
                "constituency": "civil_society",
                "country": "PHL",
                "language": "en",
                "time_zone": "Asia/Manila",
            },
        )
        assert r.json()["status"] == "pending_approval"
    csrf = await sign_in(api)
    db = open_database(api.settings)
    try:
        async with db.reader() as session:
            regs = {r.email: r.id for r in await session.scalars(select(Registration))}
    finally:
        await db.dispose()
    base = f"/organize/events/{hearing}/registrations"
    page = await api.client.get(f"/organize/events/{hearing}?status=pending_approval")
    assert page.text.count("Approve</button>") == 3
    for email in ("p0@example.org", "p1@example.org"):
        r = await api.client.post(
            f"{base}/{regs[email]}/approve", data={"_csrf_token": csrf}, follow_redirects=False
        )
        assert r.status_code == 303 and r.headers["location"].endswith("done=approve")
    r = await api.client.post(
        f"{base}/{regs['p2@example.org']}/reject",
        data={"_csrf_token": csrf, "reason": "Not in scope"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    again = await api.client.post(
        f"{base}/{regs['p2@example.org']}/reject", data={"_csrf_token": csrf}
    )
    assert again.status_code == 409 and "could not be done" in again.text

    # Both seated people ask for the floor; the organizer selects, reorders, declines.
    await set_columns(api.settings, hearing, accreditation_required=False)
    for email in ("p0@example.org", "p1@example.org"):
        token = await manage_token(api.settings, email)
        r = await api.client.post(
            f"/api/registrations/{token}/speaker-request",
            json={"topic": f"Topic of {email}", "language": "en"},
        )
        assert r.status_code == 201, r.text
    r = await api.client.post(
        f"/organize/events/{hearing}/speakers/select",
        data={"_csrf_token": csrf, "count": "2", "slot_minutes": "10", "gap_minutes": "0"},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    order = (await api.client.get(f"/api/events/{hearing}/speakers")).json()["speakers"]
    assert [s["name"] for s in order] == ["Person 0", "Person 1"]
    requests = (
        await api.client.get(f"/api/events/{hearing}/speaker-requests", headers=api.auth)
    ).json()
    second = next(q["id"] for q in requests if q["name"] == "Person 1")
    r = await api.client.post(
        f"/organize/events/{hearing}/speakers/{second}/up",
        data={"_csrf_token": csrf},
        follow_redirects=False,
    )
    assert r.status_code == 303
    order = (await api.client.get(f"/api/events/{hearing}/speakers")).json()["speakers"]
    assert [s["name"] for s in order] == ["Person 1", "Person 0"]
    assert order[0]["slot_start"] < order[1]["slot_start"]
    r = await api.client.post(
        f"/organize/events/{hearing}/speakers/{second}/decline",
        data={"_csrf_token": csrf},
        follow_redirects=False,
    )
    assert r.status_code == 303
    r = await api.client.post(
        f"{base}/{regs['p0@example.org']}/cancel",
        data={"_csrf_token": csrf},
        follow_redirects=False,
    )
    assert r.status_code == 303
    page = await api.client.get(f"/organize/events/{hearing}")
    assert "Cancelled; the registrant is mailed" not in page.text  # the message needs done=
    page = await api.client.get(r.headers["location"])
    assert "Cancelled; the registrant is mailed" in page.text

    ledger = await api.client.get(f"/organize/processes/{ids['process']}/reminders?status=planned")
    assert ledger.status_code == 200
    kinds = await api.client.get(f"/organize/processes/{ids['process']}/reminders?kind=approved")
    assert "p0@example.org" in kinds.text and "p2@example.org" not in kinds.text
