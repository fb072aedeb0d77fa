"""The POST actions: retry one event, retry a confirmed selection, purge delivered events.

Each runs only after the dashboard checked its CSRF token, and leaves one INFO log
line saying what was done, to how many events, and from which address.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from werkzeug.utils import redirect
from werkzeug.wrappers import Response

from ..errors import ValidationError
from ..queries.browse import MAX_BULK
from .pages import parse_age

if TYPE_CHECKING:
    from .app import Context

__all__ = ["purge", "retry_one", "retry_selected"]

log = logging.getLogger("cms_outbox.web")


def retry_one(ctx: Context, event_id: str) -> Response:
    count = ctx.store.retry([event_id])
    log.info("dashboard: retry of event %s from %s: %d event(s) back to pending", event_id,
             ctx.client, count)  # fmt: skip
    notice = "retried" if count else "not-retried"
    return redirect(ctx.url("event", event_id=event_id, query=f"notice={notice}"), 303)


def retry_selected(ctx: Context) -> Response:
    """Retry exactly the events the confirmation page listed, if their count is confirmed.

    The ids were fixed when the page was shown, so events that arrived or died since
    are not swept in; those no longer dead or blocked are left alone.
    """
    form = ctx.request.form
    event_ids = form.getlist("event_id")
    confirmed = form.get("count", "")
    if not event_ids:
        raise ValidationError("event_id", "no events were selected to retry")
    if len(event_ids) > MAX_BULK:
        raise ValidationError("event_id", f"at most {MAX_BULK} events can be retried at once")
    if confirmed != str(len(event_ids)):
        raise ValidationError(
            "count", f"the confirmed count ({confirmed or 'none'}) is not the number of "
            f"events listed ({len(event_ids)}): review the selection again"
        )  # fmt: skip
    count = ctx.store.retry(event_ids)
    log.info("dashboard: retry of %d selected event(s) from %s: %d back to pending",
             len(event_ids), ctx.client, count)  # fmt: skip
    return ctx.render(
        "done.html",
        title="Retried",
        message=f"{count} of the {len(event_ids)} selected events are pending again "
        "(those no longer dead or blocked were left alone; released follow-ups count too).",
        back=ctx.url("events", query=form.get("back", "")),
    )


def purge(ctx: Context) -> Response:
    text = ctx.request.form.get("older_than", "")
    age = parse_age(text)
    count = 0
    for batch in ctx.store.purge(delivered_before=time.time() - age):
        count += len(batch)
    for activity in ctx.dashboard.activity:
        activity.forget()  # the chart counted attempts that are gone now
    log.info("dashboard: purge of delivered events older than %s from %s: %d deleted", text,
             ctx.client, count)  # fmt: skip
    return ctx.render(
        "done.html",
        title="Purged",
        message=f"{count} delivered events older than {text} were deleted with their attempts.",
        back=ctx.url("overview"),
    )
