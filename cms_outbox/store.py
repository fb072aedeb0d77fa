"""Every SQL statement of the outbox: insert, lease, record, release, retry, status, purge.

Lease rules, the heart of delivery:

- A row is *eligible* when it is ``pending``, due (``next_attempt_at <= now``)
  and no earlier row of the same customer (by sequence id, i.e. enqueue order) is
  ``pending``, ``in_flight`` or ``blocked``: per-customer FIFO.
- ``lease`` turns eligible rows into ``in_flight`` with an owner token and an
  expiry, in one statement (``FOR UPDATE SKIP LOCKED`` where the backend has it;
  SQLite serialises writers with ``BEGIN IMMEDIATE``).
- ``record`` applies an outcome only while the row is still leased by the same
  owner, so a worker whose lease expired cannot overwrite a newer outcome.
- An expired lease (crashed worker) makes the row ``pending`` again.
- A follow-up (no ``clickId``) is governed by the latest deferred setup of its
  customer enqueued before it (by sequence id): delivered releases it, dead holds it
  (``blocked``, until a retry), pending waits (FIFO already holds it back). No setup
  before it: it is sent as it is. The lease reads the governing setup with one index
  seek per row it leases, so the cost never grows with the dead rows kept.
- A follow-up answered 404 (no deferred association) because its governing setup
  committed after it was sent (a late application transaction on PostgreSQL) is dead
  until that setup is delivered, which makes it pending again.

Work is never selected by "id greater than the last seen": rows commit out of order.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, TypeVar, Union

from sqlalchemy import (
    Connection,
    Double,
    Engine,
    Integer,
    Text,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from . import queries
from .driver_errors import storage_error, storage_errors
from .errors import StorageError
from .events import Event
from .group_commit import GroupCommit
from .pacing import Budget, Quota, Source
from .queries import BLOCKED, CONTROL_ROW, DEAD, DELIVERED, IN_FLIGHT, PENDING
from .results import EventState
from .schema import HAS_INVOICE, NOTIFY_CHANNEL, attempts, control, events
from .write_lock import WriteLock

__all__ = ["Lease", "Outcome", "Store", "budget_of"]

T = TypeVar("T")
AppConnection = Union[Connection, Session]

# Seconds between sweeps for expired leases while leasing.
SWEEP_INTERVAL = 1.0

_INSERT_COLUMNS = (
    "event_id", "kind", "customer_external_id", "click_id", "mode", "invoice_id",
    "payload", "state", "attempts", "next_attempt_at", "created_at",
)  # fmt: skip
# The enqueue hot path on SQLite: one prepared statement on a DB-API connection of its
# own, group-committed. SQLAlchemy Core's per-statement overhead alone would double its cost.
_SQLITE_INSERT = (
    f"INSERT INTO {events.name} ({', '.join(_INSERT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_INSERT_COLUMNS))}) "
    "ON CONFLICT(invoice_id) WHERE invoice_id IS NOT NULL DO NOTHING"
)


@dataclass(frozen=True)
class Lease:
    """A row leased for sending."""

    seq: int
    event_id: str
    kind: str
    customer_external_id: str
    mode: str | None
    payload: str
    attempts: int
    created_at: float


@dataclass(frozen=True)
class Outcome:
    """What to record for one attempt: the attempt itself and the row's next state."""

    seq: int
    state: EventState
    label: str
    started_at: float
    duration: float
    status_code: int | None = None
    error: str | None = None
    response: str | None = None
    next_attempt_at: float | None = None
    counts: bool = True  # toward the row's attempts; a 429 does not

    @property
    def finished_at(self) -> float:
        return self.started_at + self.duration


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
        self._enqueue_lock: WriteLock | None = None
        if engine.dialect.name == "sqlite":
            path = engine.url.database or ""
            if path and path != ":memory:" and not path.startswith("file:"):
                # The enqueue has a lock (an open file) of its own: it queues with the
                # writes of this process's flusher as with every other process's.
                self._enqueue_lock, self._write_lock = WriteLock(path), WriteLock(path)
            self._group = GroupCommit(
                self._enqueue_connection,
                _SQLITE_INSERT,
                write_lock=self._enqueue_lock,
            )

    # -- enqueue ---------------------------------------------------------------

    def insert(
        self, event: Event, connection: AppConnection | None = None
    ) -> dict[str, Any] | None:
        """Store ``event`` as pending, committed on return (or with ``connection``'s transaction).

        :returns: None when stored, else the row of the sale already stored with the
            same ``invoice_id`` (nothing was written).
        :raises StorageError: the database failed; nothing was written.
        """
        if connection is not None:
            with storage_errors("storing the event in the application's transaction"):
                conn = connection.connection() if isinstance(connection, Session) else connection
                return self._insert_core(conn, event)
        if self._group is not None:
            return self._insert_sqlite(self._group, event)
        with storage_errors("storing the event"), self.engine.begin() as conn:
            return self._insert_core(conn, event)

    def _insert_sqlite(self, group: GroupCommit, event: Event) -> dict[str, Any] | None:
        try:
            stored = group.insert(_insert_params(event))
        except (sqlite3.Error, SQLAlchemyError) as exc:
            raise storage_error("storing the event", exc) from exc
        return None if stored else self._existing_sale(event)

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

    @contextmanager
    def _writing(self, engine: Engine) -> Iterator[Connection]:
        """A write transaction on ``engine``, queued for the write lock on SQLite."""
        with self._write_lock or nullcontext(), engine.begin() as conn:
            yield conn

    def hold(self, timeout: float) -> bool:
        """Wait for the enqueue under way and hold back new ones (around ``fork()``)."""
        return self._group is None or self._group.hold(timeout)

    def release_hold(self) -> None:
        if self._group is not None:
            self._group.release_hold()

    def after_fork(self) -> None:
        """Forget the parent's enqueue connection without closing it (it is not ours)."""
        if self._group is not None:
            self._group.after_fork()

    def _insert_core(self, conn: Connection, event: Event) -> dict[str, Any] | None:
        values = dict(zip(_INSERT_COLUMNS, _insert_params(event)))
        dialect = conn.dialect.name
        if dialect in ("sqlite", "postgresql"):
            module = sqlite if dialect == "sqlite" else postgresql
            statement = (
                module.insert(events)
                .values(values)
                .on_conflict_do_nothing(index_elements=["invoice_id"], index_where=HAS_INVOICE)
                .returning(events.c.id)
            )
            stored = len(conn.execute(statement).all())
            if stored and dialect == "postgresql":  # delivered to listeners at commit
                conn.execute(_NOTIFY)
        else:
            savepoint = conn.begin_nested()  # a failed INSERT must not abort the caller's work
            try:
                stored = conn.execute(insert(events).values(values)).rowcount
                savepoint.commit()
            except SQLAlchemyError:
                savepoint.rollback()
                stored = 0
        return None if stored == 1 else self._existing_row(conn, event)

    def _existing_sale(self, event: Event) -> dict[str, Any]:
        with queries.reading(self.engine, "reading the stored sale") as conn:
            return self._existing_row(conn, event)

    def _existing_row(self, conn: Connection, event: Event) -> dict[str, Any]:
        row = queries.sale_by_invoice(conn, event.invoice_id)
        if row is None:
            raise StorageError(f"storing event {event.event_id} failed: it was not inserted")
        return row

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
        outcomes: Sequence[Outcome],
        limit: int,
        now: float,
        duration: float,
        *,
        redact: bool = False,
    ) -> tuple[list[bool], list[Lease]]:
        """``record`` the outcomes, then ``lease`` up to ``limit`` rows, in one transaction.

        A busy flusher does this once per round of finished requests, so a customer's
        next event is leased in the same transaction that finished its predecessor.
        """
        with storage_errors("recording and leasing"), self._writing(self.bookkeeping) as conn:
            applied = self._record(conn, owner, outcomes, redact) if outcomes else []
            leases = self._lease(conn, owner, limit, now, duration) if limit > 0 else []
        return applied, leases

    def lease(self, owner: str, limit: int, now: float, duration: float) -> list[Lease]:
        """Lease up to ``limit`` eligible rows to ``owner`` until ``now + duration``.

        First, in the same transaction (at most once per ``SWEEP_INTERVAL`` of ``now``),
        expired leases are reclaimed. An eligible follow-up whose governing setup is dead
        is not leased but ``blocked``, with the customer's later follow-ups that setup
        governs. Rows come back in enqueue order.
        """
        return self.exchange(owner, (), limit, now, duration)[1]

    def _lease(
        self, conn: Connection, owner: str, limit: int, now: float, duration: float
    ) -> list[Lease]:
        if now >= self._next_sweep:  # a busy flusher leases many times a second
            self._reclaim_expired(conn, now)
            self._next_sweep = now + SWEEP_INTERVAL
        params = {"owner": owner, "expires": now + duration, "now": now}
        leases: list[Lease] = []
        while limit > 0:
            # An eligible follow-up whose governing setup is dead comes back ``blocked``
            # instead of leased: it is found (and held) once, by the lease that meets it.
            rows = self._lease_rows(conn, {**params, "limit": limit})
            held = [row for row in rows if row.state == BLOCKED]
            leases += (Lease(*row[:-1]) for row in rows if row.state != BLOCKED)
            for row in held:
                self._hold_followups(conn, row.customer_external_id, row.id)
            if not held or len(rows) < limit:
                break
            limit -= len(rows) - len(held)
        return sorted(leases, key=lambda lease: lease.seq)

    def _lease_rows(self, conn: Connection, params: dict[str, Any]) -> Sequence[Any]:
        if conn.dialect.name != "mysql":
            return conn.execute(_LEASE_ELIGIBLE, params).all()
        # MySQL: no LIMIT in an IN subquery, no RETURNING, no subquery on the updated table.
        found = conn.execute(_ELIGIBLE_HELD, params).all()
        ids = [row.id for row in found if not row.held]
        held = [row.id for row in found if row.held]
        if ids:
            conn.execute(_LEASE_IDS, {**params, "ids": ids})
        if held:
            conn.execute(_BLOCK_IDS, {"ids": held})
        return conn.execute(
            select(*_LEASE_COLUMNS, events.c.state).where(events.c.id.in_(ids + held))
        ).all()

    def _hold_followups(self, conn: Connection, customer: str, seq: int) -> None:
        """Block the follow-ups of ``customer`` governed by the same dead setup as ``seq``."""
        bound = conn.execute(_NEXT_SETUP, {"customer": customer, "seq": seq}).scalar()
        condition = and_(
            events.c.customer_external_id == customer,
            events.c.state.in_((PENDING, BLOCKED)),
            events.c.click_id.is_(None),
            events.c.id >= seq,
        )
        if bound is not None:
            condition = and_(condition, events.c.id < bound)
        conn.execute(
            update(events)
            .where(condition)
            .values(state=BLOCKED, lease_owner=None, lease_expires_at=None)
        )

    def _reclaim_expired(self, conn: Connection, now: float) -> None:
        conn.execute(_RECLAIM_EXPIRED, {"now": now})

    def _settle_setups(self, conn: Connection, outcomes: Sequence[Outcome], done: set[int]) -> None:
        """A setup that died holds the follow-ups it governs; one delivered releases those
        answered 404 before it arrived (its transaction committed after they were sent)."""
        final = {o.seq: o for o in outcomes if o.seq in done and o.state in _FINAL}
        if not final:
            return
        for seq, customer in conn.execute(_SETUPS_AMONG, {"seqs": list(final)}).all():
            outcome = final[seq]
            if outcome.state is EventState.DEAD:
                self._hold_followups(conn, customer, seq)
                continue
            bound = conn.execute(_NEXT_SETUP, {"customer": customer, "seq": seq}).scalar()
            condition = and_(
                events.c.customer_external_id == customer,
                events.c.state == DEAD,
                events.c.click_id.is_(None),
                events.c.last_status_code == 404,
                events.c.id > seq,
            )
            if bound is not None:
                condition = and_(condition, events.c.id < bound)
            conn.execute(
                update(events)
                .where(condition)
                .values(state=PENDING, next_attempt_at=outcome.finished_at)
            )

    def record(
        self, owner: str, outcomes: Sequence[Outcome], *, redact: bool = False
    ) -> list[bool]:
        """Record attempts and apply each outcome while ``owner`` still holds the lease.

        Every attempt is written to the attempts table; the event row changes only if
        it is still ``in_flight`` under ``owner``. A dead deferred setup blocks the
        follow-ups it governs; a delivered one makes pending again those of them that
        were answered 404 before it arrived.

        :returns: for each outcome, whether it was applied to the event row.
        """
        return self.exchange(owner, outcomes, 0, 0.0, 0.0, redact=redact)[0]

    def _record(
        self, conn: Connection, owner: str, outcomes: Sequence[Outcome], redact: bool
    ) -> list[bool]:
        # Statements compiled once and run as executemany: on a busy flusher every
        # compile and every statement also waits for the GIL the worker threads hold.
        conn.execute(insert(attempts), [_attempt_row(o) for o in outcomes])
        seqs = [o.seq for o in outcomes]
        done = set(conn.execute(_STILL_LEASED, {"seqs": seqs, "owner": owner}).scalars())
        rows = [_applied_row(o) for o in outcomes if o.seq in done]
        if rows:
            conn.execute(_APPLY_OUTCOME, rows)
        if redact:
            for outcome in outcomes:
                if outcome.seq in done and outcome.state is EventState.DELIVERED:
                    conn.execute(
                        update(events)
                        .where(events.c.id == outcome.seq)
                        .values(payload=_redacted(conn, outcome.seq))
                    )
        self._settle_setups(conn, outcomes, done)
        return [outcome.seq in done for outcome in outcomes]

    def release(self, owner: str, seqs: Sequence[int] | None = None) -> int:
        """Hand rows leased by ``owner`` back unsent (all of them, or just ``seqs``)."""
        condition = and_(events.c.state == IN_FLIGHT, events.c.lease_owner == owner)
        if seqs is not None:
            if not seqs:
                return 0
            condition = and_(condition, events.c.id.in_(list(seqs)))
        with storage_errors("releasing leases"), self._writing(self.bookkeeping) as conn:
            return int(
                conn.execute(
                    update(events)
                    .where(condition)
                    .values(state=PENDING, lease_owner=None, lease_expires_at=None)
                ).rowcount
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

        :param event_ids: these events (if dead or blocked).
        :param states: every event in these states (``dead`` and/or ``blocked``).
        :returns: how many events became pending.
        """
        now = time.time() if now is None else now
        retryable = (DEAD, BLOCKED)
        wanted = [state.value for state in states if state.value in retryable]
        conditions = []
        if event_ids:
            conditions.append(events.c.event_id.in_(list(event_ids)))
        if wanted:
            conditions.append(events.c.state.in_(wanted))
        if not conditions:
            return 0
        selection = and_(events.c.state.in_(retryable), conditions[0] if len(conditions) == 1
                         else conditions[0] | conditions[1])  # fmt: skip
        with storage_errors("retrying events"), self._writing(self.engine) as conn:
            setups = (
                conn.execute(
                    select(events.c.customer_external_id).where(
                        selection, events.c.state == DEAD, events.c.mode == "deferred"
                    )
                )
                .scalars()
                .all()
            )
            back_to_pending = {"state": PENDING, "next_attempt_at": now, "lease_owner": None,
                                   "lease_expires_at": None}  # fmt: skip
            count = conn.execute(update(events).where(selection).values(back_to_pending)).rowcount
            if setups:
                count += conn.execute(
                    update(events)
                    .where(events.c.state == BLOCKED,
                           events.c.customer_external_id.in_(list(set(setups))))
                    .values(back_to_pending)
                ).rowcount  # fmt: skip
        return int(count)

    def purge(
        self,
        *,
        delivered_before: float | None = None,
        dead_before: float | None = None,
        dry_run: bool = False,
        batch_size: int = 1000,
    ) -> Iterator[list[str]]:
        """Delete delivered and dead events older than the cut-offs, with their attempts.

        Works in batches of ``batch_size`` rows per transaction, so a large purge never
        holds a long lock, nor more than one batch in memory.

        :returns: an iterator of batches: the ``event_id`` of each event deleted (or, with
            ``dry_run``, that would be), yielded once its batch is committed.
        """
        conditions = []
        if delivered_before is not None:
            conditions.append(
                and_(events.c.state == DELIVERED, events.c.delivered_at < delivered_before)
            )
        if dead_before is not None:
            last_touched = func.coalesce(events.c.last_attempt_at, events.c.created_at)
            conditions.append(and_(events.c.state == DEAD, last_touched < dead_before))
        if not conditions:
            return
        selection = conditions[0] if len(conditions) == 1 else conditions[0] | conditions[1]
        after = 0
        while True:
            with storage_errors("purging events"), self._writing(self.engine) as conn:
                rows = conn.execute(
                    select(events.c.id, events.c.event_id)
                    .where(selection, events.c.id > after)
                    .order_by(events.c.id)
                    .limit(batch_size)
                ).all()
                if not rows:
                    return
                seqs = [row.id for row in rows]
                if not dry_run:
                    conn.execute(delete(attempts).where(attempts.c.event_seq.in_(seqs)))
                    conn.execute(delete(events).where(events.c.id.in_(seqs), selection))
            yield [row.event_id for row in rows]
            after = seqs[-1]

    # -- shared pacing and pauses -----------------------------------------------------

    def with_budget(self, change: Callable[[Budget], tuple[Budget, T]]) -> T:
        """Read the shared budget under lock, store ``change``'s budget, return its result."""
        with storage_errors("pacing"), self._writing(self.bookkeeping) as conn:
            _lock_control(conn)
            row = conn.execute(
                select(*_BUDGET_COLUMNS).where(control.c.name == CONTROL_ROW).with_for_update()
            ).one()
            before = budget_of(row._mapping)
            budget, result = change(before)
            if budget != before:
                conn.execute(
                    update(control)
                    .where(control.c.name == CONTROL_ROW)
                    .values(**_budget_values(budget))
                )
        return result

    def set_pause(
        self, *, outage_since: float | None, auth_paused_since: float | None,
        error: str | None,
    ) -> None:  # fmt: skip
        """Publish this outbox's outage or auth pause (or its end) for ``status``."""
        with (
            storage_errors("publishing the delivery pause"),
            self._writing(self.bookkeeping) as conn,
        ):
            conn.execute(
                update(control)
                .where(control.c.name == CONTROL_ROW)
                .values(outage_since=outage_since, auth_paused_since=auth_paused_since,
                        pause_error=error)
            )  # fmt: skip


_NOTIFY = text(f"NOTIFY {NOTIFY_CHANNEL}")

# Statements of the busy flusher's every round, built once: building one (and its cache
# key) costs more than SQLite takes to run it, all while holding the GIL the senders need.
# Eligible: pending, due, and no earlier row of the customer unfinished (FIFO).
_ELIGIBLE = (
    select(events.c.id)
    .where(queries.leasable(bindparam("now", type_=Double)))
    .order_by(events.c.id)
    .limit(bindparam("limit", type_=Integer))
    .with_for_update(skip_locked=True)
)
_setup = events.alias("setup")
# The state of a follow-up's governing setup: the latest deferred setup of its customer
# enqueued before it. One backward seek on the (customer, mode, id) index.
_GOVERNOR_STATE = (
    select(_setup.c.state)
    .where(
        _setup.c.customer_external_id == events.c.customer_external_id,
        _setup.c.mode == "deferred",
        _setup.c.id < events.c.id,
    )
    .order_by(_setup.c.id.desc())
    .limit(1)
    .scalar_subquery()
)
_HELD = and_(events.c.click_id.is_(None), _GOVERNOR_STATE == DEAD)
_LEASE = update(events).values(
    state=case((_HELD, BLOCKED), else_=IN_FLIGHT),
    lease_owner=bindparam("owner", type_=Text),
    lease_expires_at=bindparam("expires", type_=Double),
)
_LEASE_COLUMNS = (
    events.c.id, events.c.event_id, events.c.kind, events.c.customer_external_id,
    events.c.mode, events.c.payload, events.c.attempts, events.c.created_at,
)  # fmt: skip
_LEASE_ELIGIBLE = _LEASE.where(events.c.id.in_(_ELIGIBLE.scalar_subquery())).returning(
    *_LEASE_COLUMNS, events.c.state
)
_ELIGIBLE_HELD = _ELIGIBLE.add_columns(case((_HELD, True), else_=False).label("held"))
_LEASE_IDS = (
    update(events)
    .where(events.c.id.in_(bindparam("ids", expanding=True)))
    .values(
        state=IN_FLIGHT,
        lease_owner=bindparam("owner", type_=Text),
        lease_expires_at=bindparam("expires", type_=Double),
    )
)
_BLOCK_IDS = (
    update(events).where(events.c.id.in_(bindparam("ids", expanding=True))).values(state=BLOCKED)
)
_NEXT_SETUP = select(func.min(events.c.id)).where(
    events.c.customer_external_id == bindparam("customer", type_=Text),
    events.c.mode == "deferred",
    events.c.id > bindparam("seq", type_=Integer),
)
_FINAL = (EventState.DELIVERED, EventState.DEAD)
_SETUPS_AMONG = select(events.c.id, events.c.customer_external_id).where(
    events.c.id.in_(bindparam("seqs", expanding=True)), events.c.mode == "deferred"
)
_RECLAIM_EXPIRED = (
    update(events)
    .where(events.c.state == IN_FLIGHT, events.c.lease_expires_at <= bindparam("now", type_=Double))
    .values(state=PENDING, lease_owner=None, lease_expires_at=None)
)
# Which rows of a batch are still ours: a result is recorded only under a matching lease.
_STILL_LEASED = (
    select(events.c.id)
    .where(
        events.c.id.in_(bindparam("seqs", expanding=True)),
        events.c.state == IN_FLIGHT,
        events.c.lease_owner == bindparam("owner"),
    )
    .with_for_update()
)
_APPLY_OUTCOME = (
    update(events)
    .where(events.c.id == bindparam("b_seq"))
    .values(
        state=bindparam("b_state"),
        attempts=events.c.attempts + bindparam("b_counts", type_=Integer),
        lease_owner=None,
        lease_expires_at=None,
        last_attempt_at=bindparam("b_finished", type_=Double),
        next_attempt_at=func.coalesce(bindparam("b_next", type_=Double), events.c.next_attempt_at),
        delivered_at=func.coalesce(bindparam("b_delivered", type_=Double), events.c.delivered_at),
        last_status_code=bindparam("b_status", type_=Integer),
        last_error=bindparam("b_error", type_=Text),
        last_response=bindparam("b_response", type_=Text),
    )
)


def _applied_row(outcome: Outcome) -> dict[str, Any]:
    delivered = outcome.state is EventState.DELIVERED
    return {
        "b_seq": outcome.seq,
        "b_counts": 1 if outcome.counts else 0,
        "b_state": outcome.state.value,
        "b_finished": outcome.finished_at,
        "b_next": outcome.next_attempt_at,
        "b_delivered": outcome.finished_at if delivered else None,
        "b_status": outcome.status_code,
        "b_error": outcome.error,
        "b_response": outcome.response,
    }


def _attempt_row(outcome: Outcome) -> dict[str, Any]:
    return {
        "event_seq": outcome.seq,
        "started_at": outcome.started_at,
        "duration": outcome.duration,
        "status_code": outcome.status_code,
        "outcome": outcome.label,
        "error": outcome.error,
        "response": outcome.response,
    }


def _insert_params(event: Event) -> tuple[Any, ...]:
    return (
        event.event_id, event.kind, event.customer_external_id, event.click_id, event.mode,
        event.invoice_id, event.payload, PENDING, 0, event.created_at, event.created_at,
    )  # fmt: skip


def _redacted(conn: Connection, seq: int) -> str:
    payload = json.loads(
        conn.execute(select(events.c.payload).where(events.c.id == seq)).scalar_one()
    )
    for key in ("customerName", "customerEmail", "customerAvatar"):
        payload.pop(key, None)
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


_BUDGET_COLUMNS = (
    control.c.tokens, control.c.tokens_at, control.c.quota_requests, control.c.quota_window,
    control.c.limit_source, control.c.remaining, control.c.reset_at, control.c.paused_until,
    control.c.counted_since, control.c.counted, control.c.changed_at, control.c.probed_from,
)  # fmt: skip


def budget_of(row: Mapping[Any, Any]) -> Budget:
    """The pacing budget stored in a control row."""
    try:
        source = Source(row["limit_source"])
    except ValueError:
        source = Source.ASSUMED  # a word written by a newer version: start over, safely
    return Budget(
        tokens=float(row["tokens"]),
        tokens_at=float(row["tokens_at"]),
        quota=Quota(float(row["quota_requests"]), float(row["quota_window"])),
        source=source,
        remaining=None if row["remaining"] is None else int(row["remaining"]),
        reset_at=float(row["reset_at"]),
        paused_until=float(row["paused_until"]),
        counted_since=float(row["counted_since"]),
        counted=int(row["counted"]),
        changed_at=float(row["changed_at"]),
        probed_from=float(row["probed_from"]),
    )


def _budget_values(budget: Budget) -> dict[str, Any]:
    return {
        "tokens": budget.tokens, "tokens_at": budget.tokens_at,
        "quota_requests": budget.quota.requests, "quota_window": budget.quota.window,
        "limit_source": budget.source.value, "remaining": budget.remaining,
        "reset_at": budget.reset_at, "paused_until": budget.paused_until,
        "counted_since": budget.counted_since, "counted": budget.counted,
        "changed_at": budget.changed_at, "probed_from": budget.probed_from,
    }  # fmt: skip


def _lock_control(conn: Connection) -> None:
    # Write first: on an application's SQLite engine in the driver's legacy transaction
    # mode a leading SELECT would run outside the transaction and the update could race.
    conn.execute(update(control).where(control.c.name == CONTROL_ROW).values(name=control.c.name))
