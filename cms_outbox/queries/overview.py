"""The dashboard overview's reads, each bounded by an index on a large outbox: events per
state, the first event of a state, the backlog, and the chart's counts per time bucket.

Run them in one read transaction; on PostgreSQL at REPEATABLE READ, so that the several
counts come from one snapshot, as SQLite's read transaction gives.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Integer, cast, func, select

from ..schema import attempts, events
from .base import DEAD_OUTCOMES, DELIVERED, DELIVERED_OUTCOMES, STATES, UNFINISHED, as_float

__all__ = ["bucket_counts", "first_created", "state_counts_by_index", "unfinished_count"]


def state_counts_by_index(conn: Connection) -> dict[str, int]:
    """Events per state, delivered as the total less the others.

    Counting per state walks the (state, id) index, a string comparison per row, a
    million rows for a week of deliveries; the total comes from the smallest index and
    the unfinished and dead states are short ranges of the state index.
    """
    counts = {
        state: int(conn.execute(select(func.count()).where(events.c.state == state)).scalar_one())
        for state in STATES
        if state != DELIVERED
    }
    total = int(conn.execute(select(func.count()).select_from(events)).scalar_one())
    counts[DELIVERED] = max(0, total - sum(counts.values()))
    return {state: counts[state] for state in STATES}


def first_created(conn: Connection, state: str) -> float | None:
    """When the first event in enqueue order of ``state`` was enqueued.

    One seek of the (state, id) index; a min() over created_at would read every row of a
    large backlog.
    """
    return as_float(
        conn.execute(
            select(events.c.created_at)
            .where(events.c.state == state)
            .order_by(events.c.id)
            .limit(1)
        ).scalar()
    )


def unfinished_count(conn: Connection) -> int:
    """Events not finished yet: pending, in flight or blocked."""
    query = select(func.count()).where(events.c.state.in_(UNFINISHED))
    return int(conn.execute(query).scalar_one())


def bucket_counts(
    conn: Connection, bucket: float, first: int, last: int
) -> dict[int, tuple[int, int, int, int]]:
    """Per bucket of ``bucket`` seconds since the epoch, numbers ``first`` to ``last``:
    attempts delivered, retried and dead, and events enqueued."""
    start = first * bucket
    found: dict[int, list[int]] = {n: [0, 0, 0, 0] for n in range(first, last + 1)}
    slot = _bucket_of(conn, attempts.c.started_at, bucket)
    for number, outcome, count in conn.execute(
        select(slot, attempts.c.outcome, func.count())
        .where(attempts.c.started_at >= start)
        .group_by(slot, attempts.c.outcome)
    ).all():
        if int(number) in found:
            column = 0 if outcome in DELIVERED_OUTCOMES else 2 if outcome in DEAD_OUTCOMES else 1
            found[int(number)][column] += int(count)
    slot = _bucket_of(conn, events.c.created_at, bucket)
    for number, count in conn.execute(
        select(slot, func.count()).where(events.c.created_at >= start).group_by(slot)
    ).all():
        if int(number) in found:
            found[int(number)][3] += int(count)
    return {n: (c[0], c[1], c[2], c[3]) for n, c in found.items()}


def _bucket_of(conn: Connection, column: Any, bucket: float) -> Any:
    # Epoch times are positive, so truncation is the floor; SQLite's CAST truncates,
    # PostgreSQL's and MySQL's round, so they take FLOOR first.
    if conn.dialect.name == "sqlite":
        return cast(column / bucket, Integer)
    return cast(func.floor(column / bucket), Integer)
