"""Mail transports behind one small seam: a local Maildir folder, or SMTP with a connection pool.

The outbox worker only knows ``MailSender``: ``send`` (a message object) and ``send_bytes``
(bytes already flattened, with their envelope: nothing is serialised twice) either deliver
or raise ``DeliveryError`` saying whether trying again later can help. Nothing here touches
the database.
"""

from __future__ import annotations

import asyncio
import logging
import mailbox
import os
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Protocol

import aiosmtplib

from scheduler.settings import Settings

log = logging.getLogger("scheduler.mail")

# A pooled connection idle longer than this is checked with NOOP before use: servers drop
# idle clients (Postfix after 300 s), and a dead socket is cheaper to find before a send.
IDLE_CHECK_SECONDS = 20.0


class DeliveryError(Exception):
    """A message was not delivered; ``permanent`` means retrying cannot help (e.g. 5xx)."""

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


class MailSender(Protocol):
    async def send(self, message: EmailMessage) -> None: ...

    async def send_bytes(self, data: bytes, mail_from: str, recipients: Sequence[str]) -> None:
        """Deliver ``data`` (a whole message, CRLF line ends) as it is."""

    async def close(self) -> None: ...


class MaildirSender:
    """Writes each message into a Maildir (``new/``) that any mail program can open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._box: mailbox.Maildir | None = None
        # mailbox names files from the time and a counter that threads could share.
        self._lock = threading.Lock()

    async def send(self, message: EmailMessage) -> None:
        # Maildir files use the local line ending; the SMTP policy's CRLF would show as ^M.
        await self._store(message.as_bytes(policy=message.policy.clone(linesep="\n")))

    async def send_bytes(self, data: bytes, mail_from: str, recipients: Sequence[str]) -> None:
        await self._store(data.replace(b"\r\n", b"\n"))

    async def _store(self, data: bytes) -> None:
        try:
            await asyncio.to_thread(self._write, data)
        except (OSError, mailbox.Error) as exc:
            raise DeliveryError(f"maildir {self.path}: {exc}", permanent=False) from exc

    def _write(self, data: bytes) -> None:
        with self._lock:
            if self._box is None:
                self._box = mailbox.Maildir(self.path, create=True)
            self._box.add(data)
            # mailbox fsyncs the file, not the folder entry that makes it visible in new/.
            fd = os.open(self.path / "new", os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    async def close(self) -> None:
        self._box = None


class SmtpSender:
    """SMTP through at most ``smtp_pool_size`` persistent connections, used concurrently.

    Replies 4xx and lost connections are temporary, 5xx permanent. A pooled connection that
    the server dropped is replaced and the message tried once more on a fresh one.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._slots = asyncio.Semaphore(settings.smtp_pool_size)
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []
        self._closed = False
        self.connections_opened = 0

    async def send(self, message: EmailMessage) -> None:
        await self._on_a_connection(lambda client: client.send_message(message))

    async def send_bytes(self, data: bytes, mail_from: str, recipients: Sequence[str]) -> None:
        """The bytes go out as they are, with the options send_message would have used."""
        to = list(recipients)

        async def transaction(client: aiosmtplib.SMTP) -> object:
            if client.is_ehlo_or_helo_needed:  # the extensions are known after EHLO
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await client.helo()
            options = []
            if not (mail_from + "".join(to)).isascii():
                options.append("SMTPUTF8")  # aiosmtplib refuses it if the server cannot
            if not data.isascii():
                if not client.supports_extension("8bitmime"):
                    # A server without 8BITMIME: the stdlib re-encodes the parts in 7 bits.
                    message = message_from_bytes(data, policy=policy.SMTP)
                    return await client.send_message(message, sender=mail_from, recipients=to)
                options.append("BODY=8BITMIME")
            return await client.sendmail(mail_from, to, data, mail_options=options)

        await self._on_a_connection(transaction)

    async def _on_a_connection(
        self, transaction: Callable[[aiosmtplib.SMTP], Awaitable[Any]]
    ) -> None:
        """Run one mail transaction on a pooled connection."""
        if self._closed:
            raise DeliveryError("the SMTP sender is closed", permanent=False)
        async with self._slots:
            client, reused = await self._checkout()
            try:
                await transaction(client)
            except aiosmtplib.SMTPServerDisconnected:
                client.close()
                if not reused:
                    raise DeliveryError(
                        "the SMTP server closed the connection", permanent=False
                    ) from None
                # Dropped while idle in the pool: one more try on a fresh connection.
                client = await self._connect()
                try:
                    await transaction(client)
                except Exception as exc:
                    raise self._delivery_error(client, exc) from exc
            except Exception as exc:
                raise self._delivery_error(client, exc) from exc
            self._keep(client)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for client, _ in idle:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()

    async def _checkout(self) -> tuple[aiosmtplib.SMTP, bool]:
        while self._idle:
            client, since = self._idle.pop()
            if not client.is_connected:
                continue
            if time.monotonic() - since < IDLE_CHECK_SECONDS:
                return client, True
            try:
                await client.noop()
            except (aiosmtplib.SMTPException, OSError):
                client.close()
                continue
            return client, True
        return await self._connect(), False

    async def _connect(self) -> aiosmtplib.SMTP:
        s = self._settings
        client = aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_username or None,
            password=s.smtp_password or None,
            use_tls=s.smtp_tls,
            start_tls=s.smtp_starttls,
            timeout=s.smtp_timeout_seconds,
        )
        try:
            await client.connect()
        except aiosmtplib.SMTPAuthenticationError as exc:
            client.close()
            # Wrong credentials are a configuration error: retrying later (after a fix) helps.
            raise DeliveryError(
                f"SMTP login refused: {exc.code} {exc.message}", permanent=False
            ) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            raise DeliveryError(
                f"cannot connect to {s.smtp_host}:{s.smtp_port}: {exc}", permanent=False
            ) from exc
        self.connections_opened += 1
        return client

    def _delivery_error(self, client: aiosmtplib.SMTP, exc: Exception) -> DeliveryError:
        """Classify a failed send; keep the connection only if it is still in a clean state."""
        if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
            codes = [r.code for r in exc.recipients]
            text = "; ".join(f"{r.code} {r.message} <{r.recipient}>" for r in exc.recipients)
            self._keep(client)
            return DeliveryError(f"recipient refused: {text}", permanent=min(codes) >= 500)
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            # aiosmtplib has sent RSET after the refusal, so the connection can be reused.
            self._keep(client)
            return DeliveryError(f"{exc.code} {exc.message}", permanent=exc.code >= 500)
        client.close()
        if isinstance(exc, aiosmtplib.SMTPNotSupported | ValueError):
            return DeliveryError(f"cannot send this message: {exc}", permanent=True)
        if isinstance(exc, DeliveryError):
            return exc
        if isinstance(exc, aiosmtplib.SMTPException | OSError):
            return DeliveryError(f"SMTP failure: {exc}", permanent=False)
        log.exception("unexpected error while sending mail")
        return DeliveryError(f"unexpected error: {exc!r}", permanent=False)

    def _keep(self, client: aiosmtplib.SMTP) -> None:
        if self._closed:
            client.close()
        elif client.is_connected:
            self._idle.append((client, time.monotonic()))


def make_sender(settings: Settings) -> MailSender:
    if settings.mail_transport == "smtp":
        return SmtpSender(settings)
    return MaildirSender(settings.mail_maildir)
