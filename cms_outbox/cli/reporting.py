"""``status`` and ``health``: read-only reports on the whole outbox; they never migrate
or write.

Each opens an ``OutboxReader``, not a ``CMSClient``: no flusher, no migration, no token.
"""

from __future__ import annotations

import argparse
from typing import Any

from .. import status as reports
from ..formatting import format_age
from ..heartbeat import STALE_AFTER
from ..status.health import NEW
from ._common import (
    EXIT_FAILURE,
    EXIT_NO_FLUSHER,
    EXIT_OK,
    add_command,
    echo,
    echo_json,
    format_time,
    mask_url,
    open_reader,
    resolve_settings,
    shorten,
    table,
)
from .arguments import duration, health_limit

__all__ = ["register"]

STATUS_KEYS = """\
JSON keys (stable; keys are only ever added):
  database                    the outbox database URL, password masked
  now                         when the status was taken (ISO 8601 UTC)
  counts                      {pending, in_flight, delivered, dead, blocked}: events per state
  pending_first_try           pending events never attempted (attempts = 0)
  pending_retrying            pending events that failed before and wait for a retry
  pending_due                 pending events a flusher could send right now
  oldest_pending_at           enqueue time of the oldest pending or in-flight event, or null
  oldest_pending_age_seconds  its age in seconds, or null
  pending_held                pending events held back by an earlier unfinished event of
                              their customer (per-customer order)
  next_attempt_at             when the next pending event not held back is due, or null
  last_delivery_at            time of the last delivery, or null
  last_error                  {at, event_id, status_code, outcome, message} of the last
                              attempt that did not deliver, or null
  pause                       {reason: "outage"|"auth", since, error} while delivery is
                              paused, else null
  delivered_last_minute       events delivered in the last 60 seconds
  delivered_last_hour         events delivered in the last 3600 seconds
  pacing                      {requests, window_seconds, per_minute, source, remaining,
                              window_resets_at, paused_until, pause_seconds}: the limit
                              every flusher paces at and where it came from ("assumed",
                              "configured", "advertised", "learned"), the requests the
                              service still allows before window_resets_at (null when it
                              did not say) and the end of a 429 pause (null when none);
                              null until a paced flusher has run
  acknowledged_at             the last operator retry or purge, or null (never)
  new_dead                    dead events that went dead after acknowledged_at (all if null)
  new_blocked                 blocked events enqueued, or whose setup went dead, after it"""


def register(subparsers: Any) -> None:
    parser = add_command(
        subparsers,
        "status",
        cmd_status,
        summary="counts by state, oldest pending event, last delivery and error, pauses",
        description="Show the outbox: events per state, the oldest pending event, the last "
        "delivery and the last error, and any outage or auth pause in effect.",
        examples=[
            "cms-outbox status",
            "cms-outbox status --json | jq .counts.pending",
            "CMS_OUTBOX_URL=postgresql+psycopg://outbox@db/app cms-outbox status",
        ],
        notes=STATUS_KEYS,
    )
    parser.add_argument("--json", action="store_true", help="stable JSON for scripts")

    parser = add_command(
        subparsers,
        "health",
        cmd_health,
        summary="exit 0 when healthy, 1 or 6 (no flusher running) otherwise, with a reason",
        description="Probe and cron check. Unhealthy (exit 1) when the oldest pending "
        "event is older than --max-pending-age, when an event went dead or blocked since "
        "the last `retry` or `purge` (by default; --max-dead and --max-blocked tune it), "
        "or while the service rejects the token (auth pause). A dead or blocked event is "
        "a lost conversion until someone acts; a retry or purge acknowledges those there "
        "are. Exit 6 instead of 1 when the one finding is that events have waited over 3 "
        "minutes and no flusher is running (none beat in that time: start `cms-outbox run`).",
        examples=[
            "cms-outbox health --max-pending-age 10m",
            "cms-outbox health --max-dead 5 --max-blocked any || alert",
        ],
        notes="For a liveness probe that restarts the daemon (a restart fixes neither a dead\n"
        "nor a blocked event): cms-outbox health --max-dead any --max-blocked any",
    )
    parser.add_argument(
        "--max-pending-age",
        type=duration,
        default=600.0,
        metavar="AGE",
        help="oldest pending event allowed, e.g. 90s, 10m, 2h (default: 10m)",
    )
    parser.add_argument(
        "--max-dead",
        type=health_limit,
        default=NEW,
        metavar="N",
        help="dead events allowed: a number in all, 'new' for none since the last retry or "
        "purge, 'any' to not check (default: new)",
    )
    parser.add_argument(
        "--max-blocked",
        type=health_limit,
        default=NEW,
        metavar="N",
        help="blocked events allowed, likewise (default: new)",
    )
    parser.add_argument("--json", action="store_true", help="{healthy, reasons, summary}")


