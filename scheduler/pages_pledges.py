"""The public pledge dashboard of a process: counts by region, GCM objective, form of support,
pledger and month, drawn as SVG on the server, each chart with its numbers as a table.

It reads the same figures as the JSON API (``/api/pledges/stats``), from the same cache, and
links to that API for anyone who wants the data itself.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery
from litestar.response import Template
from sqlalchemy import select

from scheduler import charts, i18n
from scheduler import pledges as svc
from scheduler.answer_cache import AnswerCache
from scheduler.api_pledges import cached_stats
from scheduler.database import Database
from scheduler.errors import NotFound
from scheduler.models import Process
from scheduler.pages import problem
from scheduler.pages_common import AnyRequest, page, visitor


def _month_labels(period: str, lang: str, first: bool) -> tuple[str, tuple[str, str]]:
    """The month written out ("Jan 2026"), and on the axis as "Jan" with the year below it
    where the year changes."""
    try:
        when = datetime.strptime(period, "%Y-%m").replace(day=15, tzinfo=UTC)
    except ValueError:
        return period, (period, "")
    year = i18n.year_text(when, "UTC", lang) if first or when.month == 1 else ""
    return i18n.month_text(when, "UTC", lang), (i18n.short_month_text(when, lang), year)


class PledgePages(Controller):
    include_in_schema = False

    @get("/processes/{slug:str}/pledges")
    async def dashboard(
        self,
        request: AnyRequest,
        db: NamedDependency[Database],
        answer_cache: NamedDependency[AnswerCache],
        slug: FromPath[str],
        region: FromQuery[str | None] = None,
        form: FromQuery[str | None] = None,
        objective: FromQuery[str | None] = None,
        pledger_type: FromQuery[str | None] = None,
    ) -> Template:
        lang = visitor(request).lang
        rtl = lang in i18n.RTL_LANGUAGES
        chosen_form = form if form in svc.FORMS else None
        chosen_type = pledger_type if pledger_type in svc.PLEDGER_TYPES else None
        chosen_objective = int(objective) if objective and objective.isdigit() else None
        if chosen_objective not in svc.OBJECTIVES:
            chosen_objective = None
        async with db.reader() as session:
            process = await session.scalar(select(Process).where(Process.slug == slug))
        if process is None:
            return problem(request, NotFound())
        everything = svc.PledgeFilter(process_id=process.id)
        regions = sorted(
            r for r in (await cached_stats(db, answer_cache, everything)).by_region if r
        )
        chosen_region = region if region in regions else None
        flt = svc.PledgeFilter(
            process_id=process.id,
            region=chosen_region,
            form=chosen_form,
            objective=chosen_objective,
            pledger_type=chosen_type,
        )
        stats = await cached_stats(db, answer_cache, flt)
        by_region = sorted(stats.by_region.items(), key=lambda kv: (-kv[1], kv[0]))
        region_data = [(k or i18n.text(lang, "pledges.no_region"), v) for k, v in by_region]
        objective_data = [(str(o), stats.by_objective.get(o, 0)) for o in svc.OBJECTIVES]
        form_data = [
            (i18n.text(lang, f"pledge_form.{k}"), stats.by_form.get(k, 0)) for k in svc.FORMS
        ]
        type_data = [
            (i18n.text(lang, f"pledger.{k}"), stats.by_pledger_type.get(k, 0))
            for k in svc.PLEDGER_TYPES
        ]
        months = sorted(stats.over_time.items())[-24:]
        labels = [_month_labels(p, lang, i == 0) for i, (p, _) in enumerate(months)]
        time_data = [(full, n) for (full, _), (_, n) in zip(labels, months, strict=True)]
        query: dict[str, Any] = {"process_id": process.id}
        for key, value in (
            ("region", chosen_region),
            ("form", chosen_form),
            ("objective", chosen_objective),
            ("pledger_type", chosen_type),
        ):
            if value is not None:
                query[key] = value
        return page(
            request,
            "pledges.html",
            process=process,
            stats=stats,
            regions=regions,
            forms=svc.FORMS,
            pledger_types=svc.PLEDGER_TYPES,
            objectives=list(svc.OBJECTIVES),
            chosen={
                "region": chosen_region or "",
                "form": chosen_form or "",
                "objective": chosen_objective or "",
                "pledger_type": chosen_type or "",
            },
            charts={
                "region": (charts.bars(region_data, rtl=rtl), region_data),
                "objective": (charts.columns(objective_data, rtl=rtl), objective_data),
                "form": (charts.bars(form_data, rtl=rtl), form_data),
                "pledger": (charts.bars(type_data, rtl=rtl), type_data),
                "time": (
                    charts.columns(time_data, rtl=rtl, short_labels=[a for _, a in labels]),
                    time_data,
                ),
            },
            api_stats="/api/pledges/stats?" + urlencode(query),
            api_list="/api/pledges/export.csv?" + urlencode(query),
        )
