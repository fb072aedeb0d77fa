"""The dashboard's reads of events: a selected page of them, and one with its context.

Each function opens one read transaction through ``reading``, the read path that never
takes the write lock, so the dashboard answers while an application transaction holds
it. Nothing is cached: each page is the database now. Each query is bounded by an index
or a ``LIMIT`` so that a page stays fast with a million events stored
(``benchmarks/dashboard.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from ..errors import EventNotFound
from ..schema import attempts, events
from .base import BLOCKED, DEAD, PENDING, UNFINISHED, as_float, event_name_of, parse_json, reading
from .selection import Selection

__all__ = [
    "MAX_BULK",
    "SCAN_WINDOW",
    "Attempt",
    "EventPage",
    "EventRow",
    "EventView",
    "event_page",
    "event_view",
    "retryable_count",
    "retryable_ids",
]

RETRYABLE = (DEAD, BLOCKED)
# Sequence ids searched per page by a filter no index narrows (an event name alone).
SCAN_WINDOW = 50_000
# Most events one "retry all matching" action takes; the page says when more match.
MAX_BULK = 1000
# Neighbours of an event shown on each side in its customer's FIFO order.
NEIGHBOURS = 10


# -- a page of events ------------------------------------------------------------------


@dataclass(frozen=True)
class EventRow:
    """One event as the events page lists it."""

    seq: int
    event_id: str
    kind: str
    event_name: str | None
    customer_external_id: str
    invoice_id: str | None
    state: str
    attempts: int
    created_at: float
    last_attempt_at: float | None
    last_status_code: int | None
    last_error: str | None


@dataclass(frozen=True)
class EventPage:
    """A page of events, newest first, with the cursors of its neighbours.

    ``older``/``newer`` are the ``before``/``after`` values of the next and previous
    pages (None when there is none). ``searched_down_to`` is set when the filter is
    searched window by window and this page stopped at that sequence id.
    """

    rows: Sequence[EventRow]
    older: int | None
    newer: int | None
    searched_down_to: int | None


_ROW_COLUMNS = (
    events.c.id, events.c.event_id, events.c.kind, events.c.payload,
    events.c.customer_external_id, events.c.invoice_id, events.c.state, events.c.attempts,
    events.c.created_at, events.c.last_attempt_at, events.c.last_status_code,
    events.c.last_error,
)  # fmt: skip


def event_page(
    engine: Engine,
    selection: Selection,
    *,
    before: int | None = None,
    after: int | None = None,
    limit: int = 50,
) -> EventPage:
    """Events matching ``selection`` by keyset: ids below ``before``, or above ``after``.

    :raises StorageError: the database failed.
    """
    condition = selection.condition(engine.dialect.name)
    with reading(engine, "listing events") as conn:
        window_floor: int | None = None
        window_ceiling: int | None = None
        if selection.needs_scan:
            if after is None:
                top = before if before is not None else _max_seq(conn) + 1
                window_floor = max(0, top - SCAN_WINDOW)
            else:
                window_ceiling = after + SCAN_WINDOW
        query = select(*_ROW_COLUMNS).where(condition)
        if after is not None:
            query = query.where(events.c.id > after)
            if window_ceiling is not None:
                query = query.where(events.c.id <= window_ceiling)
            found = conn.execute(query.order_by(events.c.id).limit(limit + 1)).all()
            more_newer = len(found) > limit or (
                window_ceiling is not None and window_ceiling < _max_seq(conn)
            )
            rows = [_row(item._mapping) for item in reversed(found[:limit])]
            newer = rows[0].seq if rows and more_newer else None
            if not rows and more_newer and window_ceiling is not None:
                newer = window_ceiling
            return EventPage(rows, rows[-1].seq if rows else after + 1, newer, None)
        if before is not None:
            query = query.where(events.c.id < before)
        if window_floor is not None:
            query = query.where(events.c.id >= window_floor)
        found = conn.execute(query.order_by(events.c.id.desc()).limit(limit + 1)).all()
    rows = [_row(item._mapping) for item in found[:limit]]
    older: int | None = None
    searched: int | None = None
    if len(found) > limit:
        older = rows[-1].seq
    elif window_floor is not None and window_floor > 0:
        older = window_floor
        searched = window_floor
    newer = None if before is None else (rows[0].seq if rows else before - 1)
    return EventPage(rows, older, newer, searched)


def retryable_ids(engine: Engine, selection: Selection) -> tuple[list[str], bool]:
    """The dead and blocked events matching ``selection``, oldest first, at most ``MAX_BULK``.

    :returns: their event ids, and whether more than ``MAX_BULK`` match.
    :raises StorageError: the database failed.
    """
    if selection.state is not None and selection.state not in RETRYABLE:
        return [], False
    states = [selection.state] if selection.state is not None else list(RETRYABLE)
    found: list[tuple[int, str]] = []
    with reading(engine, "selecting events to retry") as conn:
        # One (state, id) index range per state: an IN over both would walk the table.
        for state in states:
            query = (
                select(events.c.id, events.c.event_id)
                .where(selection.condition(engine.dialect.name), events.c.state == state)
                .order_by(events.c.id)
                .limit(MAX_BULK + 1)
            )
            found.extend((int(row.id), str(row.event_id)) for row in conn.execute(query))
    found.sort()
    return [event_id for _, event_id in found[:MAX_BULK]], len(found) > MAX_BULK


def retryable_count(engine: Engine, selection: Selection) -> int:
    """How many dead and blocked events match ``selection``, counted up to ``MAX_BULK + 1``.

    :raises StorageError: the database failed.
    """
    if selection.state is not None and selection.state not in RETRYABLE:
        return 0
    states = [selection.state] if selection.state is not None else list(RETRYABLE)
    total = 0
    with reading(engine, "counting events to retry") as conn:
        for state in states:
            matching = (
                select(events.c.id)
                .where(selection.condition(engine.dialect.name), events.c.state == state)
                .limit(MAX_BULK + 1)
                .subquery()
            )
            total += int(conn.execute(select(func.count()).select_from(matching)).scalar_one())
    return min(total, MAX_BULK + 1)


def _max_seq(conn: Connection) -> int:
    return int(conn.execute(select(func.coalesce(func.max(events.c.id), 0))).scalar_one())


def _row(row: Mapping[Any, Any]) -> EventRow:
    return EventRow(
        seq=int(row["id"]),
        event_id=row["event_id"],
        kind=row["kind"],
        event_name=event_name_of(row["payload"]),
        customer_external_id=row["customer_external_id"],
        invoice_id=row["invoice_id"],
        state=row["state"],
        attempts=int(row["attempts"]),
        created_at=float(row["created_at"]),
        last_attempt_at=as_float(row["last_attempt_at"]),
        last_status_code=row["last_status_code"],
        last_error=row["last_error"],
    )


# -- one event -------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One recorded delivery attempt."""

    started_at: float
    duration: float
    status_code: int | None
    outcome: str
    error: str | None
    response: str | None


