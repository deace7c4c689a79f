"""Where a webhook may point: an absolute https URL on a public address.

Webhooks send requests wherever an organizer says, so they must not become a way into the
service's own machine or network (a database port, a cloud metadata service, an admin
page on the private network). A URL must be https, and its host must resolve only to
public addresses: loopback, private, link-local, multicast and other internal ranges are
refused. Hosts the operator lists in ``webhooks_allowed_hosts`` are exempt (plain http
allowed, any address). The address is checked when the webhook is made and again before
each delivery, since DNS can change; the request then goes to the address that was checked,
so a second lookup cannot send it elsewhere (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from scheduler.feeds import host_allowed

RESOLVE_TIMEOUT = 5.0  # seconds

# host, port -> the addresses it resolves to
Resolver = Callable[[str, int], Awaitable[list[str]]]


class Refused(ValueError):
    """The URL or its address is not allowed; trying again cannot help."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Unresolved(Exception):
    """The host name cannot be resolved right now (perhaps later)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Target:
    url: httpx.URL
    allow_listed: bool

    @property
    def port(self) -> int:
        return self.url.port or (443 if self.url.scheme == "https" else 80)


def check_url(url: str, allowed: frozenset[str], *, only_allowed: bool = False) -> Target:
    """The parsed URL if a webhook may point there (before any lookup), else Refused.

    With ``only_allowed`` a host outside ``allowed`` is refused before it is looked up.
    """
    try:
        parsed = httpx.URL(url.strip())
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise Refused(f"not a usable URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise Refused("must be an absolute URL starting with https://")
    if parsed.userinfo:
        raise Refused("must not carry a user name or password")
    if parsed.fragment:
        raise Refused("must not have a #fragment")
    listed = host_allowed(parsed.host, allowed)
    if only_allowed and not listed:
        raise Refused(f"{parsed.host!r} is not in webhooks_allowed_hosts (only those are allowed)")
    if parsed.scheme != "https" and not listed:
        raise Refused(
            f"must use https (plain http only for hosts in webhooks_allowed_hosts; "
            f"{parsed.host!r} is not)"
        )
    if not listed and _is_address(parsed.host):
        problem = address_problem(parsed.host)
        if problem is not None:
            raise Refused(f"{parsed.host} is {problem}")
    return Target(parsed, listed)


def address_problem(address: str) -> str | None:
    """Why a request must not go to ``address`` (None: a public address)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified:
        return "the unspecified address (this machine)"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_private:
        return "a private address"
    if ip.is_multicast:
        return "a multicast address"
    if not ip.is_global:
        return "not a public address"
    return None


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[str] = []
    for *_, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in found:
            found.append(address)
    return found


async def addresses(target: Target, resolve: Resolver = system_resolver) -> list[str]:
    """Every address the host resolves to, each checked: Refused if any is internal (a
    host that also resolves to a public address is no safer), Unresolved if none."""
    host = target.url.host
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            found = await resolve(host, target.port)
    except TimeoutError:
        raise Unresolved(f"resolving {host} timed out") from None
    except OSError as exc:
        raise Unresolved(f"{host} cannot be resolved ({exc})") from None
    if not found:
        raise Unresolved(f"{host} has no address")
    if not target.allow_listed:
        for address in found:
            problem = address_problem(address)
            if problem is not None:
                raise Refused(f"{host} resolves to {address}, {problem}")
    return found


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True
