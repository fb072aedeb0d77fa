"""Follow-ups held and released as their governing setup dies or is delivered.

A follow-up (no ``clickId``) is governed by the latest deferred setup of its customer
enqueued before it. A dead setup holds the follow-ups it governs (``blocked``); a
delivered one makes pending again those answered 404 before it arrived, and a 404
recorded after it arrived makes its follow-up pending again. Statements only, inside
the flusher's recording transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy import (
    ColumnElement,
    Connection,
    Double,
    Integer,
    Text,
    and_,
    bindparam,
    func,
    select,
    update,
)

from .dialect import update_by_key
from .prepared import fetch_all
from .queries import BLOCKED, DEAD, DELIVERED, PENDING
from .results import EventState
from .schema import events

if TYPE_CHECKING:
    from .leasing import Attempt

__all__ = ["hold_followups", "release_late_followups", "settle_setups"]


def hold_followups(conn: Connection, customer: str, seq: int) -> None:
    """Block the follow-ups of ``customer`` governed by the same dead setup as ``seq``."""
    condition = and_(_governed(conn, customer, seq), events.c.state.in_((PENDING, BLOCKED)))
    # By key on MySQL, as the release: a scan through the state index would lock
    # entries of rows other flushers have just changed, and two such scans deadlock (1213).
    update_by_key(conn, events, _HOLD, condition, {})


def _governed(conn: Connection, customer: str, seq: int) -> ColumnElement[bool]:
    """The follow-ups of ``customer`` from ``seq`` on, up to its next deferred setup: those
    governed by the setup that governs ``seq`` (or that is ``seq``: a setup has a click id,
    so it is never among them)."""
    bound = conn.execute(_NEXT_SETUP, {"customer": customer, "seq": seq}).scalar()
    condition = and_(
        events.c.customer_external_id == customer,
        events.c.click_id.is_(None),
        events.c.id >= seq,
    )
    return condition if bound is None else and_(condition, events.c.id < bound)


def settle_setups(conn: Connection, attempts_: Sequence[Attempt], done: set[int]) -> None:
    """A setup that died holds the follow-ups it governs; one delivered releases those
    answered 404 before it arrived (its transaction committed after they were sent)."""
    final = {a.seq: a for a in attempts_ if a.seq in done and a.state in _FINAL}
    if not final:
        return
    for seq, customer in fetch_all(conn, _SETUPS_AMONG, {"seqs": list(final)}):
        attempt = final[seq]
        if attempt.state is EventState.DEAD:
            hold_followups(conn, customer, seq)
            continue
        condition = and_(
            _governed(conn, customer, seq),
            events.c.state == DEAD,
            events.c.last_status_code == 404,
        )
        release = update(events).values(state=PENDING, next_attempt_at=attempt.finished_at)
        update_by_key(conn, events, release, condition, {})


def release_late_followups(conn: Connection, attempts_: Sequence[Attempt], done: set[int]) -> None:
    """A follow-up answered 404 whose governing setup was delivered since its request
    started is pending again: that setup's release, by another flusher at the same time,
    found it still in flight. The setup is read with a lock, which waits for that
    flusher's transaction: one of the two always sees the other's outcome."""
    lost = {a.seq: a for a in attempts_ if a.seq in done and a.state is EventState.DEAD
            and a.status_code == 404}  # fmt: skip
    if not lost:
        return
    for seq, customer in fetch_all(conn, _FOLLOW_UPS_AMONG, {"seqs": list(lost)}):
        setup = conn.execute(_GOVERNOR, {"customer": customer, "seq": seq}).first()
        attempt = lost[seq]
        if (
            setup is not None
            and setup.state == DELIVERED
            and setup.delivered_at >= attempt.started_at
        ):
            conn.execute(_RELEASE_ONE, {"seq": seq, "due": attempt.finished_at})


_NEXT_SETUP = select(func.min(events.c.id)).where(
    events.c.customer_external_id == bindparam("customer", type_=Text),
    events.c.mode == "deferred",
    events.c.id > bindparam("seq", type_=Integer),
)
_FINAL = (EventState.DELIVERED, EventState.DEAD)
_SETUPS_AMONG = select(events.c.id, events.c.customer_external_id).where(
    events.c.id.in_(bindparam("seqs", expanding=True)), events.c.mode == "deferred"
)
_FOLLOW_UPS_AMONG = select(events.c.id, events.c.customer_external_id).where(
    events.c.id.in_(bindparam("seqs", expanding=True)), events.c.click_id.is_(None)
)
_GOVERNOR = (  # a follow-up's governing setup, locked: see release_late_followups
    select(events.c.state, events.c.delivered_at)
    .where(
        events.c.customer_external_id == bindparam("customer", type_=Text),
        events.c.mode == "deferred",
        events.c.id < bindparam("seq", type_=Integer),
    )
    .order_by(events.c.id.desc())
    .limit(1)
    .with_for_update(read=True)
)
_RELEASE_ONE = (
    update(events)
    .where(events.c.id == bindparam("seq", type_=Integer), events.c.state == DEAD)
    .values(state=PENDING, next_attempt_at=bindparam("due", type_=Double))
)
_HOLD = update(events).values(state=BLOCKED, lease_owner=None, lease_expires_at=None)
