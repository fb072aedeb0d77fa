"""Leasing and recording: the statements of the flusher's every round.

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
- Handing rows back and reclaiming expired leases skip a row another transaction holds
  a lock on (an application's, open): it stays ``in_flight`` until a later pass, and
  the rest of the outbox keeps flowing.
- A follow-up (no ``clickId``) is governed by the latest deferred setup of its
  customer enqueued before it (by sequence id): delivered releases it, dead holds it
  (``blocked``, until a retry), pending waits (FIFO already holds it back). No setup
  before it: it is sent as it is. The lease reads the governing setup with one index
  seek per row it leases, so the cost never grows with the dead rows kept.
- A follow-up answered 404 (no deferred association) because its governing setup
  committed after it was sent (a late application transaction on PostgreSQL) is dead
  until that setup is delivered, which makes it pending again; so does recording the
  404 after that setup was delivered (by another flusher, at the same time).

Work is never selected by "id greater than the last seen": rows commit out of order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Double,
    Integer,
    Text,
    and_,
    bindparam,
    case,
    func,
    insert,
    select,
    update,
)

from . import queries
from .dialect import update_unlocked
from .followup_holds import hold_followups, release_late_followups, settle_setups
from .prepared import execute_many, fetch_all
from .queries import BLOCKED, DEAD, IN_FLIGHT, PENDING
from .results import EventState
from .schema import attempts, events

__all__ = ["Attempt", "Lease", "hand_back", "lease", "reclaim_expired", "record"]


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
class Attempt:
    """One finished delivery attempt to record: its ``outcome`` and the row's next ``state``.

    ``outcome`` is the word stored in the attempts table (``Decision.outcome``): one of
    ``policy.Verdict``'s values, ``rate_limited`` or ``expired``.
    """

    seq: int
    state: EventState
    outcome: str
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


def lease(conn: Connection, owner: str, limit: int, now: float, duration: float) -> list[Lease]:
    """Lease up to ``limit`` eligible rows to ``owner`` until ``now + duration``.

    An eligible follow-up whose governing setup is dead is not leased but ``blocked``,
    with the customer's later follow-ups that setup governs. Rows come back in enqueue
    order.
    """
    params = {"owner": owner, "expires": now + duration, "now": now}
    leases: list[Lease] = []
    while limit > 0:
        # An eligible follow-up whose governing setup is dead comes back ``blocked``
        # instead of leased: it is found (and held) once, by the lease that meets it.
        rows = _lease_rows(conn, {**params, "limit": limit})  # _LEASE_COLUMNS, then state
        held = [row for row in rows if row[-1] == BLOCKED]
        leases += (Lease(*row[:-1]) for row in rows if row[-1] != BLOCKED)
        for row in held:
            lease_ = Lease(*row[:-1])
            hold_followups(conn, lease_.customer_external_id, lease_.seq)
        if not held or len(rows) < limit:
            break
        limit -= len(rows) - len(held)
    return sorted(leases, key=lambda lease: lease.seq)


def _lease_rows(conn: Connection, params: dict[str, Any]) -> Sequence[Any]:
    if conn.dialect.name != "mysql":
        return fetch_all(conn, _LEASE_ELIGIBLE, params)
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


def reclaim_expired(conn: Connection, now: float) -> None:
    """Make rows whose lease expired (a crashed or stalled worker) pending again, but for
    those another transaction holds a lock on: a later sweep takes them."""
    update_unlocked(conn, events, _BACK_TO_PENDING, _EXPIRED, {"now": now})


def record(conn: Connection, owner: str, attempts_: Sequence[Attempt], redact: bool) -> list[bool]:
    """Record attempts and apply each one while ``owner`` still holds the lease.

    Every attempt is written to the attempts table; the event row changes only if
    it is still ``in_flight`` under ``owner``. A dead deferred setup blocks the
    follow-ups it governs; a delivered one makes pending again those of them that
    were answered 404 before it arrived.

    :returns: for each attempt, whether it was applied to the event row.
    """
    # Statements compiled once and run as executemany (``prepared``): on a busy flusher
    # every compile and every statement also waits for the GIL the worker threads hold.
    execute_many(conn, _INSERT_ATTEMPT, [_attempt_row(a) for a in attempts_])
    seqs = [a.seq for a in attempts_]
    done = {row[0] for row in fetch_all(conn, _STILL_LEASED, {"seqs": seqs, "owner": owner})}
    execute_many(conn, _APPLY_OUTCOME, [_applied_row(a) for a in attempts_ if a.seq in done])
    if redact:
        for attempt in attempts_:
            if attempt.seq in done and attempt.state is EventState.DELIVERED:
                conn.execute(
                    update(events)
                    .where(events.c.id == attempt.seq)
                    .values(payload=_redacted(conn, attempt.seq))
                )
    settle_setups(conn, attempts_, done)
    release_late_followups(conn, attempts_, done)
    return [attempt.seq in done for attempt in attempts_]


def hand_back(conn: Connection, owner: str, seqs: Sequence[int] | None = None) -> int:
    """Hand rows leased by ``owner`` back unsent (all of them, or just ``seqs``), but for
    those another transaction holds a lock on: they stay leased, for a later hand-back.

    :returns: how many were handed back.
    """
    condition = and_(events.c.state == IN_FLIGHT, events.c.lease_owner == owner)
    if seqs is not None:
        if not seqs:
            return 0
        condition = and_(condition, events.c.id.in_(list(seqs)))
    return update_unlocked(conn, events, _BACK_TO_PENDING, condition, {})


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
_BACK_TO_PENDING = update(events).values(state=PENDING, lease_owner=None, lease_expires_at=None)
_EXPIRED = and_(
    events.c.state == IN_FLIGHT, events.c.lease_expires_at <= bindparam("now", type_=Double)
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
_INSERT_ATTEMPT = insert(attempts).values(
    event_seq=bindparam("a_seq", type_=Integer),
    started_at=bindparam("a_started", type_=Double),
    duration=bindparam("a_duration", type_=Double),
    status_code=bindparam("a_status", type_=Integer),
    outcome=bindparam("a_outcome", type_=Text),
    error=bindparam("a_error", type_=Text),
    response=bindparam("a_response", type_=Text),
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


def _applied_row(attempt: Attempt) -> dict[str, Any]:
    delivered = attempt.state is EventState.DELIVERED
    return {
        "b_seq": attempt.seq,
        "b_counts": 1 if attempt.counts else 0,
        "b_state": attempt.state.value,
        "b_finished": attempt.finished_at,
        "b_next": attempt.next_attempt_at,
        "b_delivered": attempt.finished_at if delivered else None,
        "b_status": attempt.status_code,
        "b_error": attempt.error,
        "b_response": attempt.response,
    }


def _attempt_row(attempt: Attempt) -> dict[str, Any]:
    return {
        "a_seq": attempt.seq,
        "a_started": attempt.started_at,
        "a_duration": attempt.duration,
        "a_status": attempt.status_code,
        "a_outcome": attempt.outcome,
        "a_error": attempt.error,
        "a_response": attempt.response,
    }


def _redacted(conn: Connection, seq: int) -> str:
    payload = json.loads(
        conn.execute(select(events.c.payload).where(events.c.id == seq)).scalar_one()
    )
    for key in ("customerName", "customerEmail", "customerAvatar"):
        payload.pop(key, None)
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
