"""Every read query of the outbox, shared by the flusher, the store, status, the CLI and metrics.

``reading`` opens a read transaction that never takes the write lock: on SQLite a
deferred ``BEGIN`` in WAL mode reads the last committed state while a writer (an
application's open transactional-outbox transaction, a flusher) holds the lock; on
PostgreSQL and MySQL plain ``SELECT``\\ s, never ``FOR UPDATE``. So ``status``, ``health``,
``events``, ``show``, ``result()``, ``stats()`` and metrics answer at once, whatever
transaction the application keeps open. The query functions take a connection, so a
writer can also run one inside its own transaction (the store does, after a conflict).

The lease rule's predicate (``leasable``) lives here too: the store leases by it and
``status`` counts by it, so the two can never disagree.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, and_, case, exists, func, select

from .database import READ_ONLY
from .driver_errors import storage_errors
from .pacing import Budget, Quota, Source
from .results import EventState
from .schema import attempts, control, events

__all__ = [
    "BLOCKED",
    "BUDGET_COLUMNS",
    "CONTROL_ROW",
    "DEAD",
    "DEAD_OUTCOMES",
    "DELIVERED",
    "DELIVERED_OUTCOMES",
    "IN_FLIGHT",
    "NO_REQUEST_OUTCOMES",
    "PENDING",
    "PAUSED_OUTCOMES",
    "RETRIED_OUTCOMES",
    "STATES",
    "SUMMARY_COLUMNS",
    "TO_SEND",
    "UNFINISHED",
    "activity_between",
    "attempt_rows",
    "budget_of",
    "control_row",
    "count_due",
    "counts_by_state",
    "deliveries",
    "event_ids_starting_with",
    "event_row",
    "event_rows",
    "fifo_clear",
    "has_work",
    "last_failed_attempt",
    "leasable",
    "oldest_unsent_at",
    "pending_outlook",
    "pending_summary",
    "reading",
    "sale_by_invoice",
    "unacknowledged",
    "waits_on",
]

STATES = tuple(state.value for state in EventState)
PENDING = EventState.PENDING.value
IN_FLIGHT = EventState.IN_FLIGHT.value
DELIVERED = EventState.DELIVERED.value
DEAD = EventState.DEAD.value
BLOCKED = EventState.BLOCKED.value
TO_SEND = (PENDING, IN_FLIGHT)  # still to be sent
UNFINISHED = (PENDING, IN_FLIGHT, BLOCKED)  # holds a customer's later events back (FIFO)
CONTROL_ROW = "default"

# The attempt outcomes the flusher records (``Attempt.outcome``), grouped as FlushReport counts.
DELIVERED_OUTCOMES = ("delivered", "duplicate")
DEAD_OUTCOMES = ("dead", "expired")
RETRIED_OUTCOMES = ("retry", "rate_limited")
# A pause (a refused token, no answer at all) hands the event back unchanged: not a retry.
PAUSED_OUTCOMES = ("auth", "outage")
NO_REQUEST_OUTCOMES = ("expired",)  # dead-lettered by age without sending anything

# What ``events`` lists of each row (the payload for the event name; no last response).
SUMMARY_COLUMNS = (
    events.c.id, events.c.event_id, events.c.kind, events.c.payload,
    events.c.customer_external_id, events.c.click_id, events.c.mode, events.c.invoice_id,
    events.c.state, events.c.attempts, events.c.created_at, events.c.next_attempt_at,
    events.c.last_attempt_at, events.c.delivered_at, events.c.last_status_code,
    events.c.last_error,
)  # fmt: skip


@contextmanager
def reading(engine: Engine, action: str) -> Iterator[Connection]:
    """A connection in a read transaction that never waits for a writer.

    :param action: what the caller is doing, for the ``StorageError`` message.
    :raises StorageError: the database failed.
    """
    with storage_errors(action), engine.connect() as conn:
        conn.execution_options(**{READ_ONLY: True})
        yield conn


# -- the lease rule ------------------------------------------------------------------------


def fifo_clear() -> ColumnElement[bool]:
    """No earlier event of the same customer is unfinished (per-customer FIFO)."""
    earlier = events.alias("earlier")
    return ~exists(earlier.c.id).where(  # selects an indexed column: answered by the index
        earlier.c.customer_external_id == events.c.customer_external_id,
        earlier.c.id < events.c.id,
        earlier.c.state.in_(UNFINISHED),
    )


def leasable(now: Any) -> ColumnElement[bool]:
    """Pending, due by ``now`` (a value or a bind parameter) and clear by FIFO."""
    return and_(events.c.state == PENDING, events.c.next_attempt_at <= now, fifo_clear())


def count_due(conn: Connection, now: float) -> int:
    """Pending events a flusher could lease at ``now``."""
    return int(conn.execute(select(func.count()).where(leasable(now))).scalar_one())


def has_work(conn: Connection, now: float) -> bool:
    """A pass would find work at ``now``: a leasable event, or an expired lease to reclaim."""
    expired = and_(events.c.state == IN_FLIGHT, events.c.lease_expires_at <= now)
    return bool(
        conn.execute(select(exists().where(leasable(now)) | exists().where(expired))).scalar_one()
    )


def unacknowledged(conn: Connection, since: float | None) -> tuple[int, int]:
    """Dead and blocked events that are new since the acknowledgement at ``since``.

    Dead: it went dead (its last attempt, or its expiry) after ``since``. Blocked: it was
    enqueued after ``since``, or its customer's deferred setup went dead after it. With
    ``since`` None (never acknowledged), every dead and blocked event is new.
    """
    if since is None:
        counts = counts_by_state(conn)
        return counts[DEAD], counts[BLOCKED]
    went_dead = func.coalesce(events.c.last_attempt_at, events.c.created_at) > since
    setup = events.alias("setup")
    setup_died = exists(setup.c.id).where(
        setup.c.customer_external_id == events.c.customer_external_id,
        setup.c.mode == "deferred",
        setup.c.state == DEAD,
        func.coalesce(setup.c.last_attempt_at, setup.c.created_at) > since,
    )
    dead, blocked = conn.execute(
        select(
            _count_if(and_(events.c.state == DEAD, went_dead)),
            _count_if(and_(events.c.state == BLOCKED, (events.c.created_at > since) | setup_died)),
        ).where(events.c.state.in_((DEAD, BLOCKED)))
    ).one()
    return int(dead or 0), int(blocked or 0)


# -- counts ------------------------------------------------------------------------------


def counts_by_state(conn: Connection) -> dict[str, int]:
    """Events per state, every state present (zeros included), in ``EventState`` order."""
    counts = dict.fromkeys(STATES, 0)
    for state, count in conn.execute(
        select(events.c.state, func.count()).group_by(events.c.state)
    ).all():
        counts[str(state)] = int(count)
    return counts


def pending_summary(conn: Connection) -> tuple[int, int]:
    """Pending events never tried, and pending events retrying."""
    first_try, retrying = conn.execute(
        select(
            _count_if(events.c.attempts == 0),
            _count_if(events.c.attempts > 0),
        ).where(events.c.state == PENDING)
    ).one()
    return int(first_try), int(retrying)


def pending_outlook(conn: Connection, now: float) -> tuple[int, int, float | None]:
    """Pending events due now, those held back by an earlier unfinished event of their
    customer (FIFO), and when the next one not held back is due (None: every one is).

    A held event's own ``next_attempt_at`` says nothing about when it is sent: it waits
    for the event ahead of it.
    """
    pending = (
        select(events.c.next_attempt_at.label("due_at"), fifo_clear().label("clear"))
        .where(events.c.state == PENDING)
        .subquery()
    )
    due, held, next_at = conn.execute(
        select(
            _count_if(and_(pending.c.clear, pending.c.due_at <= now)),
            _count_if(~pending.c.clear),
            func.min(case((pending.c.clear, pending.c.due_at))),
        )
    ).one()
    return int(due), int(held), _float(next_at)


def waits_on(conn: Connection, row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The event that ``row`` waits for, if it waits: a blocked follow-up's deferred setup
    (the latest of its customer before it), a pending event's earliest unfinished
    predecessor (FIFO). None for an event that waits for nothing but its time."""
    earlier = and_(
        events.c.customer_external_id == row["customer_external_id"], events.c.id < row["id"]
    )
    if row["state"] == BLOCKED:
        query = (
            select(*_WAITED_ON)
            .where(earlier, events.c.mode == "deferred")
            .order_by(events.c.id.desc())
        )
    elif row["state"] == PENDING:
        query = (
            select(*_WAITED_ON).where(earlier, events.c.state.in_(UNFINISHED)).order_by(events.c.id)
        )
    else:
        return None
    found = conn.execute(query.limit(1)).first()
    return None if found is None else dict(found._mapping)


