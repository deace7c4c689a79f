"""Pledges: the canonical record, its validation, and the dashboard queries.

Validation is pure (``now`` passed in, no I/O): a feed record is a mapping read from JSON or
CSV; the feed's field map says where each canonical field lives when the source names it
differently. A record either becomes a ``PledgeRecord`` or raises ``BadRecord`` with the
reason shown to organizers. The dashboards read the active pledges of a process through one
index (process_id, withdrawn_at): each count is one ``GROUP BY``, objectives are counted
from their bit mask.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

import iso3166
import msgspec
from sqlalchemy import (
    ColumnElement,
    DateTime,
    Select,
    String,
    func,
    select,
    tuple_,
    type_coerce,
)
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler.csv_safety import csv_safe
from scheduler.models import Pledge

PLEDGER_TYPES = ("member_state", "stakeholder", "un_system", "other")
PLEDGE_TYPES = ("single", "common", "partnership", "matching")
FORMS = ("financial", "human_resource", "process", "policy")
OBJECTIVES = range(1, 24)

PledgerType = Literal["member_state", "stakeholder", "un_system", "other"]
PledgeForm = Literal["financial", "human_resource", "process", "policy"]
PledgeState = Literal["active", "withdrawn", "all"]

# Canonical field -> the name a feed uses unless its field map says otherwise.
SOURCE_NAMES: dict[str, str] = {
    "source_id": "id",
    "title": "title",
    "pledger_name": "pledger_name",
    "pledger_type": "pledger_type",
    "country": "country",
    "region": "region",
    "pledge_type": "pledge_type",
    "matches": "matches",
    "form": "form",
    "objectives": "objectives",
    "status": "status",
    "submitted_at": "submitted_at",
    "updated_at": "updated_at",
    "source_url": "url",
}
FIELD_NAMES = tuple(SOURCE_NAMES)

_MAX = {
    "source_id": 200,
    "title": 500,
    "pledger_name": 300,
    "region": 100,
    "matches": 200,
    "status": 40,
    "source_url": 2000,
}
# Spellings seen in the wild for the closed vocabularies (after lower-casing, spaces and
# hyphens as underscores).
_ALIASES = {
    "state": "member_state",
    "government": "member_state",
    "un": "un_system",
    "un_entity": "un_system",
    "united_nations": "un_system",
    "human_resources": "human_resource",
}
_OBJECTIVE_SPLIT = re.compile(r"[\s,;|]+")
_OBJECTIVE_SET = frozenset(OBJECTIVES)
_INT = frozenset({int})

_ALPHA3 = frozenset(iso3166.countries_by_alpha3)
_ALPHA2 = {c.alpha2: c.alpha3 for c in iso3166.countries_by_alpha3.values()}
# A source clock a little ahead of ours is not an error; a date next year is.
FUTURE_SLACK = timedelta(days=1)
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
_FROM_ISO = datetime.fromisoformat


class BadRecord(ValueError):
    """A feed record that cannot become a pledge; the reason is shown to organizers."""

    def __init__(self, reason: str, source_id: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.source_id = source_id


class PledgeRecord(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One pledge in canonical form, with the hash of its content (for cheap no-op syncs)."""

    source_id: str
    title: str
    pledger_name: str
    pledger_type: str
    country: str | None
    region: str
    pledge_type: str
    matches_source_id: str | None
    form: str
    objectives: list[int]
    status: str
    submitted_at: datetime | None
    source_updated_at: datetime | None
    source_url: str
    content_hash: str = ""


# --- Field maps ---------------------------------------------------------------------------


class FieldPaths(dict[str, tuple[str, ...]]):
    """Canonical field -> where the source keeps it; ``flat``: the keys when none is dotted.

    ``take`` reads all the flat keys at once (C speed), KeyError when one is missing.
    """

    flat: tuple[str, ...] | None = None
    take: Callable[[Mapping[str, Any]], tuple[Any, ...]] | None = None


def check_field_map(field_map: Mapping[str, Any]) -> dict[str, str]:
    """The field map cleaned, or ValueError naming the bad entry."""
    cleaned: dict[str, str] = {}
    for key, value in field_map.items():
        if key not in SOURCE_NAMES:
            raise ValueError(f"unknown field {key!r} (fields: {', '.join(FIELD_NAMES)})")
        if not isinstance(value, str) or not value.strip() or len(value) > 200:
            raise ValueError(f"{key}: give the source's field name (1-200 characters)")
        cleaned[key] = value.strip()
    return cleaned


