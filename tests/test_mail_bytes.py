"""The fast path's bytes are the stdlib's bytes: ``MessageFactory.build`` against
``render(...).as_bytes()`` for every kind, language, kind of name and link, MIME boundaries
apart; and whatever a person types still cannot add a header.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest

from scheduler.mail import DeliveryError, SmtpSender
from scheduler.mail_bytes import MessageFactory
from scheduler.mail_render import KINDS, RenderError, render
from scheduler.models import Event, Notification
from scheduler.settings import Settings
from tests.mail_server import MailServer, start_server
from tests.test_mail_render import FROM, LINKS, NOW, make_event, make_note

_BOUNDARY = re.compile(rb"={15}\d{19}==")
NAMES = [
    "Amina Diallo",
    "",
    "José Müller-Łukasiewicz",
    "李伟",
    "عائشة",
    "O'Brien, Jr. <ceo@example.org>",
    "Eve\r\nBcc: victim@example.org",
    "=?utf-8?q?Eve=0D=0ABcc:_victim@example.org?=",
    "A" * 250,
    "Word " * 30,
]
SUBSCRIPTION_LINKS = {
    "manage_url": "https://forum.example.org/subscriptions/9.xyz",
    "confirm_url": "https://forum.example.org/subscriptions/9.xyz",
    "unsubscribe_url": "https://forum.example.org/api/subscriptions/9.xyz/unsubscribe",
}


def normalized(data: bytes) -> bytes:
    """Boundaries numbered by first appearance, so two messages can be compared."""
    seen: dict[bytes, bytes] = {}

    def number(m: re.Match[bytes]) -> bytes:
        return seen.setdefault(m.group(0), b"BOUNDARY-%d" % len(seen))

    return _BOUNDARY.sub(number, data)


def same_bytes(
    factory: MessageFactory,
    note: Notification,
    event: Event | None = None,
    links: dict[str, str] | None = None,
    now: datetime = NOW,
    *,
    without_event: bool = False,
) -> bytes:
    links = LINKS if links is None else links
    event = None if without_event else event or make_event()
    fast = factory.build(note, event=event, links=links, now=now)
    slow = render(note, event=event, links=links, mail_from=FROM, now=now).as_bytes()
    assert normalized(fast.data) == normalized(slow)
    assert fast.mail_from == "noreply@forum.example.org"
    assert fast.recipients == (note.recipient_email.strip(),)
    return fast.data


def parsed(data: bytes) -> EmailMessage:
    msg = message_from_bytes(data, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


CONTEXT: dict[str, Any] = {
    "position": 3,
    "reason": "Quota reached",
    "hold_expires_at": "2026-05-03T12:00:00+00:00",
    "slot_start": "2026-05-12T15:00:00+00:00",
    "slot_end": "2026-05-12T15:05:00+00:00",
    "due": "2026-05-10T22:00:00+00:00",
    "milestone_title": "Report deadline",
    "process_name": "GCM review",
    "items": [
        {"id": 1, "kind": "event_reminder", "title": "Hearing", "start": "2026-05-12T14:00Z"}
    ],
    "feed_name": "Pledges",
    "new_count": 2,
    "pledge_titles": "One; Two",
    "dashboard_url": "https://forum.example.org/pledges",
}


@pytest.mark.parametrize("lang", ["en", "fr", "es", "ar", "fr-CA", "xx"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_and_language_gives_the_stdlib_bytes(kind: str, lang: str) -> None:
    factory = MessageFactory(FROM)
    for zone in ("Europe/Paris", "America/New_York"):
        note = make_note(kind, language=lang, time_zone=zone, context=CONTEXT)
        same_bytes(factory, note)
        same_bytes(factory, note, links=SUBSCRIPTION_LINKS)
        same_bytes(factory, note, links={})


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("lang", ["en", "ar"])
def test_any_name_gives_the_stdlib_bytes(name: str, lang: str) -> None:
    factory = MessageFactory(FROM)
    for kind in ("event_reminder", "registration_confirm", "registration_confirmed"):
        same_bytes(factory, make_note(kind, language=lang, recipient_name=name))


def test_recipients_share_one_shape_and_differ_only_in_what_is_theirs() -> None:
    factory = MessageFactory(FROM)
    event = make_event()
    bodies = []
    for i in range(50):
        note = make_note(
            "event_reminder",
            id=100 + i,
            recipient_name=f"Person {i}",
            recipient_email=f"person{i}@example.org",
        )
        links = {"manage_url": f"https://forum.example.org/registrations/{i}.tok&x=<{i}>"}
        data = same_bytes(factory, note, event=event, links=links)
        msg = parsed(data)
        assert msg["To"].addresses[0].addr_spec == f"person{i}@example.org"
        html = msg.get_body(("html",))
        assert html is not None
        assert f'href="https://forum.example.org/registrations/{i}.tok&amp;x=&lt;{i}&gt;"' in str(
            html.get_content()
        )
        bodies.append(data)
    assert factory.shapes_built == 1
    assert len({parsed(b)["Message-ID"] for b in bodies}) == 50


def test_the_lead_and_a_changed_event_make_a_new_shape() -> None:
    factory = MessageFactory(FROM)
    note = make_note("event_reminder")
    same_bytes(factory, note)
    same_bytes(factory, note, now=NOW + timedelta(seconds=1))  # still "in 2 weeks"
    assert factory.shapes_built == 1
    same_bytes(factory, note, now=NOW + timedelta(days=6))  # "in 5 days"
    assert factory.shapes_built == 2
    moved = make_event(venue="Conference Room 1")
    same_bytes(factory, make_note("event_reminder", context={"venue": ""}), event=moved)
    same_bytes(factory, make_note("event_reminder", context={"venue": ""}))
    assert factory.shapes_built == 4


def test_calendar_part_is_the_stdlib_one() -> None:
    factory = MessageFactory(FROM)
    data = same_bytes(factory, make_note("registration_confirmed"))
    msg = parsed(data)
    assert msg.get_content_type() == "multipart/mixed"
    (ics,) = [p for p in msg.iter_attachments() if isinstance(p, EmailMessage)]
    assert ics.get_filename() == "invite.ics"
    same_bytes(factory, make_note("registration_confirmed"), now=NOW + timedelta(hours=1))


@pytest.mark.parametrize(
    "address",
    ["josé@exämple.org", " amina@example.org ", "Amina.Diallo+gcm@mail.example.org"],
)
def test_other_addresses_give_what_aiosmtplib_would_send(address: str) -> None:
    factory = MessageFactory(FROM)
    note = make_note(recipient_email=address)
    out = factory.build(note, event=make_event(), links=LINKS, now=NOW)
    message = render(note, event=make_event(), links=LINKS, mail_from=FROM, now=NOW)
    utf8 = not address.isascii()
    expected = message.as_bytes(policy=policy.SMTPUTF8 if utf8 else policy.SMTP)
    assert normalized(out.data) == normalized(expected)
    assert out.recipients == (address.strip(),)


@pytest.mark.parametrize(
    "address", ["amina@example.org\r\nBcc: victim@example.org", "a b@example.org", "", "no-at"]
)
def test_a_broken_address_is_refused(address: str) -> None:
    with pytest.raises(RenderError):
        MessageFactory(FROM).build(
            make_note(recipient_email=address), event=None, links=LINKS, now=NOW
        )


@pytest.mark.parametrize("name", NAMES)
def test_names_cannot_add_a_header(name: str) -> None:
    data = (
        MessageFactory(FROM)
        .build(
            make_note(recipient_name=name, context={"event_title": name}),
            event=make_event(),
            links=LINKS,
            now=NOW,
        )
        .data
    )
    head = data.split(b"\r\n\r\n", 1)[0]
    assert not re.search(rb"(?im)^bcc:", head)
    msg = parsed(data)
    assert msg["Bcc"] is None
    assert [a.addr_spec for a in msg["To"].addresses] == ["amina@example.org"]


def test_a_link_with_a_line_break_takes_the_slow_path() -> None:
    links = {"manage_url": "https://forum.example.org/x\r\nBcc: victim@example.org"}
    factory = MessageFactory(FROM)
    same_bytes(factory, make_note(), links=links)
    assert factory.shapes_built == 0


def test_a_message_without_an_event_and_a_late_reminder() -> None:
    factory = MessageFactory(FROM)
    note = make_note("event_reminder")
    late = datetime(2026, 5, 12, 15, 0, tzinfo=UTC)  # after the start: no lead
    same_bytes(factory, note, now=late)
    same_bytes(factory, make_note("cancelled", event_id=None), without_event=True)


# --- Sending the bytes --------------------------------------------------------------------


def smtp(server: MailServer) -> SmtpSender:
    return SmtpSender(
        Settings().replace(mail_transport="smtp", smtp_host="127.0.0.1", smtp_port=server.port)
    )


EIGHT_BIT = (
    b"From: noreply@forum.example.org\r\nTo: amina@example.org\r\nSubject: Rappel\r\n"
    b'MIME-Version: 1.0\r\nContent-Type: text/plain; charset="utf-8"\r\n'
    b"Content-Transfer-Encoding: 8bit\r\n\r\n" + "Bonjour Amina, à bientôt.\r\n".encode()
)


async def test_bytes_go_out_as_they_are(mail_server: MailServer) -> None:
    sender = smtp(mail_server)
    try:
        await sender.send_bytes(EIGHT_BIT, "noreply@forum.example.org", ["amina@example.org"])
    finally:
        await sender.close()
    (received,) = mail_server.messages
    assert received.data == EIGHT_BIT  # no second serialisation
    assert (received.mail_from, received.rcpt_tos) == (
        "noreply@forum.example.org",
        ["amina@example.org"],
    )


async def test_a_server_without_8bitmime_gets_seven_bits() -> None:
    server = start_server(decode_data=True)  # aiosmtpd then does not offer 8BITMIME
    sender = smtp(server)
    try:
        await sender.send_bytes(EIGHT_BIT, "noreply@forum.example.org", ["amina@example.org"])
        (received,) = server.messages
    finally:
        await sender.close()
        server.stop()
    assert received.data.isascii()
    content = str(received.parsed().get_content()).replace("\r\n", "\n")
    assert content == "Bonjour Amina, à bientôt.\n"


async def test_an_international_address_needs_smtputf8(mail_server: MailServer) -> None:
    out = MessageFactory(FROM).build(
        make_note(recipient_email="josé@exämple.org"), event=make_event(), links=LINKS, now=NOW
    )
    sender = smtp(mail_server)  # aiosmtpd's controller offers SMTPUTF8
    try:
        await sender.send_bytes(out.data, out.mail_from, out.recipients)
    finally:
        await sender.close()
    (received,) = mail_server.messages
    assert received.rcpt_tos == ["josé@exämple.org"]
    head = received.data.split(b"\r\n\r\n", 1)[0]
    assert "\r\nTo: Amina Diallo <josé@exämple.org>\r\n".encode() in head  # UTF-8 headers

    server = start_server(enable_SMTPUTF8=False)
    sender = smtp(server)
    try:
        with pytest.raises(DeliveryError) as refused:
            await sender.send_bytes(out.data, out.mail_from, out.recipients)
    finally:
        await sender.close()
        server.stop()
    assert refused.value.permanent  # as when aiosmtplib flattened the message itself
