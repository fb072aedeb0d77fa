"""What templates need beyond Jinja2: times, ages, JSON, and the chart's geometry.

The chart is SVG drawn on the server, so the page shows it without JavaScript; the
script only refreshes the page's live parts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from jinja2 import Environment

from ..formatting import format_age
from .overview import Timeline

__all__ = ["Chart", "chart", "register_filters"]

WIDTH = 600.0
HEIGHT = 120.0


def register_filters(templates: Environment) -> None:
    templates.filters["utc"] = format_utc
    templates.filters["age"] = format_age
    templates.filters["pretty_json"] = pretty_json
    templates.filters["duration_ms"] = lambda seconds: f"{seconds * 1000:.0f} ms"


def format_utc(moment: float | None) -> str:
    if moment is None:
        return "—"
    return datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def pretty_json(value: Any) -> str:
    if isinstance(value, str):
        text = value
        try:
            value = json.loads(text)
        except ValueError:
            return text
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    y: float
    height: float
    title: str


@dataclass(frozen=True)
class Chart:
    """Stacked bars (delivered, retried, dead) and the backlog line, in SVG coordinates."""

    label: str
    width: float
    height: float
    delivered: list[Bar]
    retried: list[Bar]
    dead: list[Bar]
    backlog_points: str
    peak: int
    peak_backlog: int
    totals: dict[str, int]
    start: float
    end: float


def chart(timeline: Timeline, label: str) -> Chart:
    size = len(timeline.delivered)
    peak = max(
        [d + r + x for d, r, x in zip(timeline.delivered, timeline.retried, timeline.dead)] + [1]
    )
    peak_backlog = max([*timeline.backlog, 1])
    step = WIDTH / size
    series: dict[str, list[Bar]] = {"delivered": [], "retried": [], "dead": []}
    points = []
    for index in range(size):
        start = timeline.start + index * timeline.bucket
        base = HEIGHT
        when = datetime.fromtimestamp(start, timezone.utc).strftime("%H:%M")
        for name in ("delivered", "retried", "dead"):
            count = getattr(timeline, name)[index]
            if count:
                tall = HEIGHT * count / peak
                base -= tall
                series[name].append(
                    Bar(index * step, max(step - 1, 1), base, tall, f"{when} UTC: {count} {name}")
                )
        level = HEIGHT - HEIGHT * timeline.backlog[index] / peak_backlog
        points.append(f"{index * step + step / 2:.1f},{level:.1f}")
    return Chart(
        label=label,
        width=WIDTH,
        height=HEIGHT,
        delivered=series["delivered"],
        retried=series["retried"],
        dead=series["dead"],
        backlog_points=" ".join(points),
        peak=peak,
        peak_backlog=peak_backlog,
        totals={
            "delivered": sum(timeline.delivered),
            "retried": sum(timeline.retried),
            "dead": sum(timeline.dead),
            "enqueued": sum(timeline.enqueued),
        },
        start=timeline.start,
        end=timeline.start + size * timeline.bucket,
    )
