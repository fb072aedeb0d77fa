"""How many events are where, and what happened: counts, activity, the last error."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, and_, case, exists, func, select

from ..schema import attempts, events
from .base import (
    BLOCKED,
    DEAD,
    DEAD_OUTCOMES,
    DELIVERED,
    DELIVERED_OUTCOMES,
    IN_FLIGHT,
    NO_REQUEST_OUTCOMES,
    PENDING,
    RETRIED_OUTCOMES,
    STATES,
    TO_SEND,
    as_float,
    count_if,
)

__all__ = [
    "activity_between",
    "counts_by_state",
    "deliveries",
    "last_failed_attempt",
    "leased_by",
    "oldest_unsent_at",
    "pending_summary",
    "unacknowledged",
]


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
            count_if(and_(events.c.state == DEAD, went_dead)),
            count_if(and_(events.c.state == BLOCKED, (events.c.created_at > since) | setup_died)),
        ).where(events.c.state.in_((DEAD, BLOCKED)))
    ).one()
    return int(dead or 0), int(blocked or 0)


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
            count_if(events.c.attempts == 0),
            count_if(events.c.attempts > 0),
        ).where(events.c.state == PENDING)
    ).one()
    return int(first_try), int(retrying)


def oldest_unsent_at(conn: Connection) -> float | None:
    """When the oldest event still to be sent (pending or in flight) was enqueued."""
    return as_float(
        conn.execute(select(func.min(events.c.created_at)).where(events.c.state.in_(TO_SEND)))
        .scalar()
    )  # fmt: skip


def deliveries(conn: Connection, now: float) -> tuple[float | None, int, int]:
    """The last delivery's time and how many were delivered in the last minute and hour."""
    last, minute, hour = conn.execute(
        select(
            func.max(events.c.delivered_at),
            count_if(events.c.delivered_at >= now - 60),
            count_if(events.c.delivered_at >= now - 3600),
        ).where(events.c.state == DELIVERED)
    ).one()
    return as_float(last), int(minute), int(hour)


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
            count_if(attempts.c.outcome.in_(DELIVERED_OUTCOMES)),
            count_if(attempts.c.outcome.in_(RETRIED_OUTCOMES)),
            count_if(attempts.c.outcome.in_(DEAD_OUTCOMES)),
            count_if(sent),
            func.coalesce(func.sum(case((sent, attempts.c.duration), else_=0.0)), 0.0),
            *(count_if(sent & (attempts.c.duration <= bound)) for bound in buckets),
        ).where(started)
    ).one()
    return (float(enqueued), *(float(value) for value in row))


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


def leased_by(conn: Connection, owner: str) -> int:
    """Events in flight under ``owner``'s leases."""
    query = select(func.count()).where(events.c.state == IN_FLIGHT, events.c.lease_owner == owner)
    return int(conn.execute(query).scalar_one())
