"""Whole rows: an event, its attempts, the events listed, the control row and its budget."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, select

from ..pacing import Budget, Quota, Source
from ..schema import attempts, control, events, flushers
from .base import CONTROL_ROW, SUMMARY_COLUMNS

__all__ = [
    "BUDGET_COLUMNS",
    "attempt_rows",
    "budget_of",
    "control_row",
    "event_ids_starting_with",
    "event_row",
    "event_rows",
    "flusher_rows",
    "sale_by_invoice",
]


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


def flusher_rows(conn: Connection) -> list[dict[str, Any]]:
    """Every flusher's heartbeat row, the longest running first (stale ones included)."""
    rows = conn.execute(select(flushers).order_by(flushers.c.started_at, flushers.c.owner))
    return [dict(row._mapping) for row in rows]
