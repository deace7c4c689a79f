"""Page texts in four languages, and dates, times and numbers formatted for them with Babel.

Catalogs are TOML files (``locales/<language>.toml``) read once per process, so nothing is
compiled at build or run time. A key missing from a catalog falls back to English: a page
always renders, and ``tests/test_pages.py`` checks that English, French and Spanish are
complete. Pure: no I/O beyond reading the catalogs, no clock.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import iso3166
from babel import Locale
from babel.dates import format_datetime, format_skeleton, format_time, get_timezone_location
from babel.numbers import format_decimal

from scheduler.timezones import UnknownTimeZone, zone

LOCALES_DIR = Path(__file__).resolve().parent / "locales"
LANGUAGES = ("en", "fr", "es", "ar")
DEFAULT_LANGUAGE = "en"
NATIVE_NAMES = {"en": "English", "fr": "Français", "es": "Español", "ar": "العربية"}
RTL_LANGUAGES = frozenset({"ar"})


def _flatten(prefix: str, table: Mapping[str, Any], into: dict[str, str]) -> None:
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            _flatten(name + ".", value, into)
        else:
            into[name] = str(value)


@lru_cache(maxsize=1)
def catalogs() -> dict[str, dict[str, str]]:
    """Language -> dotted key ("status.held") -> text."""
    out: dict[str, dict[str, str]] = {}
    for lang in LANGUAGES:
        with (LOCALES_DIR / f"{lang}.toml").open("rb") as f:
            flat: dict[str, str] = {}
            _flatten("", tomllib.load(f), flat)
        out[lang] = flat
    return out


class _Keep(dict[str, Any]):
    """Leaves an unknown placeholder as it is instead of failing the page."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def text(lang: str, key: str, **values: Any) -> str:
    """The text for ``key`` in ``lang`` (English if untranslated), placeholders filled."""
    found = catalogs().get(lang, {}).get(key)
    if found is None:
        found = catalogs()[DEFAULT_LANGUAGE].get(key, key)
    return found.format_map(_Keep(values)) if values else found


def has(lang: str, key: str) -> bool:
    return key in catalogs().get(lang, {}) or key in catalogs()[DEFAULT_LANGUAGE]


def language_of(tag: str | None) -> str | None:
    """One of LANGUAGES for a tag such as ``fr-CA``; None if not one of ours."""
    if not tag:
        return None
    base = tag.strip().lower().replace("_", "-").split("-")[0]
    return base if base in LANGUAGES else None


def from_accept_language(header: str | None) -> str | None:
    """The best of our languages in an Accept-Language header, by q-value."""
    if not header:
        return None
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        lang = language_of(tag)
        if lang is not None and q > 0:
            ranked.append((-q, index, lang))
    return min(ranked)[2] if ranked else None


def negotiate(*choices: str | None, accept_language: str | None = None) -> str:
    """The first usable choice (query, cookie, stored preference...), then the browser's."""
    for choice in choices:
        lang = language_of(choice)
        if lang is not None:
            return lang
    return from_accept_language(accept_language) or DEFAULT_LANGUAGE


def direction(lang: str) -> str:
    return "rtl" if lang in RTL_LANGUAGES else "ltr"


# --- Dates, times, numbers ------------------------------------------------------------------


def _local(instant: datetime, tz: str) -> datetime:
    return instant.astimezone(zone(tz))


def date_text(instant: datetime, tz: str, lang: str, *, weekday: bool = True) -> str:
    """ "Tue, May 5, 2026" in the clocks of ``tz``."""
    return str(format_skeleton("yMMMEd" if weekday else "yMMMd", _local(instant, tz), locale=lang))


def time_text(instant: datetime, tz: str, lang: str) -> str:
    return str(format_time(_local(instant, tz), "short", locale=lang))


def when(instant: datetime, tz: str, lang: str) -> str:
    """Date and time in the clocks of ``tz``."""
    return text(
        lang,
        "time.at",
        date=date_text(instant, tz, lang),
        time=time_text(instant, tz, lang),
    )


def span(start: datetime, end: datetime | None, tz: str, lang: str) -> str:
    """A start and end as people write them: one date when both fall on the same day."""
    if end is None:
        return when(start, tz, lang)
    if _local(start, tz).date() == _local(end, tz).date():
        return text(
            lang,
            "time.same_day",
            date=date_text(start, tz, lang),
            start=time_text(start, tz, lang),
            end=time_text(end, tz, lang),
        )
    return text(lang, "time.range", start=when(start, tz, lang), end=when(end, tz, lang))


def month_text(instant: datetime, tz: str, lang: str) -> str:
    return str(format_skeleton("yMMM", _local(instant, tz), locale=lang))


def short_month_text(instant: datetime, lang: str) -> str:
    """The month alone, abbreviated ("Jan", "janv.")."""
    return str(format_skeleton("MMM", _local(instant, "UTC"), locale=lang))


def year_text(instant: datetime, tz: str, lang: str) -> str:
    return str(format_skeleton("y", _local(instant, tz), locale=lang))


def period_text(instant: datetime, tz: str, lang: str, unit: str) -> str:
    """An axis label: the year, the month (January says the year instead), or the day."""
    local = _local(instant, tz)
    if unit == "year" or (unit == "month" and local.month == 1):
        return year_text(instant, tz, lang)
    if unit == "month":
        return str(format_skeleton("MMM", local, locale=lang))
    return str(format_skeleton("MMMd", local, locale=lang))


def offset_text(instant: datetime, tz: str, lang: str) -> str:
    """ "GMT-04:00" as the language writes it, at ``instant`` (offsets change with DST)."""
    return str(format_datetime(instant, "ZZZZ", tzinfo=zone(tz), locale=lang))


def zone_text(tz: str, lang: str, at: datetime | None = None) -> str:
    """A zone as a person reads it: its city in the language, and the offset at ``at``."""
    try:
        located = get_timezone_location(zone(tz), locale=lang, return_city=True)
        place = tz if tz == "UTC" else str(located)
    except (LookupError, UnknownTimeZone):
        place = tz
    if at is None:
        return place
    return f"{place}, {offset_text(at, tz, lang)}"


def country_name(alpha3: str, lang: str) -> str:
    """An ISO 3166 alpha-3 code as the country's name in ``lang`` (the code if unknown)."""
    country = iso3166.countries_by_alpha3.get(alpha3)
    if country is None:
        return alpha3
    return str(Locale.parse(lang).territories.get(country.alpha2, country.apolitical_name))


def number(value: float, lang: str) -> str:
    return str(format_decimal(value, locale=lang))


def options(lang: str, prefix: str, keys: Iterable[str]) -> list[tuple[str, str]]:
    """(value, label) pairs for a closed vocabulary, labels from ``prefix.<value>``."""
    return [(k, text(lang, f"{prefix}.{k}")) for k in keys]