def field_paths(field_map: Mapping[str, str], *, nested: bool) -> FieldPaths:
    """Where each canonical field is read; dotted names walk into JSON objects."""
    names = {**SOURCE_NAMES, **field_map}
    paths = FieldPaths(
        (key, tuple(name.split(".")) if nested and "." in name else (name,))
        for key, name in names.items()
    )
    if all(len(paths[key]) == 1 for key in FIELD_NAMES):
        paths.flat = tuple(paths[key][0] for key in FIELD_NAMES)
        paths.take = operator.itemgetter(*paths.flat)
    return paths


def record_type(paths: FieldPaths) -> type[msgspec.Struct] | None:
    """A type msgspec reads a JSON record into, its fields the values ``validate_fields``
    takes (missing ones None, as for a mapping); None when a name is dotted or used twice.

    Every field is Any: whatever JSON value a field holds comes out as it would from
    ``json``, and validation stays the one judge of it.
    """
    return _feed_struct("FeedRecord", [(key, Any, None) for key in FIELD_NAMES], paths)


def _feed_struct(
    name: str, fields: list[tuple[str, Any, Any]], paths: FieldPaths
) -> type[msgspec.Struct] | None:
    """A struct of the canonical fields (in FIELD_NAMES order) under the source's names;
    None when a name is dotted or used twice (such records are read as mappings)."""
    if paths.flat is None or len(set(paths.flat)) < len(paths.flat):
        return None
    return msgspec.defstruct(
        name,
        fields,
        rename=dict(zip(FIELD_NAMES, paths.flat, strict=True)),
        kw_only=True,
        gc=False,
    )


def _limited(most: int, least: int = 0) -> Any:
    return Annotated[str, msgspec.Meta(min_length=least, max_length=most)]


# The common form of every field, as validate_fields takes it without a second look.
_PLAIN_FIELDS: tuple[tuple[str, Any, Any], ...] = (
    ("source_id", _limited(_MAX["source_id"], 1), msgspec.NODEFAULT),
    ("title", _limited(_MAX["title"]), msgspec.NODEFAULT),
    ("pledger_name", _limited(_MAX["pledger_name"]), msgspec.NODEFAULT),
    ("pledger_type", Literal[PLEDGER_TYPES], msgspec.NODEFAULT),
    ("country", Literal[(*sorted(_ALPHA3), "")] | None, None),
    ("region", _limited(_MAX["region"]) | None, None),
    ("pledge_type", Literal[PLEDGE_TYPES], msgspec.NODEFAULT),
    ("matches", _limited(_MAX["matches"]) | None, None),
    ("form", Literal[FORMS], msgspec.NODEFAULT),
    ("objectives", list[Annotated[int, msgspec.Meta(ge=1, le=23)]] | None, None),
    ("status", _limited(_MAX["status"]) | None, None),
    # Longer than a bare date: what _instant hands to _common_instant.
    ("submitted_at", Annotated[str, msgspec.Meta(min_length=11)] | None, None),
    ("updated_at", Annotated[str, msgspec.Meta(min_length=11)] | None, None),
    ("source_url", _limited(_MAX["source_url"]) | None, None),
)


def plain_record_type(paths: FieldPaths) -> type[msgspec.Struct] | None:
    """``record_type`` that takes only records in the common form (plain strings of the
    right lengths, the closed vocabularies as spelled, objectives as numbers 1-23, times
    as text): msgspec checks all that while it reads, and ``validate_plain`` does the
    rest for a whole page at once. Anything else makes the read fail, and the page is
    read with ``record_type`` and checked record by record, as before."""
    return _feed_struct("PlainFeedRecord", list(_PLAIN_FIELDS), paths)


