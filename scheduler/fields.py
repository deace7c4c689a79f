"""Typed request fields shared by the API's input structs (msgspec validates and names them)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.params import Parameter
from msgspec import Meta

from scheduler.errors import Invalid, NotFound

AwareDatetime = Annotated[
    datetime,
    Meta(
        tz=True, description="ISO 8601 date-time with a UTC offset, e.g. 2026-05-05T10:00:00-04:00"
    ),
]
Title = Annotated[str, Meta(min_length=1, max_length=300)]
LongText = Annotated[str, Meta(max_length=20_000)]
ShortText = Annotated[str, Meta(max_length=300)]
Url = Annotated[str, Meta(max_length=2000, pattern=r"^(https?://\S+)?$")]
ZoneName = Annotated[str, Meta(min_length=1, max_length=64, examples=["America/New_York"])]
Slug = Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9-]{1,79}$", examples=["gcm"])]
Language = Annotated[str, Meta(pattern=r"^[a-z]{2,3}$", examples=["en"])]
# Ids are 32-bit integers in every table (PostgreSQL's integer): a larger number is no id.
ID_MAX = 2**31 - 1
Id = Annotated[int, Meta(ge=1, le=ID_MAX)]
# A numeric id in a URL path; ``check_parameters`` enforces the range for every route.
PathId = Annotated[int, Parameter(ge=1, le=ID_MAX)]
Capacity = Annotated[int, Meta(ge=0, le=1_000_000)]
RRuleText = Annotated[str, Meta(max_length=500, examples=["FREQ=WEEKLY;BYDAY=TU;COUNT=10"])]
# Reminder offsets: whole minutes before the start, at most 365 days, at most 10 of them.
ReminderOffset = Annotated[int, Meta(ge=1, le=365 * 24 * 60)]
ReminderOffsets = Annotated[
    list[ReminderOffset],
    Meta(
        max_length=10,
        description="Minutes before the start (or due time) at which reminders go out; "
        "[] sends none, null follows the process's policy.",
        examples=[[10080, 1440, 60]],
    ),
]
PlacementRule = Annotated[
    dict[str, int | str],
    Meta(
        description=(
            "Position relative to the start of relative_to_id: years, months, weeks, days "
            "(whole numbers), at (local HH:MM), end_days and end_at, or duration_minutes."
        ),
        examples=[{"days": -1, "at": "10:00", "end_at": "18:00"}],
    ),
]


# Instants outside this range are refused: near year 1 or 9999 the arithmetic of moves,
# recurrences and calendar feeds overflows, and no review cycle needs them.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def check_range(field: str, value: datetime | None) -> None:
    if value is None:
        return
    try:
        ok = EARLIEST <= value.astimezone(UTC) < LATEST
    except OverflowError:
        ok = False
    if not ok:
        raise Invalid(field, "must be between 1900 and 2199")


def check_offsets(field: str, offsets: list[int] | None) -> list[int] | None:
    """Offsets without repeats, largest (earliest reminder) first; None stays None."""
    if offsets is None:
        return None
    seen: set[int] = set()
    for index, value in enumerate(offsets):
        if value in seen:
            raise Invalid(f"{field}[{index}]", f"{value} is listed twice")
        seen.add(value)
    return sorted(offsets, reverse=True)


def check_aware(field: str, value: datetime | None) -> None:
    """Refuse a naive date-time given as a query parameter.

    Litestar rebuilds a query parameter's type from its QueryParameter settings and drops
    AwareDatetime's ``tz=True``, so a naive ``from``/``to`` would otherwise get through.
    """
    if value is not None and value.utcoffset() is None:
        raise Invalid(field, "needs a UTC offset, e.g. 2026-05-05T10:00:00-04:00")
    check_range(field, value)


async def check_parameters(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """App-wide guard: path and query values the database cannot take never reach it.

    A coroutine although it does no I/O: Litestar runs a plain function guard in its thread
    pool, a round trip to another thread on every request.

    A numeric path id outside 1..2^31-1 names nothing, nor does a path value holding a NUL
    character: 404. A query id (``*_id``), ``limit`` or ``offset`` beyond 2^31-1, or any
    query value holding a NUL, is bad input: 400 naming it. Without this guard asyncpg
    refuses to encode such a number (SQLite past 64 bits) and PostgreSQL refuses NUL in
    text: a 500 instead of an answer.
    """
    for name, value in connection.path_params.items():
        if isinstance(value, int) and not 1 <= value <= ID_MAX:
            raise NotFound(f"no such {name.removesuffix('_id')}: {value}")
        if isinstance(value, str) and "\x00" in value:
            raise NotFound(f"no such {name.removesuffix('_id')}")
    query = connection.query_params
    for name in query:
        counted = name.endswith("_id") or name in ("limit", "offset")
        for raw in query.getall(name):
            if "\x00" in raw or "\x00" in name:
                raise Invalid(name.replace("\x00", ""), "must not contain a NUL character")
            if not counted:
                continue
            try:
                number = int(raw)
            except ValueError:
                continue  # not a number: the parameter's own validation says so
            if abs(number) > ID_MAX:
                raise Invalid(name, f"must be at most {ID_MAX}")
