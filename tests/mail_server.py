"""A real SMTP server for tests: aiosmtpd on 127.0.0.1 in its own thread.

It records every accepted message (bytes and envelope), counts connections, can refuse the
next N messages with a given reply (451: try later, 550: never) and can drop every open
connection, as a server does with idle clients.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    def parsed(self) -> EmailMessage:
        msg = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass
class Recorder:
    """The handler: keeps what it accepts, refuses when told to."""

    messages: list[Received] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    # Address -> the reply to RCPT TO for it, e.g. "550 5.1.1 No such mailbox".
    refused_recipients: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Seconds to wait before accepting each message: a slow server, to kill a sender mid-wave.
    delay: float = 0.0

    def refuse_next(self, count: int, reply: str) -> None:
        """Answer ``reply`` (e.g. "451 4.3.0 Try again later") to the next ``count`` messages."""
        with self.lock:
            self.refusals.extend([reply] * count)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        with self.lock:
            reply = self.refused_recipients.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        with self.lock:
            if self.refusals:
                return self.refusals.pop(0)
            content = envelope.original_content or b""
            self.messages.append(
                Received(str(envelope.mail_from), list(envelope.rcpt_tos), bytes(content))
            )
        return "250 2.0.0 OK"


class MailServer(Controller):
    """The controller, counting the connections it accepts and able to drop them all."""

    def __init__(self, **smtp_options: Any) -> None:
        self.recorder = Recorder()
        self.connections = 0
        self._open: list[SMTP] = []
        super().__init__(self.recorder, hostname="127.0.0.1", port=free_port(), **smtp_options)

    def factory(self) -> SMTP:
        server: SMTP = super().factory()
        self.connections += 1
        self._open.append(server)
        return server

    def start(self) -> None:
        super().start()
        self.connections = 0  # start() opens one connection itself to check the server
        self._open.clear()

    def drop_connections(self) -> None:
        """Close every client connection from the server side."""
        done = threading.Event()

        def close_all() -> None:
            for server in self._open:
                if server.transport is not None:
                    server.transport.close()
            self._open.clear()
            done.set()

        self.loop.call_soon_threadsafe(close_all)
        assert done.wait(5)

    @property
    def messages(self) -> list[Received]:
        with self.recorder.lock:
            return list(self.recorder.messages)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(**smtp_options: Any) -> MailServer:
    server = MailServer(**smtp_options)
    server.start()
    return server


@pytest.fixture
def mail_server() -> Iterator[MailServer]:
    server = start_server()
    try:
        yield server
    finally:
        server.stop()


def accept_login(user: str, password: str) -> Any:
    """An aiosmtpd authenticator accepting exactly one user and password."""

    def check(server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> Any:
        ok = (
            isinstance(data, LoginPassword)
            and data.login == user.encode()
            and data.password == password.encode()
        )
        return AuthResult(success=ok, handled=False)

    return check
