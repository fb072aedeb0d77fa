"""The operator's writes: retry dead or blocked events, purge old ones, acknowledge.

Statements only, each inside the transaction the ``Store`` opens for it.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import (
    ColumnElement,
    Connection,
    Double,
    and_,
    bindparam,
    func,
    select,
    update,
)

from .dialect import delete_by_key
from .queries import BLOCKED, CONTROL_ROW, DEAD, DELIVERED, PENDING
from .results import EventState
from .schema import attempts, control, events

__all__ = ["acknowledge", "purge_batch", "purge_selection", "retry", "retry_selection"]


def retry_selection(
    event_ids: Sequence[str], states: Sequence[EventState]
) -> ColumnElement[bool] | None:
    """The dead or blocked events named, or in ``states``; None when that is nothing."""
    retryable = (DEAD, BLOCKED)
    wanted = [state.value for state in states if state.value in retryable]
    conditions = []
    if event_ids:
        conditions.append(events.c.event_id.in_(list(event_ids)))
    if wanted:
        conditions.append(events.c.state.in_(wanted))
    if not conditions:
        return None
    selection = and_(events.c.state.in_(retryable), conditions[0] if len(conditions) == 1
                     else conditions[0] | conditions[1])  # fmt: skip
    return selection


def retry(conn: Connection, selection: ColumnElement[bool], now: float) -> int:
    """Make the selected events pending and due at ``now``; a retried dead deferred setup
    releases its customer's blocked follow-ups too. Acknowledges what is dead or blocked."""
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
    acknowledge(conn, now)
    return int(count)


def acknowledge(conn: Connection, now: float) -> None:
    """An operator has seen what is dead and blocked now (``health`` counts what comes after)."""
    conn.execute(_ACKNOWLEDGE, {"now": now})


def purge_selection(
    delivered_before: float | None, dead_before: float | None
) -> ColumnElement[bool] | None:
    """Delivered events older than ``delivered_before`` and dead ones last touched before
    ``dead_before``; None when neither cut-off is given."""
    conditions = []
    if delivered_before is not None:
        conditions.append(
            and_(events.c.state == DELIVERED, events.c.delivered_at < delivered_before)
        )
    if dead_before is not None:
        last_touched = func.coalesce(events.c.last_attempt_at, events.c.created_at)
        conditions.append(and_(events.c.state == DEAD, last_touched < dead_before))
    if not conditions:
        return None
    selection = conditions[0] if len(conditions) == 1 else conditions[0] | conditions[1]
    return selection


def purge_batch(
    conn: Connection, *, selection: ColumnElement[bool], after: int, size: int, dry_run: bool,
    acknowledged_at: float | None,
) -> list[tuple[int, str]]:  # fmt: skip
    """The next ``size`` selected events after sequence id ``after``, deleted with their
    attempts unless ``dry_run``: (sequence id, event id) each, in order. An operator's
    first batch also calls ``acknowledge`` at ``acknowledged_at``."""
    if acknowledged_at is not None:
        acknowledge(conn, acknowledged_at)
    rows = conn.execute(
        select(events.c.id, events.c.event_id)
        .where(selection, events.c.id > after)
        .order_by(events.c.id)
        .limit(size)
    ).all()
    seqs = [row.id for row in rows]
    if seqs and not dry_run:
        # By key: never a scan that waits for the lock on an unrelated row (an
        # application's open transaction that stored an event).
        delete_by_key(conn, attempts, attempts.c.event_seq, seqs)
        delete_by_key(conn, events, events.c.id, seqs, selection)
    return [(int(row.id), str(row.event_id)) for row in rows]


_ACKNOWLEDGE = (
    update(control)
    .where(control.c.name == CONTROL_ROW)
    .values(acknowledged_at=bindparam("now", type_=Double))
)
