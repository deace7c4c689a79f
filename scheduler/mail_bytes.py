"""Messages as bytes, fast: what many recipients share is rendered and encoded once.

A wave mails thousands of people the same text in a few languages and time zones. Composing
each message (Babel, Jinja) and building it with ``email.message`` costs milliseconds;
``MessageFactory`` composes each shape once (kind, language, zone, event, context, and the
"in 1 hour" lead) with markers where the recipient's name and links go, keeps its lines
already encoded, and makes each message by filling in the few lines that differ and writing
the headers: tens of microseconds.

The bytes are the ones ``render(...).as_bytes()`` gives (policy SMTP), MIME boundaries
apart: the same transfer-encoding choice per part, the same folding (headers that are not
plain ASCII are folded by the stdlib itself), so a mail program parses exactly the same
message; tests compare the two. Names go through ``one_line`` and addresses through a strict
pattern or ``email.headerregistry``, so no input can add a header. Anything unusual (an
address that is not plain ASCII, a link with a line break) takes ``render()`` itself.
"""

from __future__ import annotations

import binascii
import json
import random
import re
import secrets
import sys
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy, quoprimime
from email.utils import format_datetime as rfc2822_date
from email.utils import parseaddr
from typing import Any

from markupsafe import escape

from scheduler.mail_render import (
    RenderError,
    compose,
    event_ics,
    lead_text,
    message_id_for,
    one_line,
    recipient_address,
    render,
    sender_address,
)
from scheduler.models import Event, Notification

_POLICY = policy.SMTP
_MAX_LINE = 78  # policy.SMTP.max_line_length: longer lines get quoted-printable or base64
_CRLF = b"\r\n"
# Markers: private-use characters around a per-process random token, so that no text a
# person typed can contain one (and HTML escaping leaves them alone).
_TOKEN = secrets.token_hex(8)
_MARK = f"\ue000{_TOKEN}"
NAME = f"{_MARK}n\ue001"
MANAGE = f"{_MARK}m\ue001"
CONFIRM = f"{_MARK}c\ue001"
_MARK_BYTES = _MARK.encode()
_MARKERS = re.compile("|".join(re.escape(m) for m in (NAME, MANAGE, CONFIRM)))
# What the stdlib writes unchanged: a dot-atom address, a name of plain words, a simple id.
_PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
)
_PLAIN_NAME = re.compile(r"[A-Za-z0-9]+(?: [A-Za-z0-9]+)*")
_PLAIN_ID = re.compile(r"<[A-Za-z0-9._-]+@[A-Za-z0-9.-]+>")
_BOUNDARY_DIGITS = len(repr(sys.maxsize - 1))  # as email.generator makes them
# Boundaries need to be unlikely in the text, not secret (the stdlib uses ``random`` too);
# asking the system for randomness twice a message showed in profiles.
_BOUNDARY_RANDOM = random.Random(secrets.randbits(64))  # noqa: S311
_MAX_SHAPES = 512
_MAX_CALENDARS = 64


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message ready for SMTP: its bytes (CRLF line ends) and its envelope."""

    data: bytes
    mail_from: str
    recipients: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Body:
    """One text part: its lines as UTF-8 and as quoted-printable (CRLF soft breaks); lines
    with a marker (``dynamic``) are filled per recipient. The other lines' longest length,
    whether they are ASCII, and their share of the first ten lines' sizes, are known."""

    lines: tuple[bytes, ...]
    qp: tuple[bytes, ...]
    dynamic: tuple[tuple[int, str], ...]
    static_max: int
    static_ascii: bool
    head_qp: int  # the first ten lines quoted-printable, with "\n" line ends (static part)
    head_raw: int  # the same lines as they are, with CRLF line ends (static part)


@dataclass(frozen=True, slots=True)
class _Shape:
    lang: bytes
    subject: bytes  # the folded header
    text: _Body
    html: _Body
    calendar: bool


