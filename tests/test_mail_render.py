# ruff: noqa: RUF001 (expected texts keep the typography of each language: dashes, apostrophes)
"""Mail rendering: texts in four languages, times in the reader's zone, safe headers, ICS.

Pure: every message is built in memory, serialized to bytes and parsed back with the
stdlib ``email`` package, as a mail program would see it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from icalendar import Calendar

from scheduler.mail_render import KINDS, RenderError, catalog, render
from scheduler.models import Event, Notification

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
NOT_ABOUT_ONE_EVENT = ("milestone_reminder", "reminder_digest", "subscription_confirm")
FROM = "Forum Scheduler <noreply@forum.example.org>"
LINKS = {
    "manage_url": "https://forum.example.org/registrations/7.abc",
    "confirm_url": "https://forum.example.org/registrations/7.abc/confirm",
    "event_url": "https://forum.example.org/api/events/3",
}


def make_event(**changes: Any) -> Event:
    values: dict[str, Any] = {
        "id": 3,
        "uid": "5b0c1f7e-0000-4000-8000-000000000003",
        "process_id": 1,
        "kind": "review_forum",
        "title": "International Migration Review Forum",
        "description": "Plenary and round tables.",
        "venue": "UN Headquarters, New York",
        "online_url": "https://webtv.example.org/imrf",
        "time_zone": "America/New_York",
        "starts_at": datetime(2026, 5, 12, 14, 0, tzinfo=UTC),  # 10:00 in New York
        "ends_at": datetime(2026, 5, 12, 17, 0, tzinfo=UTC),
        "status": "published",
        "rrule": None,
        "exdates": [],
        "sequence": 2,
        "created_at": NOW,
        "updated_at": NOW,
    }
    values.update(changes)
    return Event(**values)


def make_note(kind: str = "registration_confirmed", **changes: Any) -> Notification:
    event = make_event()
    context: dict[str, Any] = {
        "event_title": event.title,
        "event_start": event.starts_at.isoformat(),
        "event_end": event.ends_at.isoformat(),
        "event_time_zone": event.time_zone,
        "venue": event.venue,
        "online_url": event.online_url,
        "position": None,
        "hold_expires_at": None,
        "reason": "",
    }
    context.update(changes.pop("context", {}))
    values: dict[str, Any] = {
        "id": 42,
        "kind": kind,
        "recipient_email": "amina@example.org",
        "recipient_name": "Amina Diallo",
        "language": "en",
        "time_zone": "Europe/Paris",
        "context": context,
        "status": "sending",
        "reason": "",
        "attempts": 1,
        "message_id": "",
        "created_at": datetime(2026, 4, 30, 9, 30, 15, 123456, tzinfo=UTC),
        "registration_id": 7,
        "event_id": 3,
    }
    values.update(changes)
    return Notification(**values)


def build(note: Notification, event: Event | None = None, **kw: Any) -> EmailMessage:
    """Render, serialize and parse back."""
    msg = render(
        note,
        event=event if event is not None else make_event(),
        links=kw.get("links", LINKS),
        mail_from=kw.get("mail_from", FROM),
        now=kw.get("now", NOW),
    )
    parsed = message_from_bytes(msg.as_bytes(), policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def text_of(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


def html_of(msg: EmailMessage) -> str:
    part = msg.get_body(("html",))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


def subject_of(msg: EmailMessage) -> str:
    # A subject that fits on one continuation line is folded as "Subject:\r\n text".
    return str(msg["Subject"]).strip()


def attachments(msg: EmailMessage) -> list[EmailMessage]:
    return [p for p in msg.iter_attachments() if isinstance(p, EmailMessage)]


# --- The catalog --------------------------------------------------------------------------


def _placeholders(value: Any) -> set[str]:
    texts = value if isinstance(value, list) else [value]
    return {name for t in texts for name in re.findall(r"\{([a-z_]+)\}", t)}


def test_every_language_has_every_kind_with_the_same_placeholders() -> None:
    data = catalog()
    assert set(data) >= {"en", "fr", "es", "ar"}
    english = data["en"]
    assert set(english) == {"common", *KINDS}
    for lang, texts in data.items():
        assert set(texts) == set(english), lang
        for section, entries in english.items():
            assert set(texts[section]) == set(entries), (lang, section)
            for key, value in entries.items():
                other = texts[section][key]
                assert _placeholders(other) == _placeholders(value), (lang, section, key)
                if isinstance(value, list):
                    assert len(other) == len(value), (lang, section, key)


# Kinds about one event (deadline reminders, digests and subscription mails are checked in
# tests/test_reminders.py with contexts of their own).
EVENT_KINDS = [k for k in KINDS if k not in NOT_ABOUT_ONE_EVENT]


@pytest.mark.parametrize("lang", ["en", "fr", "es", "ar"])
@pytest.mark.parametrize("kind", EVENT_KINDS)
def test_every_kind_renders_in_every_language_with_the_manage_link(kind: str, lang: str) -> None:
    note = make_note(
        kind,
        language=lang,
        context={
            "position": 3,
            "reason": "Quota reached",
            "hold_expires_at": "2026-05-03T12:00:00+00:00",
        },
    )
    msg = build(note)
    assert msg["Content-Language"] == lang
    assert msg["Subject"] and "International Migration Review Forum" in msg["Subject"]
    for body in (text_of(msg), html_of(msg)):
        assert LINKS["manage_url"] in body
        assert "{" not in body.replace("{%", "")  # no placeholder left unfilled


# --- Content ------------------------------------------------------------------------------


def test_confirmation_request_in_english() -> None:
    note = make_note(
        "registration_confirm", context={"hold_expires_at": "2026-05-03T08:00:00+00:00"}
    )
    msg = build(note)
    assert (
        subject_of(msg) == "Please confirm your registration: International Migration Review Forum"
    )
    text = text_of(msg)
    assert text.startswith("Dear Amina Diallo,\n")
    assert LINKS["confirm_url"] in text and LINKS["confirm_url"] in html_of(msg)
    # The hold ends at 08:00 UTC, shown at 10:00 in the reader's zone (Paris, summer time).
    assert (
        "Please confirm by Sunday, May 3, 2026, 10:00\u202fAM (Central European Summer Time)"
        in text
    )
    assert attachments(msg) == []  # no calendar entry before the seat is confirmed
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg.get_content_type() == "multipart/alternative"


def test_times_in_the_readers_language_and_zone_and_the_events_local_time() -> None:
    msg = build(make_note("registration_confirmed", language="fr"))
    text = text_of(msg)
    assert "Date et heure: mardi 12 mai 2026, 16:00 – 19:00 (heure d’été d’Europe centrale)" in text
    assert (
        "Heure locale de l’événement: mardi 12 mai 2026, 10:00 – 13:00 "
        "(heure d’été de l’Est nord-américain)" in text
    )
    assert "Lieu: UN Headquarters, New York" in text

    spanish = text_of(
        build(make_note("registration_confirmed", language="es", time_zone="America/Santiago"))
    )
    assert "martes, 12 de mayo de 2026, 10:00 – 13:00" in spanish  # Santiago is UTC-4 in May
    assert "Hora local del evento" not in spanish  # same offset as New York that day: one line


def test_same_zone_as_the_event_gives_one_time_line() -> None:
    text = text_of(build(make_note(time_zone="America/New_York")))
    assert (
        "When: Tuesday, May 12, 2026, 10:00\u202fAM – 1:00\u202fPM (Eastern Daylight Time)" in text
    )
    assert "Local time at the event" not in text


def test_arabic_html_is_right_to_left() -> None:
    msg = build(make_note("waitlisted", language="ar", context={"position": 4}))
    html = html_of(msg)
    assert '<html lang="ar" dir="rtl">' in html
    assert "text-align:right" in html
    assert subject_of(msg) == "أنت على قائمة الانتظار: International Migration Review Forum"
    assert "ترتيبك في قائمة الانتظار" in text_of(msg)
    assert msg["Content-Language"] == "ar"
    english_html = html_of(build(make_note("waitlisted", context={"position": 4})))
    assert '<html lang="en" dir="ltr">' in english_html


def test_unknown_language_falls_back_to_english_and_regional_tags_use_their_language() -> None:
    msg = build(make_note(language="xx"))
    assert msg["Content-Language"] == "en"
    assert subject_of(msg).startswith("Your registration is confirmed")
    canadian = build(make_note(language="fr-CA"))
    assert canadian["Content-Language"] == "fr"
    assert subject_of(canadian).startswith("Votre inscription est confirmée")


def test_waitlist_position_reason_and_missing_values() -> None:
    waiting = text_of(build(make_note("waitlisted", context={"position": 12})))
    assert "Your position on the waiting list: 12." in waiting
    rejected = text_of(build(make_note("rejected", context={"reason": "Quota\r\nreached"})))
    assert "Reason given by the organizers: Quota reached" in rejected
    no_reason = text_of(build(make_note("rejected")))
    assert "Reason given" not in no_reason  # a paragraph about a value we lack is left out
    anonymous = text_of(build(make_note("cancelled", recipient_name="")))
    assert anonymous.startswith("Hello,\n")


def test_html_escapes_what_people_type() -> None:
    note = make_note(
        recipient_name="<script>alert(1)</script>",
        context={"event_title": "Forum <b>&</b> hearing"},
    )
    html = html_of(build(note))
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "Forum &lt;b&gt;&amp;&lt;/b&gt; hearing" in html


# --- Headers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "evil",
    [
        "Eve\r\nBcc: victim@example.org",
        "Eve\nBcc: victim@example.org",
        "Eve\rBcc: victim@example.org",
        "Eve\u2028Bcc: victim@example.org",
        "Eve\x85Bcc: victim@example.org",
        'Eve" <victim@example.org>, "x',
        "=?utf-8?q?Eve=0D=0ABcc:_victim@example.org?=",
    ],
)
def test_names_and_titles_cannot_inject_headers(evil: str) -> None:
    note = make_note(recipient_name=evil, context={"event_title": evil})
    raw = render(note, event=make_event(), links=LINKS, mail_from=FROM, now=NOW).as_bytes()
    msg = message_from_bytes(raw, policy=policy.default)
    assert msg["Bcc"] is None
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert not re.search(rb"(?im)^bcc:", head)
    to = msg["To"]
    assert [a.addr_spec for a in to.addresses] == ["amina@example.org"]
    assert len(msg.get_all("Subject")) == 1
    assert "\n" not in msg["Subject"] and "\r" not in msg["Subject"]


@pytest.mark.parametrize(
    "address", ["amina@example.org\r\nBcc: victim@example.org", "a b@example.org", "", "no-at"]
)
def test_a_broken_recipient_address_is_refused(address: str) -> None:
    with pytest.raises(RenderError):
        render(make_note(recipient_email=address), event=None, links=LINKS, mail_from=FROM, now=NOW)


def test_international_names_and_addresses() -> None:
    msg = build(
        make_note(recipient_name="José Müller-Łukasiewicz", recipient_email="josé@exämple.org")
    )
    (address,) = msg["To"].addresses
    assert address.display_name == "José Müller-Łukasiewicz"
    assert address.addr_spec == "josé@exämple.org"
    assert msg["From"].addresses[0].addr_spec == "noreply@forum.example.org"


def test_message_id_is_stable_per_row() -> None:
    note = make_note()
    first = build(note, now=NOW)["Message-ID"]
    again = build(make_note(), now=datetime(2026, 6, 1, tzinfo=UTC))["Message-ID"]
    assert first == again
    assert re.fullmatch(r"<notification-42\.[0-9a-f]+@forum\.example\.org>", first)
    assert build(make_note(id=43))["Message-ID"] != first
    stored = make_note(message_id="<notification-42.stored@forum.example.org>")
    assert build(stored)["Message-ID"] == "<notification-42.stored@forum.example.org>"


# --- Calendar attachment ------------------------------------------------------------------


def test_confirmed_seat_carries_a_calendar_entry() -> None:
    msg = build(make_note("registration_confirmed"))
    assert msg.get_content_type() == "multipart/mixed"
    (ics,) = attachments(msg)
    assert ics.get_content_type() == "text/calendar"
    assert ics.get_filename() == "invite.ics"
    cal = Calendar.from_ical(ics.get_content())
    (vevent,) = cal.walk("VEVENT")
    assert str(vevent["UID"]) == "5b0c1f7e-0000-4000-8000-000000000003@forum-scheduler"
    assert int(vevent["SEQUENCE"]) == 2
    start = vevent.decoded("DTSTART")
    assert start == datetime(2026, 5, 12, 14, 0, tzinfo=UTC)
    assert str(start.tzinfo) == "America/New_York"
    assert str(vevent["URL"]) == LINKS["event_url"]  # the public page, not the secret link
    assert cal.walk("VTIMEZONE")


def test_promotion_asks_for_confirmation_or_attaches_the_calendar() -> None:
    held = build(make_note("promoted", context={"hold_expires_at": "2026-05-03T08:00:00+00:00"}))
    assert LINKS["confirm_url"] in text_of(held)
    assert attachments(held) == []
    seated = build(make_note("promoted"))
    assert LINKS["confirm_url"] not in text_of(seated)
    assert len(attachments(seated)) == 1
    explicit = build(make_note("promoted", context={"needs_confirmation": True}))
    assert LINKS["confirm_url"] in text_of(explicit)


def test_other_kinds_never_show_the_confirm_button() -> None:
    for kind in ("registration_confirmed", "waitlisted", "cancelled", "hold_expired", "rejected"):
        note = make_note(kind, context={"hold_expires_at": "2026-05-03T08:00:00+00:00"})
        assert LINKS["confirm_url"] not in text_of(build(note)), kind
