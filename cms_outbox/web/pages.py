"""The GET pages: overview, events, one event, and the confirmations before an action."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from werkzeug.wrappers import Response

from ..errors import ValidationError
from ..heartbeat import STALE_AFTER
from ..queries import STATES, browse
from .filters import EventFilter
from .overview import overview as overview_now
from .render import chart

if TYPE_CHECKING:
    from .app import Context

__all__ = ["confirm_purge", "confirm_retry", "event", "events", "overview", "parse_age"]

HOUR = 3600.0
DAY = 86400.0
# The ages the purge form offers; any other ``older_than`` in the same syntax works too.
PURGE_AGES = ("1h", "1d", "7d", "30d")
_UNITS = {"m": 60.0, "h": HOUR, "d": DAY, "w": 7 * DAY}
# What a ``notice`` parameter may say after an action redirected back (never free text).
NOTICES = {
    "retried": "Retried: the event is pending and due now.",
    "not-retried": "Not retried: only dead or blocked events can be retried.",
}


def overview(ctx: Context) -> Response:
    now = time.time()
    status = overview_now(ctx.engine, now)
    hour, day = (
        activity.read(now, unfinished=status.backlog) for activity in ctx.dashboard.activity
    )
    return ctx.render(
        "overview.html",
        status=status,
        states=STATES,
        charts=[chart(hour, "Last hour, per minute"), chart(day, "Last day, per 15 minutes")],
        stale_after=STALE_AFTER,
        purge_ages=PURGE_AGES,
        live=True,
    )


def events(ctx: Context) -> Response:
    args = ctx.request.args
    error = None
    try:
        selection = EventFilter.parse(args)
        before = _cursor(args.get("before"), "before")
        after = _cursor(args.get("after"), "after")
    except ValidationError as exc:
        selection, before, after, error = EventFilter(), None, None, exc
    page = None
    retryable = 0
    if error is None:
        page = browse.event_page(ctx.engine, selection, before=before, after=after)
        if not ctx.read_only:
            retryable = browse.retryable_count(ctx.engine, selection)
    return ctx.render(
        "events.html",
        http_status=400 if error else 200,
        error=error,
        selection=selection,
        values=selection.values() if error is None else dict(args.items()),
        page=page,
        states=STATES,
        retryable=min(retryable, browse.MAX_BULK),
        more_retryable=retryable > browse.MAX_BULK,
        max_bulk=browse.MAX_BULK,
        scan_window=browse.SCAN_WINDOW,
    )


def event(ctx: Context, event_id: str) -> Response:
    view = browse.event_view(ctx.engine, event_id)
    notice = NOTICES.get(ctx.request.args.get("notice", ""))
    return ctx.render("event.html", view=view, notice=notice, live=True)


def confirm_retry(ctx: Context) -> Response:
    selection = EventFilter.parse(ctx.request.args)
    event_ids, more = browse.retryable_ids(ctx.engine, selection)
    return ctx.render(
        "confirm_retry.html",
        selection=selection,
        event_ids=event_ids,
        more=more,
        max_bulk=browse.MAX_BULK,
        shown_at=time.time(),
    )


def confirm_purge(ctx: Context) -> Response:
    text = ctx.request.args.get("older_than", "7d")
    age = parse_age(text)
    return ctx.render("confirm_purge.html", older_than=text, age=age)


def parse_age(text: str) -> float:
    """``30m``, ``12h``, ``7d``, ``2w``: the age the purge form takes.

    :raises ValidationError: anything else (the field is ``older_than``).
    """
    number, unit = text.strip()[:-1], text.strip()[-1:]
    if unit in _UNITS and number.isdigit() and int(number) > 0:
        return int(number) * _UNITS[unit]
    raise ValidationError("older_than", "older_than must be an age like 30m, 12h, 7d or 2w")


def _cursor(text: str | None, name: str) -> int | None:
    if not text:
        return None
    if not text.isdigit():
        raise ValidationError(name, f"{name} must be an event sequence number")
    return int(text)