class MessageFactory:
    """Builds outbox rows' messages as bytes, sharing the work between recipients.

    Not thread-safe: use it from one thread at a time (the outbox's event loop). Shapes are
    kept across batches, at most ``_MAX_SHAPES`` of them.
    """

    def __init__(self, mail_from: str) -> None:
        self.mail_from = mail_from
        self.envelope_from = parseaddr(mail_from)[1]
        self._from = _fold("From", sender_address(mail_from))
        self._shapes: OrderedDict[tuple[Any, ...], _Shape | None] = OrderedDict()
        self._calendars: dict[bytes, bytes] = {}
        self._date: tuple[datetime, bytes] | None = None
        self.shapes_built = 0  # for tests and benchmarks

    def build(
        self,
        note: Notification,
        *,
        event: Event | None,
        links: dict[str, str],
        now: datetime,
    ) -> Outgoing:
        """The message for one row (see ``render`` for ``links``); RenderError if it cannot
        be one."""
        email = note.recipient_email.strip()
        name = one_line(note.recipient_name)
        urls = {k: links.get(k, "") for k in ("manage_url", "confirm_url", "unsubscribe_url")}
        shape = None
        if _PLAIN_ADDRESS.fullmatch(email) and not any(
            "\r" in u or "\n" in u for u in urls.values()
        ):
            shape = self._shape(note, event, urls, name, now)
        if shape is None:
            return self._slow(note, event, links, now)
        message_id = note.message_id or message_id_for(note.id, note.created_at, self.mail_from)
        # header_text(raw name), from the name already on one line
        varying = [_to_header(email, name.replace("=?", "= ?")), _id_header(message_id)]
        if urls["unsubscribe_url"]:
            list_unsubscribe = f"<{one_line(urls['unsubscribe_url'], 2000)}>"
            varying.append(_fold("List-Unsubscribe", list_unsubscribe))
        for header in varying:
            _check_one_header(header)
        head = [self._from, varying[0], shape.subject, self._date_header(now), varying[1]]
        head.append(b"Auto-Submitted: auto-generated\r\nX-Auto-Response-Suppress: All\r\n")
        if urls["unsubscribe_url"]:
            head += [varying[2], b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"]
        head.append(b"MIME-Version: 1.0\r\n")

        plain = {NAME: name, MANAGE: urls["manage_url"], CONFIRM: urls["confirm_url"]}
        text_cte, text = _encode(shape.text, plain)
        html_cte, html = _encode(shape.html, {k: str(escape(v)) for k, v in plain.items()})
        alternative = [
            b'Content-Type: text/plain; charset="utf-8"\r\n'
            b"Content-Transfer-Encoding: " + text_cte + b"\r\n\r\n" + text,
            b'Content-Type: text/html; charset="utf-8"\r\n'
            b"Content-Transfer-Encoding: " + html_cte + b"\r\nMIME-Version: 1.0\r\n\r\n" + html,
        ]
        inner = _boundary(alternative)
        language = b"Content-Language: " + shape.lang + b"\r\n\r\n"
        if shape.calendar and event is not None:
            nested = [
                b'Content-Type: multipart/alternative;\r\n boundary="'
                + inner
                + b'"\r\n\r\n'
                + _multipart(inner, alternative),
                self._calendar(event_ics(event, links.get("event_url", ""), now)),
            ]
            outer = _boundary(nested)
            head.append(b'Content-Type: multipart/mixed; boundary="' + outer + b'"\r\n')
            head += [language, _multipart(outer, nested)]
        else:
            head.append(b'Content-Type: multipart/alternative;\r\n boundary="' + inner + b'"\r\n')
            head += [language, _multipart(inner, alternative)]
        data = b"".join(head)
        return Outgoing(data, self.envelope_from, (email,))

    def _shape(
        self,
        note: Notification,
        event: Event | None,
        urls: dict[str, str],
        name: str,
        now: datetime,
    ) -> _Shape | None:
        """The shared part of this row's message, composed once per shape (None: the row
        must be rendered whole)."""
        key = (
            note.kind,
            note.language,
            note.time_zone,
            note.reason,
            json.dumps(note.context or {}, sort_keys=True, default=str),
            None
            if event is None
            else (
                event.id,
                event.title,
                event.starts_at,
                event.ends_at,
                event.time_zone,
                event.venue,
                event.online_url,
            ),
            bool(name),
            tuple(bool(u) for u in urls.values()),
            lead_text(note, event, now),
        )
        if key in self._shapes:
            self._shapes.move_to_end(key)
            return self._shapes[key]
        marked = {
            "manage_url": MANAGE if urls["manage_url"] else "",
            "confirm_url": CONFIRM if urls["confirm_url"] else "",
            "unsubscribe_url": urls["unsubscribe_url"],  # only whether there is one counts
        }
        composed = compose(note, event=event, links=marked, now=now, name=NAME if name else "")
        shape: _Shape | None = None
        if _MARK not in composed.subject:
            subject = _fold("Subject", composed.subject)
            _check_one_header(subject)
            shape = _Shape(
                lang=composed.lang.encode("ascii"),
                subject=subject,
                text=_body(composed.text),
                html=_body(composed.html),
                calendar=composed.calendar and event is not None,
            )
        self.shapes_built += 1
        self._shapes[key] = shape
        if len(self._shapes) > _MAX_SHAPES:
            self._shapes.popitem(last=False)
        return shape

    def _slow(
        self, note: Notification, event: Event | None, links: dict[str, str], now: datetime
    ) -> Outgoing:
        """``render()`` flattened as aiosmtplib would: UTF-8 headers when an address needs
        them (the server must then offer SMTPUTF8)."""
        message = render(note, event=event, links=links, mail_from=self.mail_from, now=now)
        recipients = tuple(a.addr_spec for a in message["To"].addresses)
        utf8 = not (self.envelope_from + "".join(recipients)).isascii()
        data = message.as_bytes(policy=policy.SMTPUTF8 if utf8 else _POLICY)
        return Outgoing(data, self.envelope_from, recipients)

    def _date_header(self, now: datetime) -> bytes:
        if self._date is None or self._date[0] != now:
            self._date = (now, _fold("Date", rfc2822_date(now.astimezone(UTC))))
        return self._date[1]

    def _calendar(self, ics: bytes) -> bytes:
        """The ICS attachment as a MIME part, encoded once per event and moment."""
        part = self._calendars.get(ics)
        if part is None:
            if len(self._calendars) >= _MAX_CALENDARS:
                self._calendars.clear()
            part = (
                b"Content-Transfer-Encoding: base64\r\n"
                b'Content-Disposition: attachment; filename="invite.ics"\r\n'
                b'Content-Type: text/calendar; method="PUBLISH"\r\n'
                b"MIME-Version: 1.0\r\n\r\n" + _base64(ics)
            )
            self._calendars[ics] = part
        return part


def _fold(name: str, value: object) -> bytes:
    """One header exactly as the stdlib's generator writes it."""
    folded: bytes = _POLICY.fold_binary(*_POLICY.header_store_parse(name, value))
    return folded


def _to_header(email: str, name: str) -> bytes:
    line = f"To: {name} <{email}>" if name else f"To: {email}"
    if len(line) <= _MAX_LINE and (not name or _PLAIN_NAME.fullmatch(name)):
        return line.encode("ascii") + _CRLF
    return _fold("To", recipient_address(email, name))


def _id_header(message_id: str) -> bytes:
    line = f"Message-ID: {message_id}"
    if len(line) <= _MAX_LINE and _PLAIN_ID.fullmatch(message_id):
        return line.encode("ascii") + _CRLF
    return _fold("Message-ID", message_id)


def _check_one_header(header: bytes) -> None:
    """The last line of defence: a line break only ever folds (a space follows it)."""
    inner = header[:-2]
    if not header.endswith(_CRLF) or inner.count(b"\n") != inner.count(b"\r\n ") + inner.count(
        b"\r\n\t"
    ):
        raise RenderError(f"a header would span lines: {header[:80]!r}")


def _body(text: str) -> _Body:
    """Split as ``email.contentmanager`` does (the UTF-8 bytes' lines), encoding the lines
    without a marker now."""
    lines = text.encode().splitlines()
    qp: list[bytes] = []
    dynamic: list[tuple[int, str]] = []
    static_max, static_ascii, head_qp, head_raw = 0, True, 0, 0
    for i, line in enumerate(lines):
        if _MARK_BYTES in line:
            dynamic.append((i, line.decode()))
            qp.append(b"")
            continue
        encoded = _qp_line(line)
        qp.append(encoded.replace(b"\n", _CRLF))
        static_max = max(static_max, len(line))
        static_ascii = static_ascii and line.isascii()
        if i < 10:
            head_qp += len(encoded) + 1
            head_raw += len(line) + 2
    return _Body(
        tuple(lines), tuple(qp), tuple(dynamic), static_max, static_ascii, head_qp, head_raw
    )


def _encode(body: _Body, values: dict[str, str]) -> tuple[bytes, bytes]:
    """(transfer encoding, payload with CRLF line ends), chosen as ``set_content`` does: 7bit
    or 8bit when no line is longer than 78 bytes, else the shorter of quoted-printable and
    base64 over the first ten lines."""
    lines = list(body.lines)
    longest, plain = body.static_max, body.static_ascii
    for i, line in body.dynamic:
        # One pass: a value is never searched for markers itself.
        filled = _MARKERS.sub(lambda m: values[m.group(0)], line).encode()
        lines[i] = filled
        longest = max(longest, len(filled))
        plain = plain and filled.isascii()
    if longest <= _MAX_LINE:
        return (b"7bit" if plain else b"8bit"), _CRLF.join(lines) + _CRLF
    qp = list(body.qp)
    head_qp, head_raw = body.head_qp, body.head_raw
    for i, _ in body.dynamic:
        encoded = _qp_line(lines[i])
        qp[i] = encoded.replace(b"\n", _CRLF)
        if i < 10:
            head_qp += len(encoded) + 1
            head_raw += len(lines[i]) + 2
    if head_qp > 4 * ((head_raw + 2) // 3) + 1:  # the length of b2a_base64's answer
        return b"base64", _base64(_CRLF.join(lines) + _CRLF)
    return b"quoted-printable", _CRLF.join(qp) + _CRLF


def _qp_line(line: bytes) -> bytes:
    """One line quoted-printable as ``quoprimime.body_encode`` does it (soft breaks ``=\\n``);
    it works line by line, so lines can be encoded apart and joined."""
    return quoprimime.body_encode(line.decode("latin-1"), _MAX_LINE).encode("ascii")


def _base64(data: bytes) -> bytes:
    """Base64 in lines of 76 characters, as ``email.contentmanager`` writes it."""
    step = _MAX_LINE // 4 * 3
    return b"".join(
        binascii.b2a_base64(data[i : i + step], newline=False) + _CRLF
        for i in range(0, len(data), step)
    )


def _boundary(parts: list[bytes]) -> bytes:
    """A random boundary in the stdlib's format that no part contains."""
    while True:
        digits = f"{_BOUNDARY_RANDOM.randrange(sys.maxsize):0{_BOUNDARY_DIGITS}d}"
        boundary = f"==============={digits}==".encode("ascii")
        if not any(boundary in part for part in parts):
            return boundary


def _multipart(boundary: bytes, parts: list[bytes]) -> bytes:
    delimiter = _CRLF + b"--" + boundary + _CRLF
    return b"--" + boundary + _CRLF + delimiter.join(parts) + _CRLF + b"--" + boundary + b"--\r\n"