@dataclass(frozen=True)
class EventView:
    """One event: its row, payload and attempts, what it waits on, its customer's others.

    ``setup`` is the customer's latest deferred setup enqueued before this follow-up
    (the one a blocked follow-up waits on); ``held_behind`` the earliest earlier event of
    the customer still unfinished (per-customer FIFO holds this one until it finishes).
    ``neighbours`` lists the customer's events around this one in FIFO order.
    """

    row: EventRow
    click_id: str | None
    mode: str | None
    next_attempt_at: float | None
    delivered_at: float | None
    payload: Any
    last_response: str | None
    attempts: Sequence[Attempt]
    setup: EventRow | None
    held_behind: EventRow | None
    neighbours: Sequence[EventRow]
    more_before: bool
    more_after: bool


def event_view(engine: Engine, event_id: str) -> EventView:
    """One event with its attempt history and its customer's context.

    :raises EventNotFound: no such event in the outbox.
    :raises StorageError: the database failed.
    """
    with reading(engine, "reading an event") as conn:
        found = conn.execute(
            select(
                *_ROW_COLUMNS, events.c.click_id, events.c.mode, events.c.next_attempt_at,
                events.c.delivered_at, events.c.last_response,
            ).where(events.c.event_id == event_id)
        ).first()  # fmt: skip
        if found is None:
            raise EventNotFound(f"event {event_id!r} is not in the outbox")
        values = found._mapping
        row = _row(values)
        history = conn.execute(
            select(
                attempts.c.started_at, attempts.c.duration, attempts.c.status_code,
                attempts.c.outcome, attempts.c.error, attempts.c.response,
            ).where(attempts.c.event_seq == row.seq).order_by(attempts.c.id)
        ).all()  # fmt: skip
        customer = events.c.customer_external_id == row.customer_external_id
        setup = None
        if values["click_id"] is None and row.state in (PENDING, BLOCKED):
            setup = _one(
                conn,
                select(*_ROW_COLUMNS)
                .where(customer, events.c.mode == "deferred", events.c.id < row.seq)
                .order_by(events.c.id.desc()),
            )
        held_behind = None
        if row.state in (PENDING, BLOCKED):
            held_behind = _one(
                conn,
                select(*_ROW_COLUMNS)
                .where(customer, events.c.state.in_(UNFINISHED), events.c.id < row.seq)
                .order_by(events.c.id),
            )
        earlier = conn.execute(
            select(*_ROW_COLUMNS)
            .where(customer, events.c.id < row.seq)
            .order_by(events.c.id.desc())
            .limit(NEIGHBOURS + 1)
        ).all()
        later = conn.execute(
            select(*_ROW_COLUMNS)
            .where(customer, events.c.id > row.seq)
            .order_by(events.c.id)
            .limit(NEIGHBOURS + 1)
        ).all()
    neighbours = [
        *(_row(item._mapping) for item in reversed(earlier[:NEIGHBOURS])),
        row,
        *(_row(item._mapping) for item in later[:NEIGHBOURS]),
    ]
    return EventView(
        row=row,
        click_id=values["click_id"],
        mode=values["mode"],
        next_attempt_at=as_float(values["next_attempt_at"]) if row.state == PENDING else None,
        delivered_at=as_float(values["delivered_at"]),
        payload=parse_json(values["payload"]),
        last_response=values["last_response"],
        attempts=tuple(
            Attempt(
                started_at=float(item.started_at),
                duration=float(item.duration),
                status_code=item.status_code,
                outcome=str(item.outcome),
                error=item.error,
                response=item.response,
            )
            for item in history
        ),
        setup=setup,
        held_behind=held_behind,
        neighbours=neighbours,
        more_before=len(earlier) > NEIGHBOURS,
        more_after=len(later) > NEIGHBOURS,
    )


def _one(conn: Connection, query: Any) -> EventRow | None:
    found = conn.execute(query.limit(1)).first()
    return None if found is None else _row(found._mapping)
