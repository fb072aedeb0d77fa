"""``Daemon``: the delivery daemon as a library call, what ``cms-outbox run`` runs.

::

    from cms_outbox import Daemon

    Daemon(database_url="sqlite:////var/lib/app/outbox.db").run_forever()

It delivers until SIGTERM or SIGINT (or ``stop()`` from another thread): a pass whenever
work is due, at least every ``interval`` seconds, woken at once by PostgreSQL NOTIFY,
plus hourly purges of expired events. Stopping lets requests in flight finish, hands
unsent leases back and logs one stop line with the totals.

An operator sees what it does: when the application configured no logging (no handler
on the root logger or on ``cms_outbox``), ``run_forever()`` logs to stderr as
``cms-outbox run`` does: INFO and above, one line each, with time and level. An
application's own logging configuration is left as it is.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType
from typing import Any

from .client import CMSClient
from .database import display_url
from .errors import ConfigurationError
from .formatting import format_age
from .results import FlushReport
from .status import ActivityTracker
from .stderr_log import log_outbox_to_stderr, logging_configured

__all__ = ["Daemon"]

logger = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Daemon:
    """Deliver one outbox's events until stopped; ``run_forever()`` runs it once.

    :param token: bearer token (default: env ``CMS_BEARER_TOKEN``); required.
    :param host: API base (default: env ``CMS_HOST``, else ``https://api.cme.sh``).
    :param database_url: outbox database (default: env ``CMS_OUTBOX_URL``, else
        ``sqlite:///cms_outbox.db``); migrated to the current schema unless
        ``auto_migrate=False``.
    :param metrics_port: serve Prometheus metrics on this port (needs the ``metrics``
        extra); None for none.
    :param metrics_address: the interface for ``metrics_port``: this host only by
        default (the counts are business data); ``"0.0.0.0"`` for a scraper elsewhere.
    :param handle_signals: in the main thread, SIGTERM and SIGINT stop the daemon
        (the previous handlers come back when it stops).
    :param options: any other keyword option of ``CMSClient`` (``rate_limit``,
        ``workers``, ``interval``, ``engine``, ...); ``flush`` is always ``"off"``, the
        daemon runs the passes itself.
    :raises ConfigurationError: a setting that cannot work, or no token.
    :raises SchemaError: the database is not at this version's schema.
    """

    def __init__(
        self,
        token: str | None = None,
        host: str | None = None,
        database_url: str | None = None,
        *,
        metrics_port: int | None = None,
        metrics_address: str = "127.0.0.1",
        handle_signals: bool = True,
        **options: Any,
    ) -> None:
        options["flush"] = "off"
        self.client = CMSClient(token, host, database_url, **options)
        if not self.client.settings.token:
            self.client.close()
            raise ConfigurationError(
                "the daemon cannot deliver without a token: pass token= or set CMS_BEARER_TOKEN"
            )
        self.metrics_port = metrics_port
        self.metrics_address = metrics_address
        self.handle_signals = handle_signals
        self._scheduler = self.client._new_scheduler(kind="daemon")

    def __repr__(self) -> str:
        return f"Daemon(host={self.client.settings.host!r}, database={self.client.engine.url!r})"

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def totals(self) -> FlushReport:
        """Delivered, retried and dead since the daemon started (``pending`` not counted)."""
        done = self.client.flusher.totals
        return FlushReport(delivered=done["delivered"], retried=done["retried"], dead=done["dead"])

    def stop(self) -> None:
        """Ask a running daemon to stop (from any thread, or a signal handler); returns at once."""
        self._scheduler.stop_event.set()

    def close(self) -> None:
        """Release the database and the worker pool (``run_forever`` does it when it ends)."""
        self.stop()
        self.client.close()

    def run_forever(self) -> FlushReport:
        """Deliver until stopped, then finish in-flight requests, hand back unsent leases,
        log the stop line and ``close()``.

        When neither the root logger nor ``cms_outbox`` has a handler, gives ``cms_outbox``
        one to stderr at INFO (``cms-outbox run``'s format): a daemon that says nothing
        hides its errors. The application's own logging is used as it is otherwise, and
        is never changed.

        :returns: the totals, with ``pending`` and ``blocked`` as the daemon left them.
        :raises ConfigurationError: the metrics port cannot be bound.
        :raises ClientClosed: the daemon already ran (it runs once), or was closed.
        """
        self.client._check_open()
        if not logging_configured(__name__):  # a daemon that says nothing hides its errors
            log_outbox_to_stderr()
        settings = self.client.settings
        metrics_server: Any = None
        previous: dict[int, Any] = {}
        try:
            if self.metrics_port is not None:
                from . import metrics  # the optional extra: ConfigurationError when missing

                tracker = ActivityTracker(self.client.engine, settle=settings.lease_duration)
                metrics_server = metrics.serve(tracker, self.metrics_port, self.metrics_address)
            if self.handle_signals and threading.current_thread() is threading.main_thread():
                previous = {
                    signum: signal.signal(signum, self._on_signal) for signum in STOP_SIGNALS
                }
            rate = str(settings.rate_limit)
            logger.info(
                "cms-outbox run: delivering from %s to %s (rate limit %s, %d workers, "
                "interval %gs%s)",
                display_url(self.client.engine.url),
                settings.host,
                rate,
                settings.workers,
                settings.interval,
                ""
                if metrics_server is None
                else f", metrics on {metrics_server.address}:{metrics_server.port}",
            )
            started = time.monotonic()
            self._scheduler.run_forever(grace=settings.attempt_timeout + 1.0)
            done = self.totals
            logger.info(
                "cms-outbox run: stopped after %s (delivered %d, retried %d, dead %d)",
                format_age(time.monotonic() - started),
                done.delivered,
                done.retried,
                done.dead,
            )
            left = self.client.store.count_by_state()
            return FlushReport(
                delivered=done.delivered,
                retried=done.retried,
                dead=done.dead,
                pending=left.get("pending", 0) + left.get("in_flight", 0),
                blocked=left.get("blocked", 0),
                paused=self.client.flusher.breaker.paused,
            )
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if metrics_server is not None:
                metrics_server.close()
            self.client.close()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop()  # only a flag: the scheduler's loop does the work (huey)