_WAITED_ON = (
    events.c.event_id, events.c.kind, events.c.mode, events.c.state, events.c.last_status_code,
    events.c.last_error,
)  # fmt: skip


def oldest_unsent_at(conn: Connection) -> float | None:
    """When the oldest event still to be sent (pending or in flight) was enqueued."""
    return _float(
        conn.execute(select(func.min(events.c.created_at)).where(events.c.state.in_(TO_SEND)))
        .scalar()
    )  # fmt: skip


def deliveries(conn: Connection, now: float) -> tuple[float | None, int, int]:
    """The last delivery's time and how many were delivered in the last minute and hour."""
    last, minute, hour = conn.execute(
        select(
            func.max(events.c.delivered_at),
            _count_if(events.c.delivered_at >= now - 60),
            _count_if(events.c.delivered_at >= now - 3600),
        ).where(events.c.state == DELIVERED)
    ).one()
    return _float(last), int(minute), int(hour)


def activity_between(
    conn: Connection, start: float, end: float | None, buckets: tuple[float, ...] = ()
) -> tuple[float, ...]:
    """Enqueues and attempt outcomes with their time in ``[start, end)``, as one vector:
    enqueued, delivered, retried, dead, requests, duration sum, then the cumulative
    request count of each duration bound in ``buckets``."""
    created = events.c.created_at >= start
    if end is not None:
        created = created & (events.c.created_at < end)
    enqueued = conn.execute(select(func.count()).where(created)).scalar_one()
    started = attempts.c.started_at >= start
    if end is not None:
        started = started & (attempts.c.started_at < end)
    sent = attempts.c.outcome.not_in(NO_REQUEST_OUTCOMES)
    row = conn.execute(
        select(
            _count_if(attempts.c.outcome.in_(DELIVERED_OUTCOMES)),
            _count_if(attempts.c.outcome.in_(RETRIED_OUTCOMES)),
            _count_if(attempts.c.outcome.in_(DEAD_OUTCOMES)),
            _count_if(sent),
            func.coalesce(func.sum(case((sent, attempts.c.duration), else_=0.0)), 0.0),
            *(_count_if(sent & (attempts.c.duration <= bound)) for bound in buckets),
        ).where(started)
    ).one()
    return (float(enqueued), *(float(value) for value in row))


