"""``retry``, ``purge`` and ``migrate``: operator actions on the stored events and tables."""

from __future__ import annotations

import argparse
from typing import Any

from .. import database, migrate
from ..errors import ConfigurationError
from ..results import EventState
from ..status import resolve_event_id
from ._common import (
    EXIT_FAILURE,
    EXIT_OK,
    add_command,
    echo,
    echo_json,
    mask_url,
    open_client,
    resolve_settings,
)
from .arguments import optional_duration

__all__ = ["register"]

RETRYABLE = (EventState.DEAD, EventState.BLOCKED)


def register(subparsers: Any) -> None:
    parser = add_command(
        subparsers,
        "retry",
        cmd_retry,
        summary="make dead or blocked events pending again (attempt history kept)",
        description="Make dead or blocked events pending and due now; their attempt history "
        "is kept. Retrying a dead deferred setup also releases its blocked follow-ups. "
        "Exit 1 when a named event is neither dead nor blocked, 4 when it does not exist.",
        examples=[
            "cms-outbox retry --dead",
            "cms-outbox retry 0f8fad5b-d9cb-469f-a165-70867728950e",
            "cms-outbox retry --dead --blocked --json",
        ],
    )
    parser.add_argument(
        "event_ids",
        nargs="*",
        metavar="EVENT_ID",
        help="events to retry: ids, or any unique prefixes of them, as git does",
    )
    parser.add_argument("--dead", action="store_true", help="every dead event")
    parser.add_argument("--blocked", action="store_true", help="every blocked event")
    parser.add_argument("--json", action="store_true", help="{retried, skipped}")

    parser = add_command(
        subparsers,
        "purge",
        cmd_purge,
        summary="delete old delivered and dead events with their attempts",
        description="Delete delivered events older than --delivered-older-than (since "
        "delivery) and dead events older than --dead-older-than (since their last attempt), "
        "with their attempt history. Pending, in-flight and blocked events are never purged.",
        examples=[
            "cms-outbox purge --dry-run",
            "cms-outbox purge --delivered-older-than 1d --dead-older-than never",
            "cms-outbox purge --delivered-older-than 12h --json",
        ],
        notes="Durations: a number with s, m, h, d or w (30s, 10m, 7d), or `never`.\n"
        "JSON: {dry_run, delivered_older_than_seconds, dead_older_than_seconds, count,\n"
        "event_ids}; with --dry-run, event_ids is exactly what purge would delete.",
    )
    parser.add_argument(
        "--delivered-older-than",
        type=optional_duration,
        default=7 * 86400.0,
        metavar="AGE",
        help="default: 7d",
    )
    parser.add_argument(
        "--dead-older-than",
        type=optional_duration,
        default=30 * 86400.0,
        metavar="AGE",
        help="default: 30d",
    )
    parser.add_argument("--dry-run", action="store_true", help="change nothing, list what goes")
    parser.add_argument("--json", action="store_true", help="JSON for scripts")

    parser = add_command(
        subparsers,
        "migrate",
        cmd_migrate,
        summary="create or upgrade the outbox tables to this version's schema",
        description="Bring the outbox tables to this version's Alembic head (creating them "
        "if needed) and print the revision. run and flush also migrate; status, events, show, "
        "health, retry and purge never do: they report an outbox that needs it (exit code 3).",
        creates=True,
        examples=[
            "cms-outbox migrate",
            "cms-outbox migrate --database-url postgresql+psycopg://outbox@db/app",
        ],
    )
    parser.add_argument("--json", action="store_true", help="{database, previous, revision}")


def cmd_retry(args: argparse.Namespace) -> int:
    if not (args.event_ids or args.dead or args.blocked):
        raise ConfigurationError("retry: name EVENT_IDs, or pass --dead and/or --blocked")
    settings = resolve_settings(args)
    skipped: list[dict[str, str]] = []
    with open_client(settings, migrate=False) as client:
        # Unique prefixes name events too, as git takes short ids: exit 2 when ambiguous.
        event_ids = [resolve_event_id(client.engine, text) for text in args.event_ids]
        for event_id in event_ids:
            state = client.result(event_id).state  # EventNotFound: exit 4
            if state not in RETRYABLE:
                skipped.append({"event_id": event_id, "state": state.value})
        skip = {item["event_id"] for item in skipped}
        retried = client.retry(
            [event_id for event_id in event_ids if event_id not in skip],
            dead=args.dead,
            blocked=args.blocked,
        )
    if args.json:
        echo_json({"retried": retried, "skipped": skipped})
    else:
        echo(f"{retried} event{'s' * (retried != 1)} back to pending (attempt history kept)")
        for item in skipped:
            echo(
                f"not retried: event {item['event_id']} is {item['state']} "
                "(only dead or blocked events can be retried)"
            )
    return EXIT_FAILURE if skipped else EXIT_OK


def cmd_purge(args: argparse.Namespace) -> int:
    settings = resolve_settings(args)
    verb = "would purge" if args.dry_run else "purged"
    purged: list[str] = []
    # The text listing streams as batches commit; JSON needs every id at the end.
    each = purged.append if args.json else (lambda event_id: echo(f"  {verb}: {event_id}"))
    with open_client(settings, migrate=False) as client:
        count = client.purge(
            delivered_older_than=args.delivered_older_than,
            dead_older_than=args.dead_older_than,
            dry_run=args.dry_run,
            each=each,
        )
    if args.json:
        echo_json(
            {
                "dry_run": args.dry_run,
                "delivered_older_than_seconds": args.delivered_older_than,
                "dead_older_than_seconds": args.dead_older_than,
                "count": count,
                "event_ids": purged,
            }
        )
        return EXIT_OK
    echo(f"{verb} {count} event{'s' * (count != 1)}")
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = resolve_settings(args)
    engine = database.create(
        settings.database_url,
        durability=settings.durability,
        create_directories=settings.create_directories,
    )
    try:
        previous = migrate.current_revision(engine)
        migrate.ensure_schema(engine, auto_migrate=True)  # refuses a database newer than us
        revision = migrate.current_revision(engine)
    finally:
        engine.dispose()
    url = mask_url(settings.database_url)
    if args.json:
        echo_json({"database": url, "previous": previous, "revision": revision})
    elif previous == revision:
        echo(f"{url}: outbox schema already at revision {revision} (head)")
    else:
        echo(f"{url}: outbox schema upgraded from {previous or 'none'} to {revision} (head)")
    return EXIT_OK
