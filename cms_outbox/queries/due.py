"""What is due, and what an event waits for: the lease rule's own predicate."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, case, exists, func, select

from ..schema import events
from .base import BLOCKED, IN_FLIGHT, PENDING, UNFINISHED, as_float, count_if

__all__ = [
    "count_due",
    "fifo_clear",
    "has_work",
    "leasable",
    "pending_outlook",
    "waits_on",
]


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
            count_if(and_(pending.c.clear, pending.c.due_at <= now)),
            count_if(~pending.c.clear),
            func.min(case((pending.c.clear, pending.c.due_at))),
        )
    ).one()
    return int(due), int(held), as_float(next_at)


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