def _lookup(raw: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    if len(path) == 1:
        return raw.get(path[0])
    value: Any = raw
    for part in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


# --- Validation ---------------------------------------------------------------------------


def validate_record(raw: Any, paths: FieldPaths, now: datetime) -> PledgeRecord:
    """The canonical pledge for one feed record, or BadRecord saying what is wrong.

    Written for speed (every record of every run passes here): the common case of plain
    strings, a list of objectives and ISO 8601 times takes no function call per field;
    anything else goes to the slower checks, which have the last word.
    """
    if type(raw) is dict and paths.take is not None:
        try:
            values = paths.take(raw)
        except KeyError:  # a field left out: the same as null
            values = tuple(map(raw.get, paths.flat))  # type: ignore[arg-type]
    elif not isinstance(raw, Mapping):
        raise BadRecord(f"a record must be an object, got {type(raw).__name__}")
    elif paths.flat is not None:
        values = tuple(map(raw.get, paths.flat))
    else:
        values = tuple(_lookup(raw, paths[key]) for key in FIELD_NAMES)
    return validate_fields(values, now)


def validate_fields(values: tuple[Any, ...], now: datetime) -> PledgeRecord:
    """``validate_record`` for a record's values already read, in FIELD_NAMES order."""
    (sid, title, name, ptype, country, region, kind, matches, form, objectives, status,
     submitted, updated, url) = values  # fmt: skip
    source_id = sid.strip() if type(sid) is str and 0 < len(sid) <= 200 else _source_id(sid)
    if not source_id:
        raise BadRecord("id: missing")
    try:
        title = title.strip() if type(title) is str and len(title) <= 500 else _text("title", title)
        if not title:
            raise BadRecord("title: missing")
        name = (
            name.strip() if type(name) is str and len(name) <= 300 else _text("pledger_name", name)
        )
        if not name:
            raise BadRecord("pledger_name: missing")
        ptype = ptype if ptype in PLEDGER_TYPES else _choice("pledger_type", ptype, PLEDGER_TYPES)
        kind = kind if kind in PLEDGE_TYPES else _choice("pledge_type", kind, PLEDGE_TYPES)
        form = form if form in FORMS else _choice("form", form, FORMS)
        if matches is not None:
            if type(matches) is str and len(matches) <= 200:
                matches = matches.strip() or None
            else:
                matches = _text("matches", matches) or None
        if kind == "matching":
            if matches is None:
                raise BadRecord("matches: a matching pledge must name the pledge it matches")
            if matches == source_id:
                raise BadRecord("matches: a pledge cannot match itself")
        elif matches is not None:
            raise BadRecord(f"matches: only a matching pledge names another (this one is {kind})")
        country = country if type(country) is str and country in _ALPHA3 else _country(country)
        if country is None and ptype == "member_state":
            raise BadRecord("country: required for a member state (ISO 3166-1 alpha-3)")
        url = url.strip() if type(url) is str and len(url) <= 2000 else _text("source_url", url)
        if url and not url.startswith(("https://", "http://")):
            raise BadRecord("url: must start with https:// or http://")
        if type(region) is str and len(region) <= 100:
            region = region.strip()
        else:
            region = _text("region", region)
        # A list of ints (never bools) within 1-23: set(map(type, ...)) is one C loop. Or,
        # as CSV has them, numbers between single semicolons ("3;17").
        if (
            type(objectives) is list
            and set(map(type, objectives)) <= _INT
            and ((chosen := set(objectives)) <= _OBJECTIVE_SET)
        ) or (
            type(objectives) is str
            and objectives.replace(";", "").isdecimal()
            and objectives[0] != ";" != objectives[-1]
            and ";;" not in objectives
            and ((chosen := set(map(int, objectives.split(";")))) <= _OBJECTIVE_SET)
        ):
            objectives = sorted(chosen)
        else:
            objectives = _objectives(objectives)
        status = (
            (status if type(status) is str and len(status) <= 40 else _text("status", status))
            .strip()
            .lower()
        )
        content = (
            source_id,
            title,
            name,
            ptype,
            country,
            region,
            kind,
            matches,
            form,
            objectives,
            status,
            _instant(submitted, "submitted_at", now),
            _instant(updated, "updated_at", now),
            url,
        )
    except BadRecord as exc:
        raise BadRecord(exc.reason, source_id) from None
    digest = hashlib.sha256(_ENCODE(content)).hexdigest()
    return PledgeRecord(*content, digest)


_ENCODE = msgspec.json.Encoder().encode


class NotPlain(ValueError):
    """A page with some record ``validate_plain`` cannot judge: check it record by record."""


_IS_MATCHING = "matching".__eq__
_IS_STATE = "member_state".__eq__
_GIVEN = functools.partial(operator.is_not, None)
_WEB = operator.methodcaller("startswith", ("https://", "http://"))
_HEX = operator.methodcaller("hexdigest")


def validate_plain(records: Sequence[msgspec.Struct], now: datetime) -> list[PledgeRecord]:
    """``validate_fields`` for every record of a page read into ``plain_record_type``,
    column by column: each check is one C loop over the page instead of Python steps per
    record (100,000 bench records: about 0.4 s instead of 0.7). NotPlain when any record
    is not valid as it stands; the record-by-record checks then give the exact reason.
    Whatever it returns, validate_fields returns too (tests/test_pledge_records.py)."""
    if not records:
        return []
    read: list[Sequence[Any]] = list(zip(*map(msgspec.structs.astuple, records), strict=True))
    (sid, title, name, ptype, country, region, kind, matches, form, objectives, status,
     submitted, updated, url) = read  # fmt: skip
    sid, title, name = (list(map(str.strip, column)) for column in (sid, title, name))
    if not (all(sid) and all(title) and all(name)):
        raise NotPlain("id, title or pledger_name: missing")
    country = [c or None for c in country]
    if None in itertools.compress(country, map(_IS_STATE, ptype)):
        raise NotPlain("country: required for a member state")
    matches = [None if m is None else m.strip() or None for m in matches]
    if list(map(_IS_MATCHING, kind)) != list(map(_GIVEN, matches)):
        raise NotPlain("matches: given where it should not be, or missing")
    if any(map(operator.eq, matches, sid)):
        raise NotPlain("matches: a pledge cannot match itself")
    url = ["" if u is None else u.strip() for u in url]
    if not all(map(_WEB, filter(None, url))):
        raise NotPlain("url: must start with https:// or http://")
    region = ["" if r is None else r.strip() for r in region]
    objectives = [[] if o is None else sorted(set(o)) for o in objectives]
    status = ["" if s is None else s.strip().lower() for s in status]
    try:
        submitted = [None if t is None else _common_instant(t, now) for t in submitted]
        updated = [None if t is None else _common_instant(t, now) for t in updated]
    except ValueError:
        raise NotPlain("a time not in the common form, or out of range") from None
    columns = (sid, title, name, ptype, country, region, kind, matches, form, objectives,
               status, submitted, updated, url)  # fmt: skip
    digests = map(_HEX, map(hashlib.sha256, map(_ENCODE, zip(*columns, strict=True))))
    return list(map(PledgeRecord, *columns, digests))


def objective_mask(objectives: Sequence[int]) -> int:
    """The objectives as bits: objective n is ``1 << n``."""
    mask = 0
    for n in objectives:
        mask |= 1 << n
    return mask


def objectives_in(mask: int) -> list[int]:
    """The objectives whose bits ``mask`` holds, in order."""
    return [n for n in OBJECTIVES if mask >> n & 1]


def content_hash(record: PledgeRecord) -> str:
    """SHA-256 of the canonical content: equal hashes mean nothing to write."""
    return hashlib.sha256(_ENCODE(msgspec.structs.astuple(record)[:-1])).hexdigest()


def source_id_of(raw: Any, paths: FieldPaths) -> str:
    """The record's id when it has a usable one, else "" (for quarantine and withdrawal)."""
    if not isinstance(raw, Mapping):
        return ""
    try:
        return _source_id(_lookup(raw, paths["source_id"]))
    except BadRecord:
        return ""


def _source_id(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        raise BadRecord("id: missing")
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise BadRecord("id: missing")
    text: str = value.strip()
    if len(text) > _MAX["source_id"]:
        raise BadRecord(f"id: longer than {_MAX['source_id']} characters")
    return text


def _text(key: str, value: Any) -> str:
    if type(value) is str:
        text = value.strip()
    elif value is None:
        return ""
    elif isinstance(value, bool) or not isinstance(value, str | int | float):
        raise BadRecord(f"{key}: expected text, got {type(value).__name__}")
    else:
        text = str(value).strip()
    limit = _MAX.get(key)
    if limit is not None and len(text) > limit:
        raise BadRecord(f"{key}: longer than {limit} characters")
    return text


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRecord(f"{key}: missing (one of {', '.join(allowed)})")
    normal = value.strip().lower().replace(" ", "_").replace("-", "_")
    normal = _ALIASES.get(normal, normal)
    if normal not in allowed:
        raise BadRecord(f"{key}: {value[:50]!r} is not one of {', '.join(allowed)}")
    return normal


def _country(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRecord("country: expected an ISO 3166-1 alpha-3 code")
    code = value.strip().upper()
    if not code:
        return None
    if code in _ALPHA3:
        return code
    if code in _ALPHA2:
        return _ALPHA2[code]
    raise BadRecord(f"country: {value[:20]!r} is not an ISO 3166-1 alpha-3 code")


def _objectives(value: Any) -> list[int]:
    if value is None or value == "":
        return []
    items: list[Any]
    if isinstance(value, str):
        items = [part for part in _OBJECTIVE_SPLIT.split(value.strip()) if part]
    elif isinstance(value, list):
        items = value
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    else:
        raise BadRecord("objectives: expected a list of GCM objectives (1-23)")
    found: set[int] = set()
    for item in items:
        if isinstance(item, bool):
            raise BadRecord("objectives: expected numbers 1-23")
        if isinstance(item, str) and item.strip().isdecimal():  # "²" is a digit, not a number
            item = int(item)
        if not isinstance(item, int) or item not in OBJECTIVES:
            raise BadRecord(f"objectives: {str(item)[:20]!r} is not a GCM objective (1-23)")
        found.add(item)
    return sorted(found)


def _instant(value: Any, key: str, now: datetime) -> datetime | None:
    """An aware instant; a bare date is midnight UTC. Naive date-times are refused."""
    if type(value) is str and len(value) > 10:
        # The common case, at C speed; anything else (or wrong) gets the checks below.
        try:
            return _common_instant(value, now)
        except ValueError:
            pass
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRecord(f"{key}: expected an ISO 8601 date or date-time")
    text = value.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            parsed = datetime(day.year, day.month, day.day, tzinfo=UTC)
        else:
            parsed = datetime.fromisoformat(text)
    except ValueError:
        raise BadRecord(f"{key}: {text[:40]!r} is not an ISO 8601 date or date-time") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise BadRecord(f"{key}: {text[:40]!r} needs a UTC offset, e.g. 2026-05-05T10:00:00Z")
    try:
        parsed = parsed.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 moved past the calendar's ends
        raise BadRecord(f"{key}: {text[:40]!r} is out of range") from None
    if parsed < EARLIEST:
        raise BadRecord(f"{key}: before 1900")
    if parsed > now + FUTURE_SLACK:
        raise BadRecord(f"{key}: in the future ({text[:40]})")
    return parsed


@functools.lru_cache(maxsize=4096)
def _common_instant(value: str, now: datetime) -> datetime:
    """A time in the common form (ISO 8601 with an offset, in range) as UTC; ValueError
    for anything else. Remembered (per run's ``now``): feeds repeat their times, and a
    lookup costs a fraction of parsing one and moving it to UTC (validation of 100,000
    bench records: 550 ms before, 460 ms after)."""
    parsed = _FROM_ISO(value)
    if parsed.tzinfo is None:
        raise ValueError(value)
    if parsed.tzinfo is not UTC:  # "Z" and "+00:00" come as UTC itself
        try:
            parsed = parsed.astimezone(UTC)
        except OverflowError:
            raise ValueError(value) from None
    if not EARLIEST <= parsed <= now + FUTURE_SLACK:
        raise ValueError(value)
    return parsed


# --- Dashboard queries --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PledgeFilter:
    process_id: int | None = None
    feed_id: int | None = None
    region: str | None = None
    country: str | None = None
    pledger_type: str | None = None
    pledge_type: str | None = None
    form: str | None = None
    objective: int | None = None
    status: str | None = None
    text: str | None = None
    state: str = "active"


def where(flt: PledgeFilter) -> list[ColumnElement[bool]]:
    """The filter as SQL conditions on ``pledges``."""
    conditions: list[ColumnElement[bool]] = []
    if flt.process_id is not None:
        conditions.append(Pledge.process_id == flt.process_id)
    if flt.feed_id is not None:
        conditions.append(Pledge.feed_id == flt.feed_id)
    for column, value in (
        (Pledge.region, flt.region),
        (Pledge.country, flt.country.upper() if flt.country else None),
        (Pledge.pledger_type, flt.pledger_type),
        (Pledge.pledge_type, flt.pledge_type),
        (Pledge.form, flt.form),
        (Pledge.status, flt.status.lower() if flt.status else None),
    ):
        if value is not None:
            conditions.append(column == value)
    if flt.objective is not None:
        conditions.append(Pledge.objective_mask.op("&")(1 << flt.objective) != 0)
    if flt.text:
        needle = flt.text.strip()
        conditions.append(
            Pledge.title.icontains(needle, autoescape=True)
            | Pledge.pledger_name.icontains(needle, autoescape=True)
        )
    if flt.state == "active":
        conditions.append(Pledge.withdrawn_at.is_(None))
    elif flt.state == "withdrawn":
        conditions.append(Pledge.withdrawn_at.is_not(None))
    return conditions


def list_query(flt: PledgeFilter) -> Select[Pledge]:
    return select(Pledge).where(*where(flt)).order_by(Pledge.id)


async def count(session: AsyncSession, flt: PledgeFilter) -> int:
    total = await session.scalar(select(func.count(Pledge.id)).where(*where(flt)))
    return int(total or 0)


class Stats(msgspec.Struct, frozen=True):
    """The dashboard counts (the JSON answer of ``/api/pledges/stats`` as it is)."""

    total: int
    by_region: dict[str, int]
    by_country: dict[str, int]
    by_pledger_type: dict[str, int]
    by_form: dict[str, int]
    by_status: dict[str, int]
    by_objective: dict[int, int]
    interval: str
    over_time: dict[str, int]


async def stats(session: AsyncSession, flt: PledgeFilter, interval: str = "month") -> Stats:
    """Counts by each dimension and by period of submission, for the pledges ``flt`` keeps.

    PostgreSQL counts every dimension in one pass (GROUPING SETS); SQLite, which has none,
    runs one GROUP BY per dimension. Objectives are counted by distinct mask (a few hundred
    in practice), then by bit.
    """
    conditions = where(flt)
    dialect = session.get_bind().dialect.name
    dimensions: dict[str, Any] = {  # name -> a column or an expression
        "region": Pledge.region,
        "country": Pledge.country,
        "pledger_type": Pledge.pledger_type,
        "form": Pledge.form,
        "status": Pledge.status,
        "period": _period(dialect, interval),
        "mask": Pledge.objective_mask,
    }
    counted: dict[str, dict[Any, int]] = {name: {} for name in dimensions}
    if dialect == "postgresql":
        columns = list(dimensions.values())
        rows = await session.execute(
            select(*columns, func.grouping(*columns), func.count())
            .where(*conditions)
            .group_by(func.grouping_sets(*(tuple_(c) for c in columns)))
        )
        # GROUPING(...) has a bit set for each column left out of the row's set, the first
        # column the highest bit: the one bit not set says which dimension the row counts.
        everything = (1 << len(columns)) - 1
        which = {everything ^ (1 << (len(columns) - 1 - i)): i for i in range(len(columns))}
        names = list(dimensions)
        for row in rows:
            i = which[row[-2]]
            counted[names[i]][row[i]] = int(row[-1])
    else:
        for name, column in dimensions.items():
            pairs = await session.execute(
                select(column, func.count()).where(*conditions).group_by(column)
            )
            counted[name] = {key: int(n) for key, n in pairs}
    by_objective: dict[int, int] = {}
    for mask, n in counted["mask"].items():
        for objective in objectives_in(int(mask)):
            by_objective[objective] = by_objective.get(objective, 0) + n
    by_key = {
        name: dict(sorted((("" if k is None else str(k)), n) for k, n in counts.items()))
        for name, counts in counted.items()
    }
    by_key["period"].pop("", None)  # no submission time: counted in no period
    return Stats(
        total=sum(by_key["pledger_type"].values()),
        by_region=by_key["region"],
        by_country=by_key["country"],
        by_pledger_type=by_key["pledger_type"],
        by_form=by_key["form"],
        by_status=by_key["status"],
        by_objective=dict(sorted(by_objective.items())),
        interval=interval,
        over_time=by_key["period"],
    )


def _period(dialect: str, interval: str) -> ColumnElement[str]:
    """``YYYY-MM`` (or ``YYYY``) of the submission time in UTC, per back end."""
    if dialect == "sqlite":
        # Stored as naive UTC text, "YYYY-MM-DD HH:MM:SS.ffffff".
        return func.substr(Pledge.submitted_at, 1, 7 if interval == "month" else 4)
    pattern = "YYYY-MM" if interval == "month" else "YYYY"
    return func.to_char(func.timezone("UTC", Pledge.submitted_at), pattern)


def _text_cell(value: str | None) -> str:
    return "" if value is None else csv_safe(value)


def _plain_cell(value: Any) -> str:
    """Ids and the closed vocabularies: nothing there can start a formula."""
    return "" if value is None else str(value)


def _time_cell(value: datetime | str | None) -> str:
    """ISO 8601 in UTC, from the datetime, or (SQLite, ``csv_query``) the text stored."""
    return "" if value is None else _iso_time(value)


@functools.lru_cache(maxsize=10_000)
def _iso_time(value: datetime | str) -> str:
    """Pledges share their times (a run's mark, a feed's batch dates): each is formatted
    once."""
    when = value if isinstance(value, datetime) else _stored_time(value)
    return when.astimezone(UTC).isoformat()


def _stored_time(text: str) -> datetime:
    """A time as SQLite holds it (naive UTC text, "YYYY-MM-DD HH:MM:SS.ffffff")."""
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"a stored time that is not one: {text[:40]!r}") from None


_OBJECTIVE_CELLS: dict[int, str] = {}


def _objectives_cell(mask: int) -> str:
    """ "3;17" for a mask (read as bits, not as JSON: measured 0.45 s of a 100k export)."""
    cell = _OBJECTIVE_CELLS.get(mask)
    if cell is None:
        cell = ";".join(map(str, objectives_in(mask)))
        if len(_OBJECTIVE_CELLS) < 10_000:
            _OBJECTIVE_CELLS[mask] = cell
    return cell


# Each exported column: where its value comes from, and how it becomes a cell.
_CSV: dict[str, tuple[str, Callable[[Any], str]]] = {
    "id": ("id", _plain_cell),
    "feed_id": ("feed_id", _plain_cell),
    "process_id": ("process_id", _plain_cell),
    "source_id": ("source_id", _text_cell),
    "title": ("title", _text_cell),
    "pledger_name": ("pledger_name", _text_cell),
    "pledger_type": ("pledger_type", _plain_cell),
    "country": ("country", _plain_cell),
    "region": ("region", _text_cell),
    "pledge_type": ("pledge_type", _plain_cell),
    "matches_source_id": ("matches_source_id", _text_cell),
    "form": ("form", _plain_cell),
    "objectives": ("objective_mask", _objectives_cell),
    "status": ("status", _text_cell),
    "submitted_at": ("submitted_at", _time_cell),
    "source_updated_at": ("source_updated_at", _time_cell),
    "source_url": ("source_url", _text_cell),
    "withdrawn_at": ("withdrawn_at", _time_cell),
    "first_seen_at": ("first_seen_at", _time_cell),
    "last_seen_at": ("last_seen_at", _time_cell),
}
CSV_COLUMNS = tuple(_CSV)
_CELLS = tuple(cell for _, cell in _CSV.values())


def csv_query(flt: PledgeFilter, dialect: str) -> Select[Any]:
    """The CSV columns as plain rows (no ORM objects: an export may hold every pledge).

    The times skip the model's own conversion (its cells are made once per distinct
    time): on SQLite they come as the text stored, not parsed into datetimes first (a
    100,000-pledge export spent 1.1 s of 2.7 s parsing and formatting its 500,000 times);
    on PostgreSQL as the driver's aware datetimes.
    """
    table = Pledge.__table__.c
    as_read = String() if dialect == "sqlite" else DateTime(timezone=True)
    columns = (
        type_coerce(table[source], as_read) if cell is _time_cell else table[source]
        for source, cell in _CSV.values()
    )
    return select(*columns).where(*where(flt)).order_by(Pledge.id)


def csv_cells(row: Sequence[Any]) -> list[str]:
    """One row of ``csv_query`` as CSV cells, each safe to open in a spreadsheet."""
    return [cell(value) for cell, value in zip(_CELLS, row, strict=True)]
