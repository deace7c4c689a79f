"""Cycle templates: a review cycle's events and milestones placed relative to an anchor.

A template lives in ``config/templates/<key>.toml``. Parsing and expansion are pure, so
the rules are tested without a database; ``load_templates`` is the only function that reads
files.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal

from scheduler.models import EVENT_KINDS, MILESTONE_KINDS
from scheduler.placement import FIELDS as PLACEMENT_FIELDS
from scheduler.placement import Placement, PlacementError
from scheduler.recurrence import BadRecurrence, normalize_rrule
from scheduler.timezones import UnknownTimeZone, from_local, to_local, wall_shift, zone

Category = Literal["event", "milestone"]

_EVENT_KEYS = {
    "key",
    "kind",
    "title",
    "description",
    "venue",
    "online_url",
    "time_zone",
    "relative_to",
    "parent",
    "rrule",
    "capacity",
    "registration_opens_days",
    "registration_closes_days",
    *PLACEMENT_FIELDS,
}
_MILESTONE_KEYS = {
    "key",
    "kind",
    "title",
    "description",
    "time_zone",
    "relative_to",
    "event",
    *PLACEMENT_FIELDS,
}
_TOP_KEYS = {
    "key",
    "name",
    "description",
    "time_zone",
    "languages",
    "anchor",
    "events",
    "milestones",
}


class TemplateError(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TemplateItem:
    category: Category
    key: str
    kind: str
    title: str
    description: str
    time_zone: str
    placement: Placement
    relative_to: str | None = None
    parent: str | None = None
    venue: str = ""
    online_url: str = ""
    rrule: str | None = None
    capacity: int | None = None
    registration_opens_days: int | None = None
    registration_closes_days: int | None = None


@dataclass(frozen=True, slots=True)
class Template:
    key: str
    name: str
    description: str
    time_zone: str
    languages: tuple[str, ...]
    anchor: str
    items: tuple[TemplateItem, ...]

    def item(self, key: str) -> TemplateItem:
        for item in self.items:
            if item.key == key:
                return item
        raise KeyError(key)

    def anchor_start_on(self, day: date) -> datetime:
        """The anchor's start on a given local date, at the anchor's own wall time."""
        anchor = self.item(self.anchor)
        return from_local(
            datetime.combine(day, anchor.placement.at or time(10, 0)), anchor.time_zone
        )


@dataclass(frozen=True, slots=True)
class PlannedItem:
    item: TemplateItem
    title: str
    start: datetime
    end: datetime | None
    registration_opens_at: datetime | None
    registration_closes_at: datetime | None
    in_past: bool


def load_templates(directory: Path) -> dict[str, Template]:
    templates: dict[str, Template] = {}
    for path in sorted(directory.glob("*.toml")):
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise TemplateError(path.name, f"not valid TOML: {exc}") from exc
        template = parse_template(data, path.stem)
        templates[template.key] = template
    return templates


def parse_template(data: dict[str, Any], default_key: str) -> Template:
    _no_unknown(data, _TOP_KEYS, "")
    key = _text(data, "key", "", default=default_key)
    tz = _zone(_text(data, "time_zone", ""), "time_zone")
    items: list[TemplateItem] = []
    for index, raw in enumerate(data.get("events", [])):
        items.append(_item("event", raw, f"events[{index}].", tz))
    for index, raw in enumerate(data.get("milestones", [])):
        items.append(_item("milestone", raw, f"milestones[{index}].", tz))
    keys = [i.key for i in items]
    duplicates = {k for k in keys if keys.count(k) > 1}
    if duplicates:
        raise TemplateError("key", f"used twice: {', '.join(sorted(duplicates))}")
    event_keys = {i.key for i in items if i.category == "event"}
    anchor = _text(data, "anchor", "")
    if anchor not in event_keys:
        raise TemplateError("anchor", f"{anchor!r} is not one of the template's events")
    for item in items:
        if item.key == anchor and item.relative_to is not None:
            raise TemplateError("anchor", "the anchor cannot be relative to another item")
        if item.key != anchor and item.relative_to is None:
            raise TemplateError(f"{item.key}.relative_to", "every item but the anchor needs one")
        for ref_field in ("relative_to", "parent"):
            ref = getattr(item, ref_field)
            if ref is not None and ref not in event_keys:
                # A milestone's parent is written "event" in the TOML.
                label = (
                    "event" if ref_field == "parent" and item.category == "milestone" else ref_field
                )
                raise TemplateError(f"{item.key}.{label}", f"{ref!r} is not an event key")
        if item.category == "event" and not item.placement.sets_end:
            raise TemplateError(f"{item.key}.end_at", "an event needs end_at or duration_minutes")
    template = Template(
        key=key,
        name=_text(data, "name", ""),
        description=_text(data, "description", "", default=""),
        time_zone=tz,
        languages=tuple(data.get("languages", ["en"])),
        anchor=anchor,
        items=tuple(items),
    )
    _order(template)  # refuses cycles
    return template


def expand(template: Template, anchor_start: datetime, now: datetime) -> list[PlannedItem]:
    """Every item placed for this anchor, each after the item it is relative to."""
    if anchor_start.tzinfo is None:
        raise TemplateError("anchor_start", "must be time-zone aware")
    starts: dict[str, datetime] = {}
    planned: list[PlannedItem] = []
    year = to_local(anchor_start, template.item(template.anchor).time_zone).year
    for item in _order(template):
        if item.relative_to is None:
            start = anchor_start
        else:
            ref = template.item(item.relative_to)
            start = item.placement.start(starts[ref.key], ref.time_zone, item.time_zone)
        end = item.placement.end(start, item.time_zone)
        starts[item.key] = start
        planned.append(
            PlannedItem(
                item=item,
                title=item.title.replace("{year}", str(year)),
                start=start,
                end=end,
                registration_opens_at=_days_before(
                    start, item.time_zone, item.registration_opens_days
                ),
                registration_closes_at=_days_before(
                    start, item.time_zone, item.registration_closes_days
                ),
                in_past=start < now,
            )
        )
    return planned


def _days_before(start: datetime, tz_name: str, days: int | None) -> datetime | None:
    """``days`` calendar days from ``start`` at the same local time (10:00 stays 10:00)."""
    return None if days is None else wall_shift(start, tz_name, timedelta(days=days))


def _order(template: Template) -> list[TemplateItem]:
    done: dict[str, TemplateItem] = {}
    pending = list(template.items)
    while pending:
        ready = [i for i in pending if i.relative_to is None or i.relative_to in done]
        if not ready:
            names = ", ".join(sorted(i.key for i in pending))
            raise TemplateError("relative_to", f"items refer to each other in a loop: {names}")
        for item in ready:
            done[item.key] = item
            pending.remove(item)
    return list(done.values())


def _item(category: Category, raw: Any, where: str, default_tz: str) -> TemplateItem:
    if not isinstance(raw, dict):
        raise TemplateError(where.rstrip("."), "must be a table")
    _no_unknown(raw, _EVENT_KEYS if category == "event" else _MILESTONE_KEYS, where)
    kinds = EVENT_KINDS if category == "event" else MILESTONE_KINDS
    kind = _text(raw, "kind", where)
    if kind not in kinds:
        raise TemplateError(where + "kind", f"must be one of {', '.join(kinds)}")
    tz = _zone(_text(raw, "time_zone", where, default=default_tz), where + "time_zone")
    try:
        placement = Placement.from_dict(raw, prefix=where)
    except PlacementError as exc:
        raise TemplateError(exc.field, exc.reason) from None
    rrule = raw.get("rrule")
    if rrule is not None:
        try:
            rrule = normalize_rrule(str(rrule), tz)
        except BadRecurrence as exc:
            raise TemplateError(where + "rrule", str(exc)) from None
    parent = raw.get("parent") if category == "event" else raw.get("event")
    return TemplateItem(
        category=category,
        key=_text(raw, "key", where),
        kind=kind,
        title=_text(raw, "title", where),
        description=_text(raw, "description", where, default=""),
        time_zone=tz,
        placement=placement,
        relative_to=raw.get("relative_to"),
        parent=parent,
        venue=_text(raw, "venue", where, default=""),
        online_url=_text(raw, "online_url", where, default=""),
        rrule=rrule,
        capacity=_optional_int(raw, "capacity", where),
        registration_opens_days=_optional_int(raw, "registration_opens_days", where),
        registration_closes_days=_optional_int(raw, "registration_closes_days", where),
    )


def _no_unknown(raw: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in raw:
        if key not in allowed:
            raise TemplateError(where + key, "unknown key")


def _text(raw: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or (default is None and not value.strip()):
        raise TemplateError(where + key, "must be non-empty text")
    return value


def _optional_int(raw: dict[str, Any], key: str, where: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TemplateError(where + key, "must be a whole number")
    return value


def _zone(name: str, field: str) -> str:
    try:
        zone(name)
    except UnknownTimeZone as exc:
        raise TemplateError(field, str(exc)) from None
    return name
