"""``events`` and ``show``: the stored events, listed or one by one; read-only.

Each opens an ``OutboxReader``, not a ``CMSClient``: no flusher, no migration, no token.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .. import status as reports
from ..formatting import isoformat
from ..results import EventState
from ._common import (
    EXIT_OK,
    add_command,
    echo,
    echo_json,
    open_reader,
    resolve_settings,
    shorten,
    table,
)
from .arguments import positive_int

__all__ = ["register"]


def register(subparsers: Any) -> None:
    states = [state.value for state in EventState]
    parser = add_command(
        subparsers,
        "events",
        cmd_events,
        summary="list stored events, newest first",
        description="List stored events, newest first, optionally filtered.",
        examples=[
            "cms-outbox events --state dead",
            "cms-outbox events --customer user_42 --kind sale --limit 10 --json",
        ],
        notes="JSON: a list of objects with the keys seq, event_id, kind, event_name,\n"
        "customer_external_id, click_id, mode, invoice_id, state, attempts, created_at,\n"
        "next_attempt_at, last_attempt_at, delivered_at, last_status_code, last_error.",
    )
    parser.add_argument("--state", choices=states, help="only events in this state")
    parser.add_argument("--customer", metavar="ID", help="only this customer_external_id")
    parser.add_argument("--kind", choices=["lead", "sale"], help="only leads or only sales")
    parser.add_argument(
        "--limit", type=positive_int, default=50, metavar="N", help="at most N (default: 50)"
    )
    parser.add_argument("--oldest-first", action="store_true", help="in enqueue order")
    parser.add_argument("--json", action="store_true", help="JSON for scripts")

    parser = add_command(
        subparsers,
        "show",
        cmd_show,
        summary="one event: its wire payload and full attempt history",
        description="Show one event: its state, the wire payload and every attempt.",
        examples=[
            "cms-outbox show 0f8fad5b-d9cb-469f-a165-70867728950e --json",
            "cms-outbox show 0f8fad5b",
        ],
        notes="JSON: the keys of `events --json`, plus payload (the wire JSON), last_response\n"
        "and attempt_history: a list of {started_at, duration_seconds, status_code,\n"
        "outcome, error, response}, oldest first. Exit 4 if the event is not in the outbox,\n"
        "2 if EVENT_ID is the start of several event ids (they are listed).",
    )
    parser.add_argument(
        "event_id", metavar="EVENT_ID", help="an event id, or any unique prefix of one, as git does"
    )
    parser.add_argument("--json", action="store_true", help="JSON for scripts")


def cmd_events(args: argparse.Namespace) -> int:
    settings = resolve_settings(args)
    with open_reader(settings) as reader:
        found = reader.events(
            state=args.state,
            customer=args.customer,
            kind=args.kind,
            limit=args.limit,
            oldest_first=args.oldest_first,
        )
    if args.json:
        echo_json([event.to_json() for event in found])
        return EXIT_OK
    if not found:
        echo("no events")
        return EXIT_OK
    rows = [
        [
            event.event_id,
            event.kind,
            event.event_name,
            event.customer_external_id,
            event.state,
            event.attempts,
            (isoformat(event.created_at) or "")[:19].replace("T", " "),
            _last_answer(event),
        ]
        for event in found
    ]
    echo(
        table(
            ["EVENT_ID", "KIND", "NAME", "CUSTOMER", "STATE", "ATTEMPTS", "CREATED (UTC)", "LAST"],
            rows,
        )
    )
    return EXIT_OK


def _last_answer(event: reports.EventSummary) -> str:
    if event.last_error:
        return shorten(event.last_error, 50)
    if event.last_status_code is not None:
        return f"HTTP {event.last_status_code}"
    return ""


def cmd_show(args: argparse.Namespace) -> int:
    settings = resolve_settings(args)
    with open_reader(settings) as reader:
        detail = reader.event(args.event_id)
    if args.json:
        echo_json(detail.to_json())
        return EXIT_OK
    event = detail.summary
    fields = [
        ("event", event.event_id),
        ("sequence", event.seq),
        ("kind", f"{event.kind} {event.event_name or ''}".rstrip()),
        ("customer", event.customer_external_id),
        ("click id", event.click_id or "-"),
        ("mode", event.mode or "-"),
        ("invoice", event.invoice_id or "-"),
        ("state", event.state),
        ("attempts", event.attempts),
        ("created", isoformat(event.created_at)),
        ("next attempt", isoformat(event.next_attempt_at) if event.state == "pending"
         else "-"),
        ("delivered", isoformat(event.delivered_at) or "-"),
        ("last status", event.last_status_code or "-"),
        ("last error", event.last_error or "-"),
        ("waits on", _waits_on(detail.waits_on)),
    ]  # fmt: skip
    for label, value in fields:
        echo(f"{label:<13} {value}")
    echo()
    echo("payload (as sent on the wire):")
    for line in json.dumps(detail.payload, indent=2, ensure_ascii=False).splitlines():
        echo(f"  {line}")
    echo()
    if not detail.attempts:
        echo("attempts: none yet")
        return EXIT_OK
    echo("attempts:")
    rows = [
        [
            number,
            (isoformat(attempt.started_at) or "").replace("T", " "),
            f"{attempt.duration * 1000:.0f} ms",
            attempt.status_code or "-",
            attempt.outcome,
            shorten(attempt.error or attempt.response, 70),
        ]
        for number, attempt in enumerate(detail.attempts, 1)
    ]
    headers = ["#", "STARTED (UTC)", "TOOK", "HTTP", "OUTCOME", "ERROR/RESPONSE"]
    for line in table(headers, rows).splitlines():
        echo(f"  {line}")
    return EXIT_OK


def _waits_on(waited: reports.WaitedOn | None) -> str:
    if waited is None:
        return "-"
    if waited.reason == "deferred setup":
        why = f"its deferred setup, {waited.state}"
        if waited.last_error:
            why += f": {shorten(waited.last_error, 60)}"
        if waited.state == "dead":
            return f"{waited.event_id} ({why}); `cms-outbox retry {waited.event_id}` releases it"
        return f"{waited.event_id} ({why})"
    return f"{waited.event_id} (an earlier {waited.kind} of this customer, {waited.state})"
