"""Errors the services raise, and how the HTTP layer answers them.

Every error body has Litestar's shape, ``{"status_code", "detail", "extra"}``; for bad input
``extra`` lists ``{"key": field, "message": reason}`` so a client can point at the field.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import MediaType, Request, Response
from litestar.exceptions import ValidationException
from litestar.openapi.datastructures import ResponseSpec
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

log = logging.getLogger("scheduler.errors")


class Invalid(Exception):
    """Input that cannot be accepted; names the field."""

    status_code = 400

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NotFound(Exception):
    status_code = 404


class Conflict(Exception):
    status_code = 409

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


class Unauthorized(Exception):
    """No token, or one that is not (or no longer) valid."""

    status_code = 401


class Forbidden(Exception):
    """A valid token that may not do this (scoped elsewhere, read-only, or a lower role)."""

    status_code = 403


class Gone(Exception):
    """A link that worked once and no longer does (an expired manage link)."""

    status_code = 410


class TooManyRequests(Exception):
    """A rate limit refused the request; ``limit`` names the setting that did."""

    status_code = 429

    def __init__(self, limit: str, retry_after: int, detail: str) -> None:
        super().__init__(detail)
        self.limit = limit
        self.retry_after = retry_after
        self.detail = detail


def _body(status: int, detail: str, field: str | None = None) -> dict[str, object]:
    body: dict[str, object] = {"status_code": status, "detail": detail}
    if field is not None:
        body["extra"] = [{"key": field, "message": detail.split(": ", 1)[-1]}]
    return body


def invalid_handler(_: Request[Any, Any, Any], exc: Invalid) -> Response[object]:
    return Response(_body(400, f"{exc.field}: {exc.reason}", exc.field), status_code=400)


def not_found_handler(_: Request[Any, Any, Any], exc: NotFound) -> Response[object]:
    return Response(_body(404, str(exc) or "not found"), status_code=404)


def conflict_handler(_: Request[Any, Any, Any], exc: Conflict) -> Response[object]:
    detail = f"{exc.field}: {exc.reason}" if exc.field else exc.reason
    return Response(_body(409, detail, exc.field), status_code=409)


def unauthorized_handler(_: Request[Any, Any, Any], exc: Unauthorized) -> Response[object]:
    return Response(
        _body(401, str(exc) or "Authorization: this needs an organizer token"),
        status_code=401,
        headers={"WWW-Authenticate": "Bearer"},
    )


def forbidden_handler(_: Request[Any, Any, Any], exc: Forbidden) -> Response[object]:
    return Response(_body(403, str(exc) or "this token may not change that"), status_code=403)


def gone_handler(_: Request[Any, Any, Any], exc: Gone) -> Response[object]:
    return Response(_body(410, str(exc) or "this link has expired"), status_code=410)


def too_many_handler(_: Request[Any, Any, Any], exc: TooManyRequests) -> Response[object]:
    body = _body(429, exc.detail)
    body["extra"] = [{"key": exc.limit, "message": f"retry after {exc.retry_after} seconds"}]
    return Response(body, status_code=429, headers={"Retry-After": str(exc.retry_after)})


def validation_handler(_: Request[Any, Any, Any], exc: ValidationException) -> Response[object]:
    """Litestar's own 400 for a parameter or body that fails validation, always as JSON
    (its default answer takes the route's media type: a CSV or calendar route would label
    the JSON error text/csv)."""
    body: dict[str, object] = {"status_code": 400, "detail": exc.detail}
    if exc.extra:
        body["extra"] = [_public_key(item) for item in exc.extra]
    return Response(body, status_code=400, media_type=MediaType.JSON, headers=exc.headers)


def _public_key(item: Any) -> Any:
    """A query parameter by the name the client sends (``from``), not its Python alias
    (``from_``)."""
    if isinstance(item, dict) and item.get("source") == "query":
        key = item.get("key")
        if isinstance(key, str) and key.endswith("_"):
            return {**item, "key": key.rstrip("_")}
    return item


def integrity_handler(_: Request[Any, Any, Any], exc: IntegrityError) -> Response[object]:
    log.warning("integrity error: %s", exc.orig)
    return Response(_body(409, "the change conflicts with data already stored"), status_code=409)


# PostgreSQL refusing a value the request carried: a NUL or unencodable character (22021,
# 22P05), a number out of range (22003), or a parameter asyncpg cannot encode (a number past
# 32 bits). SQLAlchemy's asyncpg adapter reports these as plain DBAPIErrors; any other such
# error is the server's own mistake and stays a 500.
_REFUSED_VALUE_STATES = ("22021", "22P05", "22003")


def data_handler(_: Request[Any, Any, Any], exc: DBAPIError) -> Response[object]:
    state = getattr(exc.orig, "sqlstate", None)
    if state in _REFUSED_VALUE_STATES or "invalid input for query argument" in str(exc.orig):
        log.warning("value refused by the database: %s", exc.orig)
        detail = "a value cannot be stored: a number out of range or a character such as NUL"
        return Response(_body(400, detail), status_code=400)
    log.error("database error: %s", exc.orig, exc_info=exc)
    return Response({"status_code": 500, "detail": "Internal Server Error"}, status_code=500)


def operational_handler(_: Request[Any, Any, Any], exc: OperationalError) -> Response[object]:
    log.error("database unavailable: %s", exc.orig)
    return Response(
        _body(503, "the database is busy or unavailable; try again"),
        status_code=503,
        headers={"Retry-After": "1"},
    )


EXCEPTION_HANDLERS = {
    Invalid: invalid_handler,
    NotFound: not_found_handler,
    Conflict: conflict_handler,
    Unauthorized: unauthorized_handler,
    Forbidden: forbidden_handler,
    Gone: gone_handler,
    TooManyRequests: too_many_handler,
    ValidationException: validation_handler,
    IntegrityError: integrity_handler,
    DBAPIError: data_handler,
    OperationalError: operational_handler,
}


class ErrorDetail(msgspec.Struct):
    key: str
    message: str


class ErrorBody(msgspec.Struct):
    """The body of every 4xx and 5xx answer."""

    status_code: int
    detail: str
    extra: list[ErrorDetail] | None = None


_MEANINGS = {
    400: "Bad input: `extra` names each field and the reason",
    401: "No token, or an unknown or revoked one (send `Authorization: Bearer <token>`)",
    403: "The token may not do this here: another process's, scoped to another process, "
    "read-only, or a role too low (viewer < organizer < owner)",
    404: "No such item (drafts are hidden from the public)",
    409: "Conflicts with stored data or state (a slug taken, registration closed)",
    410: "The link has expired",
    413: "The request body is larger than max_body_bytes",
    429: "Too many requests from this network address or for this email address: `extra` "
    "names the limit; retry after the Retry-After seconds",
    503: "The database is busy or down; retry after the Retry-After seconds",
}


def documented(*codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the error answers a route can give."""
    return {
        code: ResponseSpec(
            data_container=ErrorBody, description=_MEANINGS[code], generate_examples=False
        )
        for code in codes
    }