def cmd_status(args: argparse.Namespace) -> int:
    settings = resolve_settings(args)
    with open_reader(settings) as reader:
        status = reader.status()
    database = mask_url(settings.database_url)
    if args.json:
        echo_json({"database": database, **status.to_json()})
        return EXIT_OK
    now, counts = status.now, status.counts
    details = {
        "pending": f"{status.pending_first_try} first try, {status.pending_retrying} retrying; "
        f"{status.pending_due} due now",
        "delivered": f"{status.delivered_last_minute} in the last minute, "
        f"{status.delivered_last_hour} in the last hour",
    }
    since = (
        "(no retry or purge yet)"
        if status.acknowledged_at is None
        else f"since the last retry or purge, {format_time(status.acknowledged_at, now)}"
    )
    for state, new in (("dead", status.new_dead), ("blocked", status.new_blocked)):
        if counts[state]:
            details[state] = f"{new} new {since}"
    echo(f"outbox: {database}")
    echo()
    echo(
        table(
            ["STATE", "EVENTS", ""],
            [[state, counts[state], details.get(state, "")] for state in counts],
        )
    )
    echo()
    error = status.last_error
    lines = [
        ("oldest pending", format_time(status.oldest_pending_at, now)),
        ("next attempt", _next_attempt(status)),
        ("last delivery", format_time(status.last_delivery_at, now)),
        (
            "last error",
            "-"
            if error is None
            else f"{format_time(error.at, now)} {error.outcome}: {shorten(error.message, 80)}",
        ),
    ]
    pause = status.pause  # its error is why nothing is delivered: shown whole, never cut
    live = status.live_flushers
    if not live:
        text = f"no flusher is running (none beat in the last {format_age(STALE_AFTER)})"
        if pause is not None:  # recorded by the last flusher; health still reports it
            found = "service unreachable" if pause.reason == "outage" else "token rejected"
            text += (
                f"; the last one found the {found} since {format_time(pause.since, now)}: "
                f"{_whole(pause.error)}"
            )
        lines.append(("delivery", text))
    elif pause is None:
        lines.append(("delivery", "running (no pause in effect)"))
    else:
        what = "OUTAGE, probing" if pause.reason == "outage" else "PAUSED: token rejected"
        lines.append(
            ("delivery", f"{what} since {format_time(pause.since, now)}: {_whole(pause.error)}")
        )
    for flusher in live:
        lines.append(
            (
                "flusher",
                f"{flusher.kind} on {flusher.host} pid {flusher.pid} (cms-outbox "
                f"{flusher.version}), started {format_time(flusher.started_at, now)}, "
                f"last beat {format_time(flusher.beat_at, now)}",
            )
        )
    lines.append(("pacing", _pacing(status.pacing, now)))
    for label, value in lines:
        echo(f"{label:<15} {value}")
    return EXIT_OK


def _whole(text: str | None) -> str:
    """``text`` on one line, however long."""
    return " ".join((text or "").split())


def _pacing(pacing: reports.Pacing | None, now: float) -> str:
    if pacing is None:
        return "- (no paced flusher has run yet)"
    text = (
        f"{pacing.requests:g} per {pacing.window:g}s = {pacing.per_minute:.1f}/min "
        f"({pacing.source})"
    )
    if pacing.paused_until is not None:
        text += f"; PAUSED after a 429 until {format_time(pacing.paused_until, now)}"
    elif pacing.remaining is not None and pacing.window_resets_at is not None:
        text += f"; {pacing.remaining} left until {format_time(pacing.window_resets_at, now)}"
    return text


def _next_attempt(status: reports.OutboxStatus) -> str:
    if status.next_attempt_at is None:
        return "-"
    if status.pending_due:
        return f"now ({status.pending_due} due)"
    return format_time(status.next_attempt_at, status.now)


def cmd_health(args: argparse.Namespace) -> int:
    settings = resolve_settings(args)
    with open_reader(settings) as reader:
        status = reader.status()
    health = reports.check_health(
        status,
        max_pending_age=args.max_pending_age,
        max_dead=args.max_dead,
        max_blocked=args.max_blocked,
    )
    if args.json:
        echo_json(health.to_json())
    else:
        echo(health.summary)
    if health.healthy:
        return EXIT_OK
    # Its own code when nobody delivering is the whole story; other findings come first.
    return EXIT_NO_FLUSHER if health.no_flusher and len(health.reasons) == 1 else EXIT_FAILURE
