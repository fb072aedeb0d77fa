"""``sandbox`` (a local CMS-compatible API) and ``demo`` (the whole story, offline)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import ConfigurationError
from ..sandbox.handler import ADMIN_ROUTES
from ..sandbox.limits import ACCOUNTING, HEADERS
from ._common import EXIT_OK, add_command, cannot_listen, echo
from .arguments import non_negative_int, port, positive_int

__all__ = ["register"]

SANDBOX_TOKEN = "sandbox-token"
# Every endpoint the sandbox serves, from the table it serves them by.
ADMIN_ENDPOINTS = ", ".join(path.removeprefix("/_admin/") for path in ADMIN_ROUTES)


def register(subparsers: Any) -> None:
    parser = add_command(
        subparsers,
        "sandbox",
        cmd_sandbox,
        summary="serve a local CMS-compatible API with fault injection",
        description="Serve POST /track/lead and /track/sale as the CMS service does, plus "
        f"/_admin/ endpoints ({ADMIN_ENDPOINTS}) for fault "
        "injection, until Ctrl-C or SIGTERM. Prints its URL on stdout once it listens. "
        "The rate limit (off by default) can change while running: POST /_admin/limits "
        "with any of requests, window, accounting, headers. "
        "It keeps its state in memory: it has no outbox.",
        examples=[
            "cms-outbox sandbox --port 8765 --token sandbox-token",
            "cms-outbox sandbox --port 0 --rate-limit 60 --latency 50",
            "cms-outbox sandbox --rate-limit 30 --rate-window 6 --rate-headers x",
            "curl -X POST localhost:8765/_admin/faults -d '{\"force_status\": 503}'",
        ],
        notes="The sandbox token is a throwaway, so unlike `run` it may be a flag.",
    )
    for action in parser._actions:  # no outbox: not offered, and refused if given
        if action.dest == "database_url":
            action.help = argparse.SUPPRESS
    parser.add_argument(
        "--bind", default="127.0.0.1", metavar="ADDR", help="interface (default: 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=port, default=8765, help="0 picks a free port (default: 8765)"
    )
    parser.add_argument(
        "--token", default=SANDBOX_TOKEN, help=f"bearer token to accept (default: {SANDBOX_TOKEN})"
    )
    parser.add_argument(
        "--rate-limit",
        type=non_negative_int,
        metavar="N",
        help="answer 429 (with Retry-After) beyond N requests per window (default: off)",
    )
    parser.add_argument(
        "--rate-window",
        type=positive_int,
        default=60,
        metavar="S",
        help="the rate limit's window in seconds (default: 60)",
    )
    parser.add_argument(
        "--rate-accounting",
        choices=ACCOUNTING,
        default="sliding",
        help="count requests in fixed windows or a sliding one (default: sliding)",
    )
    parser.add_argument(
        "--rate-headers",
        choices=HEADERS,
        default="ietf",
        help="advertise the limit as the IETF draft's RateLimit-Policy/RateLimit, the de "
        "facto X-RateLimit-*, or not at all (default: ietf)",
    )
    parser.add_argument(
        "--latency",
        type=non_negative_int,
        default=0,
        metavar="MS",
        help="milliseconds added to every answer (default: 0)",
    )

    demo_parser = add_command(
        subparsers,
        "demo",
        cmd_demo,
        summary="the whole story in a few seconds: outage, deferred follow-ups, recovery",
        description="Start a local sandbox and take it down, track a lead, a deferred setup "
        "with two follow-ups and a sale while it is down, bring it back and watch the "
        "background flusher deliver every event exactly once, in per-customer order. "
        "Offline; uses a fresh SQLite file in a temporary directory unless --database-url "
        "is given (CMS_OUTBOX_URL is ignored so that a demo never writes to a real outbox). "
        "Exit 0 when every event was accepted exactly once and in order.",
        examples=["cms-outbox demo", "cms-outbox demo --database-url sqlite:///demo.db"],
    )
    for action in demo_parser._actions:  # the demo never reads CMS_OUTBOX_URL: say so
        if action.dest == "database_url":
            action.help = "outbox database for the demo (default: a fresh temporary SQLite file)"


def cmd_sandbox(args: argparse.Namespace) -> int:
    from ..sandbox import Limits, Sandbox, run
    from ..sandbox.server import ENDPOINTS

    if getattr(args, "database_url", None):
        raise ConfigurationError(
            "the sandbox keeps its state in memory: --database-url does not apply to it"
        )

    def ready(sandbox: Sandbox) -> None:
        echo(f"CMS sandbox listening on {sandbox.url} (token: {sandbox.token}; {ENDPOINTS})")
        echo(f"  export CMS_HOST={sandbox.url} CMS_BEARER_TOKEN={sandbox.token}")
        sys.stdout.flush()

    try:
        run(
            host=args.bind,
            port=args.port,
            token=args.token,
            latency=args.latency / 1000.0,
            ready=ready,
            limits=Limits(
                args.rate_limit or 0,
                float(args.rate_window),
                args.rate_accounting,
                args.rate_headers,
            ),
        )
    except OSError as exc:  # only binding raises: once it listens, run() serves until stopped
        raise cannot_listen(args.bind, args.port, exc) from exc
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .. import demo

    return demo.run(args.database_url)
