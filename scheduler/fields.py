"""Typed request fields shared by the API's input structs (msgspec validates and names them)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from msgspec import Meta

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
Id = Annotated[int, Meta(ge=1, le=2**31 - 1)]
Capacity = Annotated[int, Meta(ge=0, le=1_000_000)]
RRuleText = Annotated[str, Meta(max_length=500, examples=["FREQ=WEEKLY;BYDAY=TU;COUNT=10"])]
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
