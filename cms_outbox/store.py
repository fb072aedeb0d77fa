"""Every write of the outbox: insert, lease, record, hand back, retry, purge, pacing.

The ``Store`` is the one door to the database for the client and the flusher: it
opens each transaction (queued for the write lock on SQLite), leaves the statements of
leasing and recording to ``leasing``, those that store a new event to ``inserting``
and every read to ``queries``, and turns each database failure into a ``StorageError``
in plain words. A transaction of its own that the server broke for a deadlock or a lock
wait is run again (``driver_errors.retrying``); one of the application's is not.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, TypeVar, Union

from sqlalchemy import (
    Connection,
    Engine,
    select,
)
from sqlalchemy.exc import SQLAlchemyError

from . import bookkeeping, inserting, leasing, operations, queries
from .dialect import latest_committed, write_transaction
from .driver_errors import retrying, storage_error, storage_errors
from .errors import StorageError
from .events import Event
from .group_commit import GroupCommit
from .leasing import Attempt, Lease
from .pacing import Budget
from .results import EventState
from .schema import events
from .write_lock import WriteLock

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["AppConnection", "Attempt", "Lease", "Store", "Stored"]

T = TypeVar("T")
# A Session only ever comes from an application that imported the ORM itself: the outbox
# does not import it (a third of SQLAlchemy's import time, for a short script's start).
# Django's connection (``django.db.connection``) is accepted too.
AppConnection = Union[Connection, "Session", Any]

# Seconds between sweeps for expired leases while leasing.
SWEEP_INTERVAL = 1.0


@dataclass(frozen=True)
class Stored:
    """What ``Store.insert`` did: the event is stored in ``state``; or, with ``existing``, a
    sale with its ``invoice_id`` was stored already (that row; nothing was written)."""

    state: EventState
    existing: dict[str, Any] | None = None

    @classmethod
    def found(cls, row: dict[str, Any]) -> Stored:
        return cls(EventState(row["state"]), row)


STORED_PENDING = Stored(EventState.PENDING)  # immutable: one for every event stored pending


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
        self._group: GroupCommit | None = None
        self._write_lock: WriteLock | None = None
        self._writers: set[int] = set()  # threads inside a write transaction
        self._enqueue_lock: WriteLock | None = None
        if engine.dialect.name == "sqlite":
            path = engine.url.database or ""
            if path and path != ":memory:" and not path.startswith("file:"):
                # The enqueue has a lock (an open file) of its own: it queues with the
                # writes of this process's flusher as with every other process's.
                self._enqueue_lock, self._write_lock = WriteLock(path), WriteLock(path)
            self._group = GroupCommit(self._enqueue_connection, write_lock=self._enqueue_lock)
            inserting.sqlite_insert_follow_up()  # compiled now, not in a caller's request

    # -- enqueue ---------------------------------------------------------------

    def insert(self, event: Event, connection: AppConnection | None = None) -> Stored:
        """Store ``event``, committed on return (or with ``connection``'s transaction).

        It is stored pending, or blocked: a follow-up whose governing setup is dead.

        :raises StorageError: the database failed; nothing was written.
        """
        if connection is not None:
            if _is_django(connection):  # Django's own cursor, in its atomic() block
                from .django.transaction import insert_event

                return insert_event(connection, event)
            with storage_errors("storing the event in the application's transaction"):
                conn = connection if isinstance(connection, Connection) else connection.connection()
                return self._insert_core(conn, event)
        if self._group is not None:
            return self._insert_sqlite(self._group, event)

        def insert() -> Stored:  # at the default isolation level, as the application's
            with self.engine.begin() as conn:
                return self._insert_core(conn, event)

        return retrying("storing the event", insert)

    def _insert_sqlite(self, group: GroupCommit, event: Event) -> Stored:
        sql, returning = inserting.sqlite_insert(event)
        try:
            returned = group.insert(sql, inserting.row_values(event), returning=returning)
        except (sqlite3.Error, SQLAlchemyError) as exc:
            raise storage_error("storing the event", exc) from exc
        if returned is None:
            return Stored.found(self._existing_sale(event))
        return Stored(EventState(returned[0])) if returned else STORED_PENDING

    def _enqueue_connection(self) -> sqlite3.Connection:
        # A DB-API connection of its own, detached from the pool: a pool checkout and its
        # reset-on-return would cost more than the insert itself.
        raw = self.engine.raw_connection()  # configured by the engine's connect hooks
        conn = raw.dbapi_connection
        raw.detach()
        assert isinstance(conn, sqlite3.Connection)
        return conn

    def close(self) -> None:
        """Close the enqueue connection and the lock files (the engines are the caller's)."""
        if self._group is not None:
            self._group.close()
        for lock in (self._enqueue_lock, self._write_lock):
            if lock is not None:
                lock.close()

    def _write(self, action: str, engine: Engine, work: Callable[[Connection], T]) -> T:
        """``work(conn)`` in a write transaction of its own, run again from the start when
        the server broke it for a deadlock or a lock wait (``driver_errors.retrying``)."""

        def once() -> T:
            with self._writing(engine) as conn:
                return work(conn)

        return retrying(action, once)

    @contextmanager
    def _writing(self, engine: Engine) -> Iterator[Connection]:
        """A write transaction on ``engine``, queued for the write lock on SQLite."""
        self._writers.add(threading.get_ident())
        try:
            with self._write_lock or nullcontext(), write_transaction(engine) as conn:
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
        if self._group is not None:
            self._group.after_fork_in_child()
        for lock in (self._enqueue_lock, self._write_lock):
            if lock is not None:
                lock.after_fork_in_child()

    def _insert_core(self, conn: Connection, event: Event) -> Stored:
        state = inserting.insert_event(conn, event)
        if state is None:
            return Stored.found(self._existing_row(conn, event))
        return Stored(EventState(state))

    def _existing_sale(self, event: Event) -> dict[str, Any]:
        with queries.reading(self.engine, "reading the stored sale") as conn:
            return self._existing_row(conn, event)

    def _existing_row(self, conn: Connection, event: Event) -> dict[str, Any]:
        # The latest committed row: on MySQL the transaction's snapshot may predate it.
        query = select(events).where(events.c.invoice_id == event.invoice_id)
        row = conn.execute(latest_committed(query, conn)).first()
        if row is None:
            raise StorageError(f"storing event {event.event_id} failed: it was not inserted")
        return dict(row._mapping)

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


def _is_django(connection: object) -> bool:
    """A Django ``DatabaseWrapper``, or ``django.db.connection`` (a proxy to one)."""
    return type(connection).__module__.startswith(("django.db.backends.", "django.utils."))
