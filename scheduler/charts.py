"""Geometry for the charts the pages draw as inline SVG, and for the organizers' Gantt view.

Pure: numbers in, coordinates out; the templates turn them into markup (so every label is
escaped by Jinja). Drawn on the server because a page must be readable on a slow link
without a charting library; each chart also comes with its numbers as a table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from dateutil.relativedelta import relativedelta

from scheduler.timezones import from_local, to_local

WIDTH = 640
ROW = 30
BAR = 20
LABEL_CHARS = 30


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    short_label: str
    value: int
    x: float
    y: float
    width: float
    height: float
    # Where the label and the value are written, and which way they run.
    label_x: float
    label_y: float
    label_anchor: str
    value_x: float
    value_anchor: str
    # A second line under the label (the year under a month), or "".
    sub_label: str = ""


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    total: int
    baseline_x: float
    baseline_y: float


def _short(label: str, limit: int = LABEL_CHARS) -> str:
    return label if len(label) <= limit else label[: limit - 1].rstrip() + "…"


def bars(data: list[tuple[str, int]], *, rtl: bool = False, width: int = WIDTH) -> Chart:
    """Horizontal bars, one row each, labels on the start side, values after each bar.

    Right to left, the chart is mirrored: labels on the right, bars growing leftwards.
    """
    label_w = width * 0.42
    value_w = 56.0
    area = width - label_w - value_w
    top = max((v for _, v in data), default=0) or 1
    out = []
    for i, (label, value) in enumerate(data):
        w = area * value / top
        y = i * ROW + (ROW - BAR) / 2
        if rtl:
            x = width - label_w - w
            out.append(
                Bar(label, _short(label), value, x, y, w, BAR,
                    width - 4, y + BAR - 4, "end", x - 4, "end")
            )  # fmt: skip
        else:
            x = label_w
            out.append(
                Bar(label, _short(label), value, x, y, w, BAR,
                    4, y + BAR - 4, "start", x + w + 4, "start")
            )  # fmt: skip
    height = max(len(data), 1) * ROW
    baseline = width - label_w if rtl else label_w
    return Chart(width, height, out, sum(v for _, v in data), baseline, height)


def columns(
    data: list[tuple[str, int]],
    *,
    rtl: bool = False,
    width: int = WIDTH,
    short_labels: list[tuple[str, str]] | None = None,
) -> Chart:
    """Vertical columns with their labels below and values above (for 1..23, months).

    ``short_labels`` gives each column's axis label as two lines (month, and the year
    where it changes); the full label stays in the tooltip and the table.
    """
    height = 220 if short_labels else 200
    label_h = 40.0 if short_labels else 22.0
    value_h = 16.0
    area = height - label_h - value_h
    n = max(len(data), 1)
    step = width / n
    col = max(min(step * 0.7, 40.0), 2.0)
    top = max((v for _, v in data), default=0) or 1
    out = []
    for i, (label, value) in enumerate(data):
        h = area * value / top
        slot = (n - 1 - i) if rtl else i
        cx = slot * step + step / 2
        y = height - label_h - h
        short, sub = short_labels[i] if short_labels else (_short(label, 8), "")
        out.append(
            Bar(label, short, value, cx - col / 2, y, col, h,
                cx, height - label_h + 16, "middle", cx, "middle", sub)
        )  # fmt: skip
    return Chart(width, height, out, sum(v for _, v in data), 0, height - label_h)


# --- Gantt --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Span:
    """Where an item sits on the time axis, in percent of the axis (from its start side)."""

    start: float
    width: float


@dataclass(frozen=True, slots=True)
class Tick:
    at: datetime
    position: float
    unit: str  # "year", "month" or "day"


def window(
    starts: list[datetime], ends: list[datetime], pad: float = 0.02
) -> tuple[datetime, datetime]:
    """An axis that holds every item with a little room on both sides."""
    first, last = min(starts), max(ends + starts)
    if last <= first:
        last = first + timedelta(days=1)
    room = (last - first) * pad
    return first - room, last + room


def span(
    start: datetime, end: datetime | None, lo: datetime, hi: datetime, min_width: float = 0.5
) -> Span:
    total = (hi - lo).total_seconds()
    left = (start - lo).total_seconds() / total * 100
    if end is None:
        return Span(round(left, 3), 0.0)
    width = max((end - start).total_seconds() / total * 100, min_width)
    left = min(max(left, 0.0), 100.0 - width)
    return Span(round(left, 3), round(width, 3))


def ticks(lo: datetime, hi: datetime, tz: str) -> list[Tick]:
    """Axis marks at the starts of years, months or days (local to ``tz``), about 4 to 24."""
    days = (hi - lo).days
    unit, step = ("year", relativedelta(years=1))
    if days <= 45:
        unit, step = "day", relativedelta(days=max(days // 12, 1))
    elif days <= 900:
        unit, step = "month", relativedelta(months=1 if days <= 400 else 3)
    local = to_local(lo, tz).replace(tzinfo=None)
    if unit == "year":
        mark = local.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    elif unit == "month":
        mark = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    else:
        mark = local.replace(hour=0, minute=0, second=0, microsecond=0)
    total = (hi - lo).total_seconds()
    out = []
    for _ in range(60):
        instant = from_local(mark, tz)
        if instant > hi:
            break
        # A mark too near the end would have its label cut off.
        if instant >= lo and (instant - lo).total_seconds() / total <= 0.94:
            out.append(Tick(instant, round((instant - lo).total_seconds() / total * 100, 3), unit))
        mark = mark + step
    return out