# -- errors and pauses -------------------------------------------------------------------------


def last_failed_attempt(conn: Connection) -> dict[str, Any] | None:
    """The most recent attempt that did not deliver, with its event's id (None if purged)."""
    row = conn.execute(
        select(
            attempts.c.started_at,
            attempts.c.duration,
            events.c.event_id,
            attempts.c.status_code,
            attempts.c.outcome,
            attempts.c.error,
        )
        .select_from(attempts.outerjoin(events, events.c.id == attempts.c.event_seq))
        .where(attempts.c.outcome.not_in(DELIVERED_OUTCOMES))
        .order_by(attempts.c.started_at.desc(), attempts.c.id.desc())
        .limit(1)
    ).first()
    return None if row is None else dict(row._mapping)


BUDGET_COLUMNS = (
    control.c.tokens, control.c.tokens_at, control.c.quota_requests, control.c.quota_window,
    control.c.limit_source, control.c.remaining, control.c.reset_at, control.c.paused_until,
    control.c.counted_since, control.c.counted, control.c.changed_at, control.c.probed_from,
    control.c.ceiling,
)  # fmt: skip


def control_row(conn: Connection) -> dict[str, Any] | None:
    """The outbox's control row: the shared token bucket and the pauses in effect."""
    row = conn.execute(select(control).where(control.c.name == CONTROL_ROW)).first()
    return None if row is None else dict(row._mapping)


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
        ceiling=float(row["ceiling"]),
    )


# -- events ----------------------------------------------------------------------------------


def event_row(conn: Connection, event_id: str) -> dict[str, Any] | None:
    """The whole stored row of ``event_id``, or None."""
    row = conn.execute(select(events).where(events.c.event_id == event_id)).first()
    return None if row is None else dict(row._mapping)


def event_ids_starting_with(conn: Connection, prefix: str, limit: int) -> list[str]:
    """Up to ``limit`` event ids that start with ``prefix``, in order (an index range scan)."""
    query = select(events.c.event_id).where(events.c.event_id >= prefix)
    if prefix:
        successor = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        query = query.where(events.c.event_id < successor)
    ids = conn.execute(query.order_by(events.c.event_id).limit(limit)).scalars()
    return [str(event_id) for event_id in ids if str(event_id).startswith(prefix)]


def sale_by_invoice(conn: Connection, invoice_id: str | None) -> dict[str, Any] | None:
    """The whole stored row of the sale with ``invoice_id``, or None."""
    row = conn.execute(select(events).where(events.c.invoice_id == invoice_id)).first()
    return None if row is None else dict(row._mapping)


def event_rows(
    conn: Connection,
    *,
    state: str | None = None,
    customer: str | None = None,
    kind: str | None = None,
    limit: int = 50,
    oldest_first: bool = False,
) -> list[dict[str, Any]]:
    """``SUMMARY_COLUMNS`` of stored events, newest first (or oldest first), filtered."""
    query = select(*SUMMARY_COLUMNS)
    if state is not None:
        query = query.where(events.c.state == state)
    if customer is not None:
        query = query.where(events.c.customer_external_id == customer)
    if kind is not None:
        query = query.where(events.c.kind == kind)
    order = events.c.id if oldest_first else events.c.id.desc()
    return [dict(row._mapping) for row in conn.execute(query.order_by(order).limit(limit))]


def attempt_rows(conn: Connection, seq: int) -> list[dict[str, Any]]:
    """Every recorded attempt of the event with sequence id ``seq``, oldest first."""
    rows = conn.execute(
        select(attempts).where(attempts.c.event_seq == seq).order_by(attempts.c.id)
    ).all()
    return [dict(row._mapping) for row in rows]


# -- helpers -------------------------------------------------------------------------------


def _count_if(condition: Any) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)
