"""A real webhook receiver on 127.0.0.1 that checks signatures and misbehaves on demand.

Each POST is recorded with its headers and body, and whether its signature verifies with
the secrets the test gave (the README's algorithm, written again here from the Standard
Webhooks specification rather than imported, so that the service's signing is checked
against an independent implementation). Tests queue faults for the next requests: any
status (with Retry-After), a slow answer (longer than the sender's timeout), a redirect.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOLERANCE_SECONDS = 300  # the specification's advice: refuse stale timestamps


def verify(secret: str, headers: dict[str, str], body: bytes, now: float | None = None) -> bool:
    """True if one of the ``v1`` signatures is the HMAC-SHA256 of ``id.timestamp.body``
    keyed with the base64-decoded secret, and the timestamp is recent."""
    message_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    if not message_id or not timestamp.isdigit():
        return False
    if abs((now if now is not None else time.time()) - int(timestamp)) > TOLERANCE_SECONDS:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for candidate in headers.get("webhook-signature", "").split(" "):
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return True
    return False


@dataclass
class Fault:
    """Answer the next ``times`` requests this way instead of 200."""

    status: int = 500
    times: int = 1
    retry_after: str | None = None
    seconds: float = 0.0  # wait this long before answering
    location: str = ""


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    valid_with: list[str]  # the test's secrets this request's signature verifies with
    answered: int

    @property
    def json(self) -> dict[str, Any]:
        value = json.loads(self.body)
        assert isinstance(value, dict)
        return value

    @property
    def type(self) -> str:
        return str(self.json["type"])


@dataclass
class _State:
    secrets: list[str] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class WebhookReceiver:
    """The server in a daemon thread; use as a context manager."""

    def __init__(self) -> None:
        self.state = _State()
        state = self.state

        class Handler(_Handler):
            shared = state

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.base = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, path: str = "/hook") -> str:
        return f"{self.base}{path}"

    def trust(self, *secrets: str) -> None:
        """The secrets signatures are checked with (a webhook's, after its creation)."""
        with self.state.lock:
            self.state.secrets = list(secrets)

    def fault(self, **options: Any) -> None:
        with self.state.lock:
            self.state.faults.append(Fault(**options))

    @property
    def received(self) -> list[Received]:
        with self.state.lock:
            return list(self.state.received)

    def of_type(self, event_type: str) -> list[Received]:
        return [r for r in self.received if r.type == event_type]


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a sender that gave up on a slow answer hangs up: part of the tests


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    shared: _State

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        state = self.shared
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        with state.lock:
            valid = [s for s in state.secrets if verify(s, headers, body)]
            fault = state.faults[0] if state.faults else None
            if fault is not None:
                fault.times -= 1
                if fault.times <= 0:
                    state.faults.pop(0)
        status = fault.status if fault is not None else 200
        with state.lock:
            state.received.append(Received(self.path, headers, body, valid, status))
        if fault is not None and fault.seconds:
            time.sleep(fault.seconds)
        answer = b'{"ok": true}' if status < 300 else b"not now"
        self.send_response(status)
        if fault is not None and fault.retry_after is not None:
            self.send_header("Retry-After", fault.retry_after)
        if fault is not None and fault.location:
            self.send_header("Location", fault.location)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        with contextlib.suppress(OSError):  # the sender timed out and left
            self.wfile.write(answer)
