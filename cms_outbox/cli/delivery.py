"""``flush`` (drain now) and ``run`` (the daemon): the commands that send."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from typing import Any, TextIO

from .. import status as reports
from ..client import CMSClient
from ..daemon import Daemon
from ..formatting import format_age, isoformat
from ..results import FlushReport, TrackResult
from ._common import (
    EXIT_FAILURE,
    EXIT_OK,
    add_command,
    add_delivery_options,
    echo,
    echo_json,
    open_client,
    resolve_settings,
)
from .arguments import fixed_port, positive_float

__all__ = ["Progress", "register"]

logger = logging.getLogger("cms_outbox.cli")

TOKEN_NOTE = (
    "The bearer token comes from the CMS_BEARER_TOKEN environment variable only\n"
    "(never a flag: flags show in process lists)."
)


def register(subparsers: Any) -> None:
    parser = add_command(
        subparsers,
        "run",
        cmd_run,
        summary="the delivery daemon: send events as they come, until SIGTERM",
        description="Deliver events continuously: a pass whenever work is due, at least every "
        "--interval seconds, plus hourly purges of expired events. SIGTERM or Ctrl-C stops "
        "leasing, lets requests in flight finish, hands unsent leases back and exits 0. "
        "Migrates the outbox tables if needed.",
        creates=True,
        examples=[
            "CMS_BEARER_TOKEN=... cms-outbox run --database-url sqlite:////var/lib/app/outbox.db",
            "CMS_BEARER_TOKEN=... cms-outbox run --workers 4 --interval 2 --metrics-port 9464",
        ],
        notes=TOKEN_NOTE + "\n--metrics-port needs the `metrics` extra: "
        "pip install 'cms-outbox[metrics]'.",
    )
    add_delivery_options(parser)
    parser.add_argument(
        "--interval",
        type=positive_float,
        metavar="S",
        help="seconds between passes when idle (default: 1)",
    )
    parser.add_argument(
        "--metrics-port",
        type=fixed_port,
        metavar="PORT",
        help="serve Prometheus metrics on this port (default: off)",
    )
    parser.add_argument(
        "--metrics-address",
        default="127.0.0.1",
        metavar="ADDR",
        help="interface for --metrics-port (default: 127.0.0.1, this host only: the counts "
        "are business data; 0.0.0.0 for a scraper on another host or outside a container)",
    )

    parser = add_command(
        subparsers,
        "flush",
        cmd_flush,
        summary="deliver everything due now, with progress; exit 1 if work is left",
        description="Deliver every event that is due now and print what happened. Does not "
        "sit out backoff or an outage: it stops when nothing more is due, delivery is paused "
        "or the timeout passes. Exit 0 when nothing is left due, 1 otherwise. Migrates the "
        "outbox tables if needed.",
        examples=[
            "CMS_BEARER_TOKEN=... cms-outbox flush",
            "CMS_BEARER_TOKEN=... cms-outbox flush --timeout 60 --rate-limit 0 --json",
        ],
        notes=TOKEN_NOTE + "\nJSON: {delivered, retried, dead, pending, due, held, next_attempt_at,"
        " blocked, paused,\nelapsed_seconds}; held: pending behind an earlier event of the same "
        'customer;\npaused is null, "outage" or "auth" as this flush found the service (a pause is '
        "not a retry).",
    )
    add_delivery_options(parser)
    parser.add_argument(
        "--timeout", type=positive_float, metavar="S", help="stop after S seconds (default: none)"
    )
    parser.add_argument("--json", action="store_true", help="the final report as JSON")


# -- flush -------------------------------------------------------------------------------


class Progress:
    """Delivered, remaining, rate and ETA: a live line on a terminal, log lines otherwise."""

    def __init__(self, stream: TextIO, *, live: bool, every: float | None = None) -> None:
        self.stream = stream
        self.live = live
        self.every = every if every is not None else (0.25 if live else 10.0)
        self.total = 0
        self.delivered = 0
        self.dead = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()
        self._width = 0

    def on_delivered(self, result: TrackResult) -> None:
        with self._lock:
            self.delivered += 1

    def on_dead(self, result: TrackResult) -> None:
        with self._lock:
            self.dead += 1

    def start(self, total: int) -> None:
        self.total = total
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="cms-outbox-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.live:
            self._render()
            self.stream.write("\n")
            self.stream.flush()

    def line(self) -> str:
        with self._lock:
            delivered, dead = self.delivered, self.dead
        done = delivered + dead
        elapsed = max(time.monotonic() - self._started, 1e-6)
        rate = done / elapsed
        remaining = max(0, self.total - done)
        if remaining == 0:
            eta = "done"
        elif rate > 0:
            eta = format_age(remaining / rate)
        else:
            eta = "?"
        return (
            f"flush: {delivered} delivered, {dead} dead, {remaining} remaining, "
            f"{rate:.1f}/s, ETA {eta}"
        )

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._render()

    def _render(self) -> None:
        text = self.line()
        if self.live:
            self.stream.write("\r" + text.ljust(self._width))
            self.stream.flush()
            self._width = len(text)
        else:
            logger.info("%s", text)


def cmd_flush(args: argparse.Namespace) -> int:
    settings = resolve_settings(args, deliver=True)
    progress = Progress(sys.stderr, live=sys.stderr.isatty())
    started = time.monotonic()
    total = FlushReport()
    with open_client(
        settings, migrate=True, on_delivered=progress.on_delivered, on_dead=progress.on_dead
    ) as client:
        # A flush stops at a pause and reports it itself: an "outage started ... next probe
        # in 0.9s" line would promise a probe that never comes. The closing line still
        # says what waits, and why.
        client.flusher.pauses.quiet = True
        progress.start(reports.outbox_status(client.engine).to_send)
        try:
            total = _drain(client, args.timeout)
        finally:
            progress.stop()
        after = reports.outbox_status(client.engine)
        # The report below says what is left and why: the client's closing WARNING, for a
        # library user who gets no report, would tell it a second time.
        client._flushed = False
    elapsed = time.monotonic() - started
    if args.json:
        echo_json(
            {
                "delivered": total.delivered,
                "retried": total.retried,
                "dead": total.dead,
                "pending": after.to_send,
                "due": after.pending_due,
                "held": after.pending_held,
                "next_attempt_at": isoformat(after.next_attempt_at),
                "blocked": after.counts["blocked"],
                "paused": total.paused,
                "elapsed_seconds": round(elapsed, 3),
            }
        )
    else:
        echo(
            f"delivered {total.delivered}, retried {total.retried}, dead {total.dead} "
            f"in {format_age(elapsed)}"
        )
        echo(
            f"left: {after.to_send} to send ({_outlook(after)}), "
            f"{after.counts['blocked']} blocked, {after.counts['dead']} dead"
        )
        if total.paused is not None and after.pause is not None:
            echo(f"delivery paused ({after.pause.reason}): {after.pause.error}")
        elif total.paused is not None:
            echo(f"delivery paused ({total.paused})")
        if total.paused is not None and after.to_send:
            echo(NEXT_STEP[total.paused])  # "outage" or "auth" (FlushReport.paused)
    return EXIT_OK if after.pending_due == 0 else EXIT_FAILURE


NEXT_STEP = {
    "outage": "the rest stays stored: `cms-outbox flush` again or `cms-outbox run` delivers it "
    "once the service answers",
    "auth": "the rest stays stored: `cms-outbox flush` or `cms-outbox run` with a valid "
    "CMS_BEARER_TOKEN delivers it",
}


def _outlook(status: reports.OutboxStatus) -> str:
    """``2 due now, 3 held behind earlier events, next attempt in 4.0s``."""
    parts = [f"{status.pending_due} due now"]
    if status.pending_held:
        parts.append(f"{status.pending_held} held behind earlier events of their customers")
    if status.next_attempt_at is not None and status.pending_due == 0:
        wait = status.next_attempt_at - status.now
        parts.append(f"next attempt in {format_age(wait)}" if wait > 0 else "next attempt now")
    return ", ".join(parts)


def _drain(client: CMSClient, timeout: float | None) -> FlushReport:
    """Passes while work is due, progress is made and the timeout allows."""
    deadline = None if timeout is None else time.monotonic() + timeout
    total = FlushReport()
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return total
        report = client.flush(remaining)
        total = total + report
        if report.paused or not (report.delivered or report.retried or report.dead):
            return total
        if reports.count_due(client.engine) == 0:
            return total


# -- run -----------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    settings = resolve_settings(args, deliver=True)
    daemon = Daemon(
        settings.token,
        settings.host,
        settings.database_url,
        create_directories=settings.create_directories,
        rate_limit=settings.rate_limit,
        workers=settings.workers,
        interval=settings.interval,
        metrics_port=args.metrics_port,
        metrics_address=args.metrics_address,
    )
    daemon.run_forever()
    return EXIT_OK
