"""The parts one ``CMSClient`` is made of, put together and taken apart in the right order.

The outbox's engine (created from the URL, or the application's), on SQLite a second
engine for bookkeeping that skips the per-commit fsync, the schema check, the store and
the flusher; their disposal, and what each needs around ``fork()``. The client holds one
``Wiring`` and speaks for it.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import TYPE_CHECKING, Callable

from sqlalchemy import Engine

from . import database, migrate, notify
from .config import Settings
from .errors import EventNotFound
from .flusher import Callback, Flusher
from .heartbeat import Heartbeat
from .results import EventState, FlushReport, TrackResult, result_of_row
from .store import Store

if TYPE_CHECKING:
    from .scheduling import FlushScheduler
    from .status import ActivityTracker

__all__ = ["Wiring"]

logger = logging.getLogger(__name__)
CLOSE_GRACE = 1.0  # seconds close() gives requests in flight, even with no final flush
FINAL_STATES = (EventState.DELIVERED.value, EventState.DEAD.value)


class Wiring:
    """Builds the parts on ``settings``; ``dispose()`` releases only the engines it created.

    :raises SchemaError: the database is not at this version's schema (nothing is kept).
    """

    def __init__(
        self,
        settings: Settings,
        engine: Engine | None,
        *,
        clock: Callable[[], float],
        on_delivered: Callback | None = None,
        on_dead: Callback | None = None,
    ) -> None:
        self.owns_engine = engine is None
        self.engine = engine or database.create(
            settings.database_url,
            durability=settings.durability,
            create_directories=settings.create_directories,
        )
        self.bookkeeping: Engine | None = None
        self.heartbeat: Heartbeat | None = None  # once a flusher is scheduled
        try:
            migrate.ensure_schema(self.engine, auto_migrate=settings.auto_migrate)
        except BaseException:
            self.dispose()
            raise
        if self.owns_engine and database.is_sqlite(self.engine):
            # Losing the last results to a power cut only means resending them, which the
            # Idempotency-Key makes harmless; an enqueue keeps its fsync.
            self.bookkeeping = database.create(settings.database_url, durability="normal")
        self.settings = settings
        self.store = Store(self.engine, bookkeeping=self.bookkeeping)
        self.flusher = Flusher(
            self.store, settings, on_delivered=on_delivered, on_dead=on_dead, clock=clock
        )
        self.started = clock()
        self._fork_holds: list[Callable[[], None]] = []

    @functools.cached_property
    def activity(self) -> ActivityTracker:
        """The outbox's counters since this client started (reporting loads on first use)."""
        from .status import ActivityTracker

        return ActivityTracker(self.engine, settle=self.settings.lease_duration, since=self.started)

    @property
    def outbox(self) -> str:
        """The outbox database's URL, without credentials (for messages)."""
        url = self.engine.url.set(username=None, password=None)
        if database.is_sqlite(self.engine) and url.database:
            url = url.set(database=os.path.abspath(url.database))  # where to find it later
        return url.render_as_string(hide_password=True)

    def dispose(self) -> None:
        """Dispose of the engines this wiring created (an application's engine is kept)."""
        if self.owns_engine:
            self.engine.dispose()
        if self.bookkeeping is not None:
            self.bookkeeping.dispose()

    def before_fork(self, timeout: float | None) -> None:
        """Wait for the pass and the enqueue under way and hold new ones back: a child
        forked in the middle of either would inherit an open SQLite transaction (and
        SQLite's own locks) that it can never finish. None: a closed client holds nothing."""
        self._fork_holds = []
        if timeout is None:
            return
        for part in (self.flusher, self.store):
            if part.before_fork(timeout):
                self._fork_holds.append(part.after_fork_in_parent)

    def after_fork_in_parent(self) -> None:
        holds, self._fork_holds = self._fork_holds, []
        for resume in holds:
            resume()

    def after_fork_in_child(self, scheduler: FlushScheduler | None, *, closed: bool) -> None:
        """Forget the parent's connections, threads and locks without closing them, and
        restart ``scheduler`` if it ran (nothing to do for a closed client)."""
        self._fork_holds = []
        if closed:
            return
        if self.owns_engine:
            self.engine.dispose(close=False)  # the parent's connections are not ours to use
        if self.bookkeeping is not None:
            self.bookkeeping.dispose(close=False)
        self.store.after_fork_in_child()
        self.flusher.after_fork_in_child()
        if scheduler is not None:
            scheduler.after_fork_in_child()

    def shut_down(self, scheduler: FlushScheduler | None, *, announce: bool) -> None:
        """Stop the scheduler, flush what is due within ``final_flush_timeout``, release.

        :param announce: log one WARNING line if events stay undelivered (a client that
            delivered, or tried to).
        """
        deadline = time.monotonic() + max(self.settings.final_flush_timeout, CLOSE_GRACE)
        # A pause that starts from now on is told by the one closing line, with what it leaves.
        self.flusher.pauses.quiet = announce
        try:
            report = None
            if scheduler is not None:
                self.flusher.leave_by(deadline)
                scheduler.stop(max(0.0, deadline - time.monotonic()))
                if self.settings.final_flush_timeout > 0 and not self.flusher.breaker.paused:
                    report = self._final_flush(deadline)
            if announce:
                self._warn_undelivered(report)
        finally:
            if self.heartbeat is not None:
                self.heartbeat.stop()
            self.flusher.close(deadline)
            self.store.close()
            self.dispose()

    def _final_flush(self, deadline: float) -> FlushReport | None:
        try:
            return self.flusher.run_pass(deadline=deadline)
        except Exception as exc:  # a traceback at exit helps no one: say what failed
            logger.warning("final flush failed: %s", exc)
            logger.debug("final flush failed", exc_info=True)
            return None

    def _warn_undelivered(self, report: FlushReport | None) -> None:
        # Pending and blocked events, and those this flusher leaves in flight; not those in
        # flight with another flusher (a forked sibling, a daemon): it is delivering them.
        try:
            counts = self.store.count_by_state()
            blocked = counts.get(EventState.BLOCKED.value, 0)
            waiting = counts.get(EventState.PENDING.value, 0) + blocked
            waiting += self.store.count_leased_by(self.flusher.owner)
        except Exception as exc:
            logger.warning("could not count undelivered events in %s: %s", self.outbox, exc)
            return
        if waiting:
            held = f", {blocked} of them blocked behind a dead setup" if blocked else ""
            because = self.flusher.pauses.because()
            why = f": {because};" if because else ":"
            refused = self.flusher.breaker.paused == "auth"  # a loud error, as while running
            one = waiting == 1
            logger.log(
                logging.ERROR if refused else logging.WARNING,
                "%d %s not delivered yet%s, stored in %s%s the next start of a client on "
                "this outbox or `cms-outbox run`%s delivers %s",
                waiting, "event" if one else "events", held, self.outbox, why,
                ", with a valid token," if refused else "", "it" if one else "them",
            )  # fmt: skip

    def new_scheduler(
        self, *, maintenance: Callable[[], object], kind: str = "client"
    ) -> FlushScheduler:
        """Passes of this flusher, woken by NOTIFY, with ``maintenance`` hourly and a
        heartbeat of ``kind`` (``"client"`` or ``"daemon"``)."""
        from .scheduling import FlushScheduler  # APScheduler only when a flusher starts

        self.heartbeat = Heartbeat(self.store, lambda: self.flusher.owner, kind=kind)
        return FlushScheduler(
            lambda stop: self.flusher.run_pass(stop=stop),
            interval=self.settings.interval,
            maintenance=maintenance,
            listen=notify.listener(self.engine),
            in_flight=lambda: self.flusher.in_flight,
            beat=self.heartbeat.beat,
        )

    def wait_for(self, event_id: str, seconds: float, *, alone: bool) -> TrackResult:
        """Try delivering ``event_id`` for up to ``seconds``; its result then (``wait=``).

        :param alone: no background flusher runs: this thread runs the passes.
        :raises EventNotFound: no such event in the outbox.
        """
        deadline = time.monotonic() + seconds
        while True:
            row = self.store.get(event_id)
            if row is None:
                raise EventNotFound(f"event {event_id!r} is not in the outbox")
            remaining = deadline - time.monotonic()
            if row["state"] in FINAL_STATES or remaining <= 0:
                return result_of_row(row)
            if alone or not self.flusher.busy:
                report = self.flusher.run_pass(deadline=deadline)
                if report.paused:
                    return result_of_row(self.store.get(event_id) or row)
                if report.delivered or report.dead or report.retried:
                    continue  # something was recorded: look again at once
            # Its request may be in flight in another pass or left behind by one.
            time.sleep(min(0.005, max(0.0, deadline - time.monotonic())))

    def purge_expired(self, now: float) -> int:
        """Delete delivered and dead events older than the retention periods; how many."""
        batches = self.store.purge(
            delivered_before=now - self.settings.retention,
            dead_before=now - self.settings.dead_retention,
            acknowledge=False,  # housekeeping, not an operator looking at what went wrong
        )
        return sum(len(batch) for batch in batches)
