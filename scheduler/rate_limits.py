"""Rate limits for the public forms that make the service mail someone: registering, asking
for the manage link again, subscribing to deadlines.

Two sliding windows: one per client address (an IPv6 client counts per /64, since one
machine usually holds a whole /64), one per email address (so nobody can flood a mailbox
through the forms). A request is admitted only if both allow it, and only an admitted
request is counted, so a refused client gets back in as soon as its oldest request ages
out. Pure rules: ``now`` is passed in (seconds on a monotonic clock) and nothing here does
I/O. The windows live in this process: with several nodes each node counts on its own.
"""

from __future__ import annotations

import ipaddress
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from litestar.connection import ASGIConnection

from scheduler.errors import TooManyRequests

# Past this many tracked keys, keys idle for a whole window are dropped, then the oldest.
MAX_KEYS = 100_000


class SlidingWindow:
    """At most ``limit`` hits per ``window`` seconds for each key; 0 allows everything."""

    def __init__(self, limit: int, window: float, max_keys: int = MAX_KEYS) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._hits: dict[str, deque[float]] = {}

    def wait(self, key: str, now: float) -> float:
        """Seconds until ``key`` may be hit again; 0 if it may be hit now."""
        if self.limit <= 0:
            return 0.0
        hits = self._hits.get(key)
        if hits is None:
            return 0.0
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) < self.limit:
            return 0.0
        return hits[0] + self.window - now

    def hit(self, key: str, now: float) -> None:
        if self.limit <= 0:
            return
        hits = self._hits.get(key)
        if hits is None:
            if len(self._hits) >= self.max_keys:
                self._forget(now)
            hits = self._hits[key] = deque(maxlen=self.limit)
        hits.append(now)

    def __len__(self) -> int:
        return len(self._hits)

    def _forget(self, now: float) -> None:
        """Drop idle keys; if that is not enough, the keys least recently hit."""
        idle = [k for k, hits in self._hits.items() if not hits or hits[-1] <= now - self.window]
        for key in idle:
            del self._hits[key]
        excess = len(self._hits) - self.max_keys * 9 // 10
        if excess > 0:
            by_age = sorted(self._hits, key=lambda k: self._hits[k][-1])
            for key in by_age[:excess]:
                del self._hits[key]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Which limit refused a request, and when to come back."""

    limit: str  # the setting's name: rate_limits_per_ip or rate_limits_per_email
    allowed: int
    window_seconds: int
    retry_after: int  # whole seconds, at least 1

    @property
    def detail(self) -> str:
        who = "this network address" if self.limit.endswith("_ip") else "this email address"
        return (
            f"too many requests for {who}: at most {self.allowed} every "
            f"{self.window_seconds} seconds ({self.limit}); try again in {self.retry_after} s"
        )


def client_host(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The client's address as the server saw it (behind a proxy: as uvicorn's proxy
    headers handling reports it, see the README)."""
    client = connection.client
    return client.host if client is not None else None


def client_key(host: str | None) -> str:
    """The key a client is counted under: its IPv4 address, or its IPv6 /64."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class RateLimits:
    def __init__(self, per_ip: int, per_email: int, window_seconds: int) -> None:
        self.window_seconds = window_seconds
        self.per_ip = SlidingWindow(per_ip, window_seconds)
        self.per_email = SlidingWindow(per_email, window_seconds)

    def admit(self, host: str | None, email: str | None, now: float) -> Refusal | None:
        """Count the request and return None, or return why it is refused (not counted)."""
        ip = client_key(host)
        mail = email.strip().lower() if email else None
        checks = [("rate_limits_per_ip", self.per_ip, ip)]
        if mail:
            checks.append(("rate_limits_per_email", self.per_email, mail))
        for name, window, key in checks:
            wait = window.wait(key, now)
            if wait > 0:
                return Refusal(name, window.limit, self.window_seconds, max(1, math.ceil(wait)))
        for _, window, key in checks:
            window.hit(key, now)
        return None

    def enforce(self, host: str | None, email: str | None, now: float) -> None:
        """``admit``, raising TooManyRequests (429 with Retry-After) on a refusal."""
        refusal = self.admit(host, email, now)
        if refusal is not None:
            raise TooManyRequests(refusal.limit, refusal.retry_after, refusal.detail)
