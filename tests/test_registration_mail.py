# ruff: noqa: RUF001 (expected texts keep the typography of each language)
"""Registration mail end to end, on SQLite and PostgreSQL, through a real SMTP server.

The whole app runs (``create_app``) with SMTP settings pointing at aiosmtpd; its own outbox
worker delivers what the registration routes enqueue. What arrives is parsed with the
stdlib ``email`` package, and the links in it are followed back into the API.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

import pytest
from icalendar import Calendar
from litestar.testing import AsyncTestClient

from scheduler.app import create_app
from scheduler.database import open_database
from scheduler.organizers import create_organizer
from scheduler.reminders import REMINDER_KINDS
from scheduler.settings import Settings
from tests.mail_server import MailServer, Received

FROM = "Forum Scheduler <noreply@forum.example.org>"
BASE = "https://forum.example.org"
YEAR = datetime.now(UTC).year + 2
START = datetime(YEAR, 5, 12, 14, 0, tzinfo=UTC)  # 10:00 in New York, 14:00 in Dakar
END = datetime(YEAR, 5, 12, 21, 0, tzinfo=UTC)  # 17:00 in New York, 21:00 in Dakar
TITLE = "Informal multi-stakeholder hearing"


@dataclass
class Site:
    """The running app, an organizer's headers, and the SMTP server it mails to."""

    client: Any
    auth: dict[str, str]
    server: MailServer

    async def event(self, **changes: Any) -> dict[str, Any]:
        r = await self.client.post(
            "/api/processes",
            json={"slug": "gcm", "name": "GCM review", "time_zone": "America/New_York"},
            headers=self.auth,
        )
        assert r.status_code == 201, r.text
        body: dict[str, Any] = {
            "process_id": r.json()["id"],
            "kind": "stakeholder_hearing",
            "title": TITLE,
            "time_zone": "America/New_York",
            "start": START.isoformat(),
            "end": END.isoformat(),
            "venue": "Conference Room 4",
            "status": "published",
        }
        body.update(changes)
        r = await self.client.post("/api/events", json=body, headers=self.auth)
        assert r.status_code == 201, r.text
        event: dict[str, Any] = r.json()
        return event

    async def register(self, event_id: int, name: str, **changes: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": name,
            "email": name.split()[0].lower() + "@example.org",
            "constituency": "civil_society",
            "country": "SEN",
            "language": "en",
            "time_zone": "Africa/Dakar",
        }
        body.update(changes)
        r = await self.client.post(f"/api/events/{event_id}/registrations", json=body)
        assert r.status_code == 201, r.text
        receipt: dict[str, Any] = r.json()
        return receipt

    async def mail(self, to: str, subject_part: str) -> EmailMessage:
        """The one mail to ``to`` whose subject contains ``subject_part`` (waits, bounded)."""
        deadline = time.monotonic() + 15
        while True:
            found = [
                m.parsed()
                for m in self.server.messages
                if m.rcpt_tos == [to] and subject_part in str(m.parsed()["Subject"])
            ]
            if found:
                assert len(found) == 1, [str(m["Subject"]) for m in found]
                return found[0]
            assert time.monotonic() < deadline, f"no mail {subject_part!r} to {to}"
            await asyncio.sleep(0.05)

    async def each_notification_mailed_once(self, expected: int) -> list[Received]:
        """Wait until the outbox reports ``expected`` messages sent; then the server must
        hold exactly one mail per message, each with its own Message-ID."""
        deadline = time.monotonic() + 15
        while True:
            r = await self.client.get(
                "/api/notifications", params={"limit": 1000}, headers=self.auth
            )
            assert r.status_code == 200, r.text
            # Reminders are planned for the days before the event: not mailed yet.
            items = [i for i in r.json()["items"] if i["kind"] not in REMINDER_KINDS]
            if len(items) >= expected and all(i["status"] == "sent" for i in items):
                break
            assert time.monotonic() < deadline, items
            await asyncio.sleep(0.05)
        assert len(items) == expected, [(i["kind"], i["recipient_email"]) for i in items]
        received = self.server.messages
        ids = [str(m.parsed()["Message-ID"]) for m in received]
        assert len(ids) == len(set(ids)) == expected
        by_id = {str(m.parsed()["Message-ID"]): m for m in received}
        assert set(by_id) == {i["message_id"] for i in items}
        for item in items:
            assert item["attempts"] == 1
            assert by_id[item["message_id"]].rcpt_tos == [item["recipient_email"]]
        return received


