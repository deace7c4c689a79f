"""What every page shares: the visitor's language and time zone, template helpers, static files.

The visitor's choices live in two plain cookies (``lang``, ``tz``): they are preferences,
not credentials, so any page can read them and no session is needed for the public side.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import pass_context
from jinja2.runtime import Context
from litestar import Request
from litestar.datastructures import Cookie
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Template

from scheduler import i18n
from scheduler.timezones import is_valid_zone

STATIC_DIR = Path(__file__).resolve().parent / "static"
LANG_COOKIE = "lang"
TZ_COOKIE = "tz"
ONE_YEAR = 365 * 24 * 3600
AnyRequest = Request[Any, Any, Any]


@dataclass(frozen=True, slots=True)
class Visitor:
    lang: str
    # The visitor's own zone: the cookie's, or UTC until the browser (or the visitor) says.
    tz: str
    tz_chosen: bool


def visitor(request: AnyRequest, preferred: str | None = None) -> Visitor:
    """Language: ?lang=, then the cookie, then ``preferred`` (a registrant's), then the browser."""
    lang = i18n.negotiate(
        request.query_params.get("lang"),
        request.cookies.get(LANG_COOKIE),
        preferred,
        accept_language=request.headers.get("accept-language"),
    )
    tz = request.cookies.get(TZ_COOKIE, "")
    chosen = bool(tz) and is_valid_zone(tz)
    return Visitor(lang, tz if chosen else "UTC", chosen)


def safe_next(value: str | None, default: str = "/") -> str:
    """A local path to go back to; anything that could leave the site becomes ``default``."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    if any(ord(c) < 32 for c in value):
        return default
    return value


def here(request: AnyRequest) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def page(
    request: AnyRequest,
    template: str,
    *,
    status_code: int = 200,
    preferred_lang: str | None = None,
    **context: Any,
) -> Template:
    """A page in the visitor's language, with what base.html needs."""
    who = visitor(request, preferred_lang)
    values = {
        "lang": who.lang,
        "dir": i18n.direction(who.lang),
        "visitor_tz": who.tz,
        "tz_chosen": who.tz_chosen,
        "here": here(request),
        **context,
    }
    return Template(template, context=values, status_code=status_code)


def preference_cookie(name: str, value: str) -> Cookie:
    return Cookie(key=name, value=value, max_age=ONE_YEAR, path="/", samesite="lax", httponly=False)


@lru_cache(maxsize=32)
def _version(name: str) -> str:
    return hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:12]


def static_url(name: str) -> str:
    """The file's URL with its content hash, so it can be cached for a long time."""
    return f"/static/{name}?v={_version(name)}"


# --- Jinja helpers: every template gets these, whatever context its handler passes ----------


def _lang(ctx: Context) -> str:
    value = ctx.get("lang")
    return value if isinstance(value, str) and value in i18n.LANGUAGES else i18n.DEFAULT_LANGUAGE


@pass_context
def _t(ctx: Context, key: str, **values: Any) -> str:
    return i18n.text(_lang(ctx), key, **values)


@pass_context
def _when(ctx: Context, instant: datetime, tz: str) -> str:
    return i18n.when(instant, tz, _lang(ctx))


@pass_context
def _span(ctx: Context, start: datetime, end: datetime | None, tz: str) -> str:
    return i18n.span(start, end, tz, _lang(ctx))


@pass_context
def _date(ctx: Context, instant: datetime, tz: str) -> str:
    return i18n.date_text(instant, tz, _lang(ctx))


@pass_context
def _zone(ctx: Context, tz: str, at: datetime | None = None) -> str:
    return i18n.zone_text(tz, _lang(ctx), at)


@pass_context
def _period(ctx: Context, instant: datetime, tz: str, unit: str) -> str:
    return i18n.period_text(instant, tz, _lang(ctx), unit)


@pass_context
def _country(ctx: Context, alpha3: str) -> str:
    return i18n.country_name(alpha3, _lang(ctx))


@pass_context
def _number(ctx: Context, value: float) -> str:
    return i18n.number(value, _lang(ctx))


def register_helpers(engine: JinjaTemplateEngine) -> None:
    """Called once by the app's TemplateConfig."""
    env = engine.engine
    env.trim_blocks = True
    env.lstrip_blocks = True
    env.globals.update(
        t=_t,
        when=_when,
        span=_span,
        day=_date,
        zone_name=_zone,
        number=_number,
        period=_period,
        country=_country,
        static=static_url,
        languages=[(code, i18n.NATIVE_NAMES[code]) for code in i18n.LANGUAGES],
    )
