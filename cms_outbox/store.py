"""Every write of the outbox: insert, lease, record, hand back, retry, purge, pacing.

The ``Store`` is the one door to the database for the client and the flusher: it
opens each transaction (queued for the write lock on SQLite), leaves the statements of
leasing and recording to ``leasing``, storing a new event to ``enqueue`` and every
read to ``queries``, and turns each database failure into a ``StorageError``
in plain words. A transaction of its own waits at most ``LOCK_WAIT`` for a lock, and is
run again when the server broke it for a deadlock (``driver_errors.retrying``); one of
the application's is not.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, TypeVar

from sqlalchemy import Connection, Engine

from . import bookkeeping, leasing, operations, queries
from .dialect import write_transaction
from .driver_errors import retrying
from .enqueue import AppConnection, Enqueue, Stored, sqlite_file
from .errors import StorageError
from .events import Event
from .leasing import Attempt, Lease
from .pacing import Budget
from .results import EventState
from .write_lock import WriteLock

__all__ = ["AppConnection", "Attempt", "Lease", "Store", "Stored"]

T = TypeVar("T")

# Seconds between sweeps for expired leases while leasing.
SWEEP_INTERVAL = 1.0
# Seconds a statement of the outbox's own transactions waits for a row lock, where the
# servers' defaults are 50 s (MariaDB) or for ever (PostgreSQL). Flushers hold their locks
# for milliseconds; a lock held longer is an application's open transaction that locked
# an outbox row itself (FOR SHARE, FOR UPDATE), and a pass blocked by it gives up in
# seconds, saying so, and the next pass tries again. Above PostgreSQL's deadlock_timeout
# (1 s by default), so that a deadlock is still found as one.
LOCK_WAIT = 5


class Store:
    """SQL access to one outbox; every database failure surfaces as ``StorageError``."""

    def __init__(self, engine: Engine, *, bookkeeping: Engine | None = None) -> None:
        """:param bookkeeping: engine for leases, results and pacing (default: ``engine``).

        On SQLite it can skip the per-commit fsync: losing the last results to a power
        cut only means resending, which the Idempotency-Key makes harmless, while an
        enqueue must survive it.
        """
        self.engine = engine
        self.bookkeeping = bookkeeping or engine
        self._next_sweep = 0.0
        self._enqueue = Enqueue(engine)
        self._group = self._enqueue.group
        path = sqlite_file(engine)
        self._write_lock = WriteLock(path) if path is not None else None
        self._writers: set[int] = set()  # threads inside a write transaction

    # -- enqueue ---------------------------------------------------------------

    def insert(self, event: Event, connection: AppConnection | None = None) -> Stored:
        """Store ``event``, committed on return (or with ``connection``'s transaction).

        It is stored pending, or blocked: a follow-up whose governing setup is dead.

        :raises StorageError: the database failed; nothing was written.
        """
        return self._enqueue.insert(event, connection)

    def close(self) -> None:
        """Close the enqueue connection and the lock files (the engines are the caller's)."""
        self._enqueue.close()
        if self._write_lock is not None:
            self._write_lock.close()

    def _write(self, action: str, engine: Engine, work: Callable[[Connection], T]) -> T:
        """``work(conn)`` in a write transaction of its own, run again from the start when
        the server broke it for a deadlock (``driver_errors.retrying``); a lock waited for
        longer than ``LOCK_WAIT`` fails it at once."""

        def once() -> T:
            with self._writing(engine) as conn:
                return work(conn)

        return retrying(action, once)

    @contextmanager
    def _writing(self, engine: Engine) -> Iterator[Connection]:
        """A write transaction on ``engine``, queued for the write lock on SQLite."""
        self._writers.add(threading.get_ident())
        try:
            with (
                self._write_lock or nullcontext(),
                write_transaction(engine, lock_wait=LOCK_WAIT) as conn,
            ):
                yield conn
        finally:
            self._writers.discard(threading.get_ident())

    @property
    def busy_here(self) -> bool:
        """This very thread is inside a write (seen from a signal handler that interrupted
        it: whatever waits for that write would wait for ever)."""
        here = threading.get_ident() in self._writers
        return here or (self._group is not None and self._group.busy_here)

    def before_fork(self, timeout: float) -> bool:
        """Wait for the writes under way (an enqueue, a heartbeat, a hand-back) and keep
        new ones from starting, around ``fork()``."""
        lock = self._write_lock
        if lock is not None and not lock.before_fork(timeout):
            return False
        if self._group is None or self._group.before_fork(timeout):
            return True
        if lock is not None:
            lock.after_fork_in_parent()
        return False

    def after_fork_in_parent(self) -> None:
        if self._group is not None:
            self._group.after_fork_in_parent()
        if self._write_lock is not None:
            self._write_lock.after_fork_in_parent()

    def after_fork_in_child(self) -> None:
        """Forget the parent's enqueue connection and lock files without closing its locks."""
        self._enqueue.after_fork_in_child()
        if self._write_lock is not None:
            self._write_lock.after_fork_in_child()

    # -- reads (each in a read transaction that never waits for a writer) ------------------

    def get(self, event_id: str) -> dict[str, Any] | None:
        """The stored row of ``event_id`` as a dict, or None."""
        with queries.reading(self.engine, "reading an event") as conn:
            return queries.event_row(conn, event_id)

    def attempts_of(self, seq: int) -> list[dict[str, Any]]:
        """Every recorded attempt of the event with sequence id ``seq``, oldest first."""
        with queries.reading(self.engine, "reading attempts") as conn:
            return queries.attempt_rows(conn, seq)

    def count_by_state(self) -> dict[str, int]:
        """How many events are in each state (states with none are left out)."""
        with queries.reading(self.engine, "counting events") as conn:
            return {state: n for state, n in queries.counts_by_state(conn).items() if n}

    def has_work(self, now: float) -> bool:
        """Whether a pass would find anything to send or reclaim at ``now``.

        Read only: an idle flusher asks this every interval, and an idle outbox must not
        be written to (every SQLite commit appends at least one page to the WAL).
        """
        with queries.reading(self.engine, "looking for due events") as conn:
            return queries.has_work(conn, now)

    def control_row(self) -> dict[str, Any]:
        """The control row: the shared token bucket and the pauses in effect."""
        with queries.reading(self.engine, "reading the control row") as conn:
            row = queries.control_row(conn)
        if row is None:
            raise StorageError("reading the control row failed: the outbox has none")
        return row

    # -- leasing -------------------------------------------------------------------

    def exchange(
        self,
        owner: str,
        attempts: Sequence[Attempt],
        limit: int,
        now: float,
        duration: float,
        *,
        redact: bool = False,
    ) -> tuple[list[bool], list[Lease]]:
        """``record`` the attempts, then ``lease`` up to ``limit`` rows, in one transaction.

        A busy flusher does this once per round of finished requests, so a customer's
        next event is leased in the same transaction that finished its predecessor.
        """

        def work(conn: Connection) -> tuple[list[bool], list[Lease]]:
            applied = leasing.record(conn, owner, attempts, redact) if attempts else []
            if limit > 0 and now >= self._next_sweep:  # a busy flusher leases many times a second
                leasing.reclaim_expired(conn, now)
                self._next_sweep = now + SWEEP_INTERVAL
            leases = leasing.lease(conn, owner, limit, now, duration) if limit > 0 else []
            return applied, leases

        return self._write("recording and leasing", self.bookkeeping, work)

    def lease(self, owner: str, limit: int, now: float, duration: float) -> list[Lease]:
        """``leasing.lease``, after reclaiming expired leases in the same transaction (at
        most once per ``SWEEP_INTERVAL`` of ``now``)."""
        return self.exchange(owner, (), limit, now, duration)[1]

    def record(
        self, owner: str, attempts: Sequence[Attempt], *, redact: bool = False
    ) -> list[bool]:
        """``leasing.record``: for each attempt, whether it was applied to the event row."""
        return self.exchange(owner, attempts, 0, 0.0, 0.0, redact=redact)[0]

    def hand_back(self, owner: str, seqs: Sequence[int] | None = None) -> int:
        """Hand rows leased by ``owner`` back unsent (all of them, or just ``seqs``)."""
        if seqs is not None and not seqs:
            return 0
        return self._write(
            "handing leases back", self.bookkeeping, lambda c: leasing.hand_back(c, owner, seqs)
        )

    # -- operator actions ----------------------------------------------------------------

    def retry(
        self,
        event_ids: Sequence[str] = (),
        *,
        states: Sequence[EventState] = (),
        now: float | None = None,
    ) -> int:
        """Make dead or blocked events pending and due now; attempt history is kept.

        Retrying a dead deferred setup also releases its customer's blocked follow-ups.
        It is an operator's acknowledgement: ``health`` calls only events that go dead (or
        blocked) after it new.

        :param event_ids: these events (if dead or blocked).
        :param states: every event in these states (``dead`` and/or ``blocked``).
        :returns: how many events became pending.
        """
        now = time.time() if now is None else now
        selection = operations.retry_selection(event_ids, states)
        if selection is None:
            return 0
        return self._write(
            "retrying events", self.engine, lambda c: operations.retry(c, selection, now)
        )

    def purge(
        self,
        *,
        delivered_before: float | None = None,
        dead_before: float | None = None,
        dry_run: bool = False,
        batch_size: int = 1000,
        acknowledge: bool = True,
    ) -> Iterator[list[str]]:
        """Delete delivered and dead events older than the cut-offs, with their attempts.

        Works in batches of ``batch_size`` rows per transaction, so a large purge never
        holds a long lock, nor more than one batch in memory.

        :param acknowledge: an operator's purge (not a dry run) acknowledges what is dead
            and blocked, as ``retry`` does; the retention purge does not.

        :returns: an iterator of batches: the ``event_id`` of each event deleted (or, with
            ``dry_run``, that would be), yielded once its batch is committed.
        """
        selection = operations.purge_selection(delivered_before, dead_before)
        if selection is None:
            return
        after = 0
        unacknowledged = acknowledge and not dry_run
        while True:
            batch = functools.partial(
                operations.purge_batch, selection=selection, after=after, size=batch_size,
                dry_run=dry_run, acknowledged_at=time.time() if unacknowledged else None,
            )  # fmt: skip
            rows = self._write("purging events", self.engine, batch)
            unacknowledged = False
            if not rows:
                return
            yield [event_id for _, event_id in rows]
            after = rows[-1][0]

    # -- shared pacing and pauses -----------------------------------------------------

    def with_budget(self, change: Callable[[Budget], tuple[Budget, T]]) -> T:
        """Read the shared budget under lock, store ``change``'s budget, return its result."""

        def work(conn: Connection) -> T:
            before = bookkeeping.locked_budget(conn)
            budget, result = change(before)
            if budget != before:
                bookkeeping.store_budget(conn, budget)
            return result

        return self._write("pacing", self.bookkeeping, work)

    def count_leased_by(self, owner: str) -> int:
        """Events in flight under ``owner``'s leases."""
        with queries.reading(self.engine, "counting leased events") as conn:
            return queries.leased_by(conn, owner)

    def beat(self, row: dict[str, Any]) -> None:
        """Record a flusher's heartbeat (``schema.flushers``): its row, inserted or updated."""
        action = "recording the flusher's heartbeat"
        self._write(action, self.bookkeeping, lambda c: bookkeeping.beat(c, row))

    def forget_flusher(self, owner: str) -> None:
        """Remove a stopping flusher's heartbeat row: status then knows it is gone."""
        action = "removing the flusher's heartbeat"
        self._write(action, self.bookkeeping, lambda c: bookkeeping.forget_flusher(c, owner))

    def set_pause(
        self, *, outage_since: float | None, auth_paused_since: float | None,
        error: str | None,
    ) -> None:  # fmt: skip
        """Publish this outbox's outage or auth pause (or its end) for ``status``."""
        self._write(
            "publishing the delivery pause", self.bookkeeping,
            lambda c: bookkeeping.set_pause(c, outage_since, auth_paused_since, error),
        )  # fmt: skip