@pytest.fixture
async def site(settings: Settings, mail_server: MailServer) -> AsyncIterator[Site]:
    smtp = settings.replace(
        mail_transport="smtp",
        mail_from=FROM,
        smtp_host="127.0.0.1",
        smtp_port=mail_server.port,
        smtp_pool_size=2,
        smtp_timeout_seconds=5,
        base_url=BASE,
    )
    db = open_database(smtp)
    try:
        async with db.writer.begin() as session:
            _, token = await create_organizer(session, "Secretariat", [])
    finally:
        await db.dispose()
    async with AsyncTestClient(app=create_app(smtp), base_url="http://127.0.0.1:8000") as client:
        yield Site(client, {"Authorization": f"Bearer {token}"}, mail_server)


def text_of(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def html_of(msg: EmailMessage) -> str:
    part = msg.get_body(("html",))
    assert part is not None
    return str(part.get_content())


def line(text: str, label: str) -> str:
    (found,) = [x for x in text.splitlines() if x.startswith(label + ":")]
    return found


def link(text: str, action: str = "") -> str:
    """The token of the manage (or, with ``action``, the confirm) link in a mail's text."""
    urls = re.findall(r"https?://\S+", text)
    tail = f"/{action}" if action else ""
    matches = [
        m.group(1)
        for url in urls
        if url.startswith(BASE + "/")
        and (m := re.fullmatch(r"/(?:api/)?registrations/([^/]+)" + tail, urlsplit(url).path))
    ]
    assert len(matches) == 1, urls
    return matches[0]


def calendar_of(msg: EmailMessage) -> Calendar:
    (attachment,) = list(msg.iter_attachments())
    assert attachment.get_content_type() == "text/calendar"
    assert attachment.get_filename() == "invite.ics"
    content = attachment.get_content()
    return Calendar.from_ical(content if isinstance(content, bytes) else content.encode())


async def test_a_french_registrant_confirms_through_the_mailed_link(site: Site) -> None:
    event = await site.event()
    receipt = await site.register(event["id"], "Awa Ndiaye", email="awa@example.org", language="fr")
    assert receipt["status"] == "held"

    held = await site.mail("awa@example.org", "Veuillez confirmer votre inscription")
    # (Header text is flattened to one line of plain spaces; the stdlib parser keeps the
    # fold's leading space, hence the split.)
    subject = " ".join(str(held["Subject"]).split())
    assert subject == f"Veuillez confirmer votre inscription : {TITLE}"
    assert held["Content-Language"] == "fr"
    assert held["From"].addresses[0].addr_spec == "noreply@forum.example.org"
    text = text_of(held)
    assert text.startswith("Bonjour Awa Ndiaye,")
    assert "Nous vous remercions de votre inscription" in text
    assert "Thank you" not in text
    # Her own time (Dakar) first, then the local time at the event (New York).
    mine = line(text, "Date et heure")
    assert f"12 mai {YEAR}" in mine and "14:00" in mine and "21:00" in mine
    assert "10:00" not in mine
    there = line(text, "Heure locale de l’événement")
    assert f"12 mai {YEAR}" in there and "10:00" in there and "17:00" in there
    assert line(text, "Lieu") == "Lieu: Conference Room 4"
    assert "Veuillez confirmer avant le" in text

    # The link in the mail confirms the seat. Opening it (a GET, as a mail program or a
    # link scanner does) shows a page and confirms nothing; the API path it names does.
    token = link(text, "confirm")
    (url,) = [u for u in re.findall(r"https?://\S+", text) if u.endswith(f"{token}/confirm")]
    r = await site.client.get(urlsplit(url).path)
    assert r.status_code == 200, r.text
    view = (await site.client.get(f"/api/registrations/{token}")).json()
    assert view["status"] == "held"
    r = await site.client.post(f"/api/registrations/{token}/confirm")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "confirmed"

    confirmed = await site.mail("awa@example.org", "Votre inscription est confirmée")
    text = text_of(confirmed)
    assert "Votre place pour" in text and "invite.ics" in text
    assert "Veuillez confirmer" not in text  # nothing left to confirm
    cal = calendar_of(confirmed)
    (vevent,) = cal.walk("VEVENT")
    assert str(vevent["UID"]) == f"{event['uid']}@forum-scheduler"
    start = vevent.decoded("DTSTART")
    assert start == START
    assert str(vevent["DTSTART"].params["TZID"]) == "America/New_York"
    assert start.utcoffset() == timedelta(hours=-4)
    assert vevent.decoded("DTEND") == END
    assert str(vevent["SUMMARY"]) == TITLE
    assert str(vevent["URL"]) == f"{BASE}/events/{event['id']}"
    assert token not in cal.to_ical().decode()  # the secret link is not in the calendar...

    # ...but it is in the text, and it shows the confirmed registration.
    manage = link(text)
    view = (await site.client.get(f"/api/registrations/{manage}")).json()
    assert (view["id"], view["status"]) == (receipt["id"], "confirmed")

    await site.each_notification_mailed_once(2)


async def test_waiting_list_and_promotion_mails(site: Site) -> None:
    event = await site.event(capacity=1, confirmation_required=False)
    eid = event["id"]
    first = await site.register(eid, "Amina Diallo", time_zone="America/New_York")
    second = await site.register(eid, "Bruno Diaz", language="es", time_zone="America/Bogota")
    third = await site.register(eid, "Chen Li", time_zone="Asia/Shanghai")
    assert [x["status"] for x in (first, second, third)] == ["confirmed", "waiting", "waiting"]

    confirmed = await site.mail("amina@example.org", "Your registration is confirmed")
    text = text_of(confirmed)
    assert line(text, "When").startswith("When: ")
    assert "10:00" in line(text, "When")
    assert "Local time at the event" not in text  # her zone is the event's own
    assert str(calendar_of(confirmed).walk("VEVENT")[0]["UID"]) == f"{event['uid']}@forum-scheduler"

    waiting_es = await site.mail("bruno@example.org", "Está en la lista de espera")
    assert "Su posición en la lista de espera: 1." in text_of(waiting_es)
    assert list(waiting_es.iter_attachments()) == []
    waiting_en = await site.mail("chen@example.org", "You are on the waiting list")
    assert "Your position on the waiting list: 2." in text_of(waiting_en)
    when = line(text_of(waiting_en), "When")  # 14:00 UTC is 10 PM in Shanghai
    assert f"May 12, {YEAR}, 10:00\u202fPM" in when and "(China Standard Time)" in when

    # Amina cancels with the link in her mail; Bruno gets her seat and is told at once.
    r = await site.client.post(f"/api/registrations/{link(text)}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["promoted"] == 1
    cancelled = await site.mail("amina@example.org", "Your registration has been cancelled")
    assert "has been cancelled" in text_of(cancelled)
    promoted = await site.mail("bruno@example.org", "Hay una plaza disponible para usted")
    text = text_of(promoted)
    assert "ha quedado libre una plaza" in text
    assert "Le rogamos que confirme" not in text  # no double opt-in for this event
    (vevent,) = calendar_of(promoted).walk("VEVENT")
    assert vevent.decoded("DTSTART") == START
    view = (await site.client.get(f"/api/registrations/{link(text)}")).json()
    assert (view["id"], view["status"]) == (second["id"], "confirmed")
    chen = (await site.client.get(f"/api/registrations/{link(text_of(waiting_en))}")).json()
    assert (chen["status"], chen["waitlist_position"]) == ("waiting", 1)

    received = await site.each_notification_mailed_once(5)
    assert sorted(m.rcpt_tos[0] for m in received) == [
        "amina@example.org", "amina@example.org", "bruno@example.org", "bruno@example.org",
        "chen@example.org",
    ]  # fmt: skip


async def test_arabic_mail_is_right_to_left(site: Site) -> None:
    event = await site.event()
    await site.register(event["id"], "Layla Haddad", language="ar", time_zone="Asia/Beirut",
                        country="LBN")  # fmt: skip
    await site.register(event["id"], "Amina Diallo")
    arabic = await site.mail("layla@example.org", "يُرجى تأكيد تسجيلك")
    assert arabic["Content-Language"] == "ar"
    html = html_of(arabic)
    assert '<html lang="ar" dir="rtl">' in html
    assert "text-align:right" in html
    assert "شكرًا لتسجيلك" in html
    assert "عزيزي/عزيزتي Layla Haddad،" in text_of(arabic)
    english = await site.mail("amina@example.org", "Please confirm your registration")
    assert '<html lang="en" dir="ltr">' in html_of(english)
    await site.each_notification_mailed_once(2)
