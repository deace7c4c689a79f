"""Security headers on every answer: the browser is told what the pages may load and do.

The pages load their own stylesheet and script from /static and nothing else; no page
has an inline script or ``<style>`` element. The Gantt view and the pledge charts place
their bars with ``style`` attributes holding numbers computed on the server, hence
``style-src-attr 'unsafe-inline'`` (attributes only: a browser that does not know that
directive falls back to ``style-src 'self'`` and shows the bars unplaced, nothing worse).
The interactive API docs under /schema load their viewer from a CDN, so they get no CSP.
Strict-Transport-Security is sent only when the public address is https: over plain
HTTP it would lock browsers out of a site that has no certificate.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from litestar.types import Message, Scope

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "style-src-attr 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "manifest-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)
PERMISSIONS_POLICY = "camera=(), microphone=(), geolocation=(), payment=(), usb=()"
HSTS = "max-age=31536000"
DOCS_PREFIX = "/schema"


def header_values(base_url: str) -> list[tuple[str, str]]:
    """The headers every answer gets (the CSP is added apart, see ``add_security_headers``)."""
    values = [
        ("x-content-type-options", "nosniff"),
        # Manage and subscription links carry their token in the path: never send it on.
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("permissions-policy", PERMISSIONS_POLICY),
    ]
    if base_url.lower().startswith("https://"):
        values.append(("strict-transport-security", HSTS))
    return values


def add_security_headers(base_url: str) -> Callable[[Message, Scope], Awaitable[None]]:
    """A before-send hook adding the headers to each answer that does not set them itself."""
    common = [(k.encode(), v.encode()) for k, v in header_values(base_url)]
    with_csp = [*common, (b"content-security-policy", CONTENT_SECURITY_POLICY.encode())]

    async def hook(message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start":
            return
        path = str(scope.get("path", ""))
        docs = path == DOCS_PREFIX or path.startswith(DOCS_PREFIX + "/")
        headers = list(message.get("headers") or [])
        present = {bytes(name).lower() for name, _ in headers}
        headers += [(k, v) for k, v in (common if docs else with_csp) if k not in present]
        message["headers"] = headers

    return hook
