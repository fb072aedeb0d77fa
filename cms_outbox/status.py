"""Read-only reporting: the queries behind ``status``, ``events``, ``show``, ``health``, ``stats``.

``store`` owns every statement that changes the outbox; the read-only reports live
here so that the store stays about delivery. SQLAlchemy Core against
``cms_outbox.schema`` only; every database failure surfaces as ``StorageError``.
Nothing here writes.

Times are epoch seconds in the values and ISO 8601 UTC strings (``...Z``) in their
``to_json()``. The JSON keys are a stable interface for scripts (``status --json``,
``events --json``, ``show --json``): keys are only ever added, never renamed.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, Engine, case, exists, func, select
from sqlalchemy.exc import SQLAlchemyError

from .errors import EventNotFound, StorageError
from .results import EventState
from .schema import attempts, control, events

__all__ = [
    "DURATION_BUCKETS",
    "Activity",
    "ActivityTracker",
    "AttemptRecord",
    "EventDetail",
    "EventSummary",
    "Health",
    "LastError",
    "OutboxStatus",
    "Pause",
    "Stats",
    "check_health",
    "count_due",
    "event_detail",
    "isoformat",
    "list_events",
    "outbox_status",
]

STATES = tuple(state.value for state in EventState)
PENDING = EventState.PENDING.value
IN_FLIGHT = EventState.IN_FLIGHT.value
DELIVERED = EventState.DELIVERED.value
DEAD = EventState.DEAD.value
BLOCKED = EventState.BLOCKED.value
TO_SEND = (PENDING, IN_FLIGHT)
UNFINISHED = (PENDING, IN_FLIGHT, BLOCKED)
CONTROL_ROW = "default"

# The attempt labels the flusher records (``Outcome.label``), grouped as FlushReport counts them.
DELIVERED_LABELS = ("delivered", "duplicate")
DEAD_LABELS = ("dead", "expired")
RETRIED_LABELS = ("retry", "auth", "outage")
NO_REQUEST_LABELS = ("expired",)  # dead-lettered by age without sending anything
# Seconds; an attempt is bounded by connect + read timeout (3.05 + 10 by default).
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0)


def isoformat(moment: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with milliseconds and a ``Z``; None stays None."""
    if moment is None:
        return None
    text = datetime.fromtimestamp(moment, timezone.utc).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


# -- status ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pause:
    """A delivery pause in effect: ``reason`` is ``"outage"`` or ``"auth"``."""

    reason: str
    since: float
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return _json(self, times=("since",))


@dataclass(frozen=True)
class LastError:
    """The most recent attempt that did not deliver."""

    at: float
    event_id: str | None  # None when the event has been purged since
    status_code: int | None
    outcome: str
    message: str | None

    def to_json(self) -> dict[str, Any]:
        return _json(self, times=("at",))


@dataclass(frozen=True)
class OutboxStatus:
    """What ``cms-outbox status`` shows; ``counts`` has every state, zeros included.

    ``pending_due`` counts the pending events a flusher could lease right now (due,
    and not held back by an earlier event of the same customer).
    """

    now: float
    counts: Mapping[str, int]
    pending_first_try: int
    pending_retrying: int
    pending_due: int
    oldest_pending_at: float | None
    next_attempt_at: float | None
    last_delivery_at: float | None
    last_error: LastError | None
    pause: Pause | None
    delivered_last_minute: int
    delivered_last_hour: int

    @property
    def to_send(self) -> int:
        """Events still to be sent: pending or in flight."""
        return self.counts[PENDING] + self.counts[IN_FLIGHT]

    @property
    def oldest_pending_age(self) -> float | None:
        """Seconds since the oldest pending (or in-flight) event was enqueued."""
        if self.oldest_pending_at is None:
            return None
        return max(0.0, self.now - self.oldest_pending_at)

    def to_json(self) -> dict[str, Any]:
        age = self.oldest_pending_age
        return {
            "now": isoformat(self.now),
            "counts": dict(self.counts),
            "pending_first_try": self.pending_first_try,
            "pending_retrying": self.pending_retrying,
            "pending_due": self.pending_due,
            "oldest_pending_at": isoformat(self.oldest_pending_at),
            "oldest_pending_age_seconds": None if age is None else round(age, 3),
            "next_attempt_at": isoformat(self.next_attempt_at),
            "last_delivery_at": isoformat(self.last_delivery_at),
            "last_error": None if self.last_error is None else self.last_error.to_json(),
            "pause": None if self.pause is None else self.pause.to_json(),
            "delivered_last_minute": self.delivered_last_minute,
            "delivered_last_hour": self.delivered_last_hour,
        }


def outbox_status(engine: Engine, now: float | None = None) -> OutboxStatus:
    """Counts by state, the oldest pending event, the last delivery and error, the pause.

    :raises StorageError: the database failed.
    """
    now = time.time() if now is None else now
    with _reading("reading the outbox status", engine) as conn:
        counts = dict.fromkeys(STATES, 0)
        for state, count in conn.execute(
            select(events.c.state, func.count()).group_by(events.c.state)
        ).all():
            counts[str(state)] = int(count)
        first_try, retrying, next_at = conn.execute(
            select(
                func.coalesce(func.sum(case((events.c.attempts == 0, 1), else_=0)), 0),
                func.coalesce(func.sum(case((events.c.attempts > 0, 1), else_=0)), 0),
                func.min(events.c.next_attempt_at),
            ).where(events.c.state == PENDING)
        ).one()
        oldest = conn.execute(
            select(func.min(events.c.created_at)).where(events.c.state.in_(TO_SEND))
        ).scalar()
        last_delivery, last_minute, last_hour = conn.execute(
            select(
                func.max(events.c.delivered_at),
                func.coalesce(func.sum(case((events.c.delivered_at >= now - 60, 1), else_=0)), 0),
                func.coalesce(func.sum(case((events.c.delivered_at >= now - 3600, 1), else_=0)), 0),
            ).where(events.c.state == DELIVERED)
        ).one()
        return OutboxStatus(
            now=now,
            counts=counts,
            pending_first_try=int(first_try),
            pending_retrying=int(retrying),
            pending_due=_count_due(conn, now),
            oldest_pending_at=_float(oldest),
            next_attempt_at=_float(next_at),
            last_delivery_at=_float(last_delivery),
            last_error=_last_error(conn),
            pause=_pause(conn),
            delivered_last_minute=int(last_minute),
            delivered_last_hour=int(last_hour),
        )


def count_due(engine: Engine, now: float | None = None) -> int:
    """Pending events a flusher could lease now: due and not held back by FIFO.

    :raises StorageError: the database failed.
    """
    now = time.time() if now is None else now
    with _reading("counting due events", engine) as conn:
        return _count_due(conn, now)


def _count_due(conn: Connection, now: float) -> int:
    # The lease rule of Store.lease, read-only: an earlier unfinished event of the same
    # customer holds a row back (per-customer FIFO).
    earlier = events.alias("earlier")
    held_back = exists(earlier.c.id).where(
        earlier.c.customer_external_id == events.c.customer_external_id,
        earlier.c.id < events.c.id,
        earlier.c.state.in_(UNFINISHED),
    )
    return int(
        conn.execute(
            select(func.count()).where(
                events.c.state == PENDING, events.c.next_attempt_at <= now, ~held_back
            )
        ).scalar_one()
    )


def _last_error(conn: Connection) -> LastError | None:
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
        .where(attempts.c.outcome.not_in(DELIVERED_LABELS))
        .order_by(attempts.c.started_at.desc(), attempts.c.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    return LastError(
        at=float(row.started_at) + float(row.duration),
        event_id=row.event_id,
        status_code=row.status_code,
        outcome=str(row.outcome),
        message=row.error,
    )


def _pause(conn: Connection) -> Pause | None:
    row = conn.execute(
        select(control.c.outage_since, control.c.auth_paused_since, control.c.pause_error).where(
            control.c.name == CONTROL_ROW
        )
    ).first()
    if row is None:
        return None
    if row.auth_paused_since is not None:
        return Pause("auth", float(row.auth_paused_since), row.pause_error)
    if row.outage_since is not None:
        return Pause("outage", float(row.outage_since), row.pause_error)
    return None


# -- health ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    """The verdict of ``cms-outbox health``: ``reasons`` is empty when healthy."""

    healthy: bool
    reasons: tuple[str, ...]
    status: OutboxStatus

    @property
    def summary(self) -> str:
        """One line for a probe's log."""
        if not self.healthy:
            return "unhealthy: " + "; ".join(self.reasons)
        status = self.status
        age = status.oldest_pending_age
        oldest = "" if age is None else f", oldest {format_age(age)}"
        return (
            f"ok: {status.to_send} to send{oldest}, {status.counts[BLOCKED]} blocked, "
            f"{status.counts[DEAD]} dead"
        )

    def to_json(self) -> dict[str, Any]:
        return {"healthy": self.healthy, "reasons": list(self.reasons), "summary": self.summary}


def check_health(
    status: OutboxStatus, *, max_pending_age: float | None, max_dead: int | None
) -> Health:
    """Unhealthy when the oldest pending event is older than ``max_pending_age``, when
    there are more than ``max_dead`` dead events, or while an auth pause is in effect."""
    reasons = []
    age = status.oldest_pending_age
    if max_pending_age is not None and age is not None and age > max_pending_age:
        reasons.append(
            f"the oldest pending event is {format_age(age)} old "
            f"(limit {format_age(max_pending_age)})"
        )
    dead = status.counts[DEAD]
    if max_dead is not None and dead > max_dead:
        reasons.append(f"{dead} dead events (limit {max_dead})")
    if status.pause is not None and status.pause.reason == "auth":
        reasons.append(
            f"delivery paused since {isoformat(status.pause.since)}: the service rejected "
            f"the token ({status.pause.error})"
        )
    return Health(healthy=not reasons, reasons=tuple(reasons), status=status)


def format_age(seconds: float) -> str:
    """A short human duration: ``45s``, ``3m12s``, ``2h05m``, ``4d03h``."""
    whole = int(seconds)
    if seconds < 10 and whole < 10:
        return f"{seconds:.1f}s"
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


# -- events and one event ------------------------------------------------------------------


@dataclass(frozen=True)
class EventSummary:
    """One stored event as ``events`` lists it."""

    seq: int
    event_id: str
    kind: str
    event_name: str | None
    customer_external_id: str
    click_id: str | None
    mode: str | None
    invoice_id: str | None
    state: str
    attempts: int
    created_at: float
    next_attempt_at: float | None
    last_attempt_at: float | None
    delivered_at: float | None
    last_status_code: int | None
    last_error: str | None

    def to_json(self) -> dict[str, Any]:
        value = _json(
            self, times=("created_at", "next_attempt_at", "last_attempt_at", "delivered_at")
        )
        if self.state != PENDING:
            value["next_attempt_at"] = None  # only a pending event has a next attempt
        return value


@dataclass(frozen=True)
class AttemptRecord:
    """One recorded delivery attempt."""

    started_at: float
    duration: float
    status_code: int | None
    outcome: str
    error: str | None
    response: str | None

    def to_json(self) -> dict[str, Any]:
        value = _json(self, times=("started_at",))
        del value["duration"]
        value["duration_seconds"] = round(self.duration, 6)
        value["response"] = _parse_json(self.response)
        return value


@dataclass(frozen=True)
class EventDetail:
    """One event with its wire payload and its full attempt history, oldest first."""

    summary: EventSummary
    payload: Any
    last_response: str | None
    attempts: Sequence[AttemptRecord] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.summary.to_json(),
            "payload": self.payload,
            "last_response": _parse_json(self.last_response),
            "attempt_history": [attempt.to_json() for attempt in self.attempts],
        }


_SUMMARY_COLUMNS = (
    events.c.id, events.c.event_id, events.c.kind, events.c.payload,
    events.c.customer_external_id, events.c.click_id, events.c.mode, events.c.invoice_id,
    events.c.state, events.c.attempts, events.c.created_at, events.c.next_attempt_at,
    events.c.last_attempt_at, events.c.delivered_at, events.c.last_status_code,
    events.c.last_error,
)  # fmt: skip


def list_events(
    engine: Engine,
    *,
    state: str | None = None,
    customer: str | None = None,
    kind: str | None = None,
    limit: int = 50,
    oldest_first: bool = False,
) -> list[EventSummary]:
    """Stored events, newest first (or oldest first), filtered by state, customer and kind.

    :raises StorageError: the database failed.
    """
    query = select(*_SUMMARY_COLUMNS)
    if state is not None:
        query = query.where(events.c.state == state)
    if customer is not None:
        query = query.where(events.c.customer_external_id == customer)
    if kind is not None:
        query = query.where(events.c.kind == kind)
    order = events.c.id if oldest_first else events.c.id.desc()
    with _reading("listing events", engine) as conn:
        rows = conn.execute(query.order_by(order).limit(limit)).all()
    return [_summary(row._mapping) for row in rows]


def event_detail(engine: Engine, event_id: str) -> EventDetail:
    """One event, its payload and its attempts (joined by ``event_seq``).

    :raises EventNotFound: no such event in the outbox.
    :raises StorageError: the database failed.
    """
    with _reading("reading an event", engine) as conn:
        row = conn.execute(
            select(*_SUMMARY_COLUMNS, events.c.last_response).where(events.c.event_id == event_id)
        ).first()
        if row is None:
            raise EventNotFound(f"event {event_id!r} is not in the outbox")
        history = conn.execute(
            select(
                attempts.c.started_at, attempts.c.duration, attempts.c.status_code,
                attempts.c.outcome, attempts.c.error, attempts.c.response,
            ).where(attempts.c.event_seq == row.id).order_by(attempts.c.id)
        ).all()  # fmt: skip
    return EventDetail(
        summary=_summary(row._mapping),
        payload=_parse_json(row.payload),
        last_response=row.last_response,
        attempts=tuple(
            AttemptRecord(
                started_at=float(item.started_at),
                duration=float(item.duration),
                status_code=item.status_code,
                outcome=str(item.outcome),
                error=item.error,
                response=item.response,
            )
            for item in history
        ),
    )


def _summary(row: Mapping[Any, Any]) -> EventSummary:
    payload = _parse_json(row["payload"])
    name = payload.get("eventName") if isinstance(payload, dict) else None
    return EventSummary(
        seq=int(row["id"]),
        event_id=row["event_id"],
        kind=row["kind"],
        event_name=name if isinstance(name, str) else None,
        customer_external_id=row["customer_external_id"],
        click_id=row["click_id"],
        mode=row["mode"],
        invoice_id=row["invoice_id"],
        state=row["state"],
        attempts=int(row["attempts"]),
        created_at=float(row["created_at"]),
        next_attempt_at=_float(row["next_attempt_at"]),
        last_attempt_at=_float(row["last_attempt_at"]),
        delivered_at=_float(row["delivered_at"]),
        last_status_code=row["last_status_code"],
        last_error=row["last_error"],
    )


# -- activity counters for stats() and metrics -----------------------------------------------


@dataclass(frozen=True)
class Stats:
    """What ``CMSClient.stats()`` reports.

    ``enqueued``/``delivered``/``retried``/``dead`` count what happened in the outbox
    (every process that writes to it, every flusher of it) since ``since``;
    ``pending`` (pending or in flight) and ``oldest_pending_age`` (seconds, None when
    nothing is pending) describe it now.
    """

    since: float
    enqueued: int
    delivered: int
    retried: int
    dead: int
    pending: int
    oldest_pending_age: float | None

    def to_json(self) -> dict[str, Any]:
        value = _json(self, times=("since",))
        value["oldest_pending_age_seconds"] = value.pop("oldest_pending_age")
        return value


@dataclass(frozen=True)
class Activity:
    """Monotonic counters since ``since`` plus the outbox as it is now (for metrics).

    ``duration_buckets`` holds cumulative request counts per ``DURATION_BUCKETS``
    bound; ``requests`` and ``duration_sum`` cover every HTTP attempt.
    """

    since: float
    enqueued: int
    delivered: int
    retried: int
    dead: int
    requests: int
    duration_sum: float
    duration_buckets: tuple[int, ...]
    counts: Mapping[str, int]
    oldest_pending_age: float | None

    @property
    def pending(self) -> int:
        return self.counts[PENDING] + self.counts[IN_FLIGHT]

    def stats(self) -> Stats:
        return Stats(
            since=self.since,
            enqueued=self.enqueued,
            delivered=self.delivered,
            retried=self.retried,
            dead=self.dead,
            pending=self.pending,
            oldest_pending_age=self.oldest_pending_age,
        )


_ZERO: tuple[float, ...] = (0.0,) * (6 + len(DURATION_BUCKETS))


class ActivityTracker:
    """Counts enqueues and attempt outcomes in the outbox from the database, monotonically.

    Rows commit out of order and purges delete old ones, so counting "everything
    since ``since``" on every read would both miss late commits and shrink after a
    purge. Instead, a window ending ``settle`` seconds ago (longer than any attempt
    takes to be recorded) is folded into fixed totals, and only the recent window is
    counted again on each read. Purges only delete rows far older than that window.
    """

    def __init__(self, engine: Engine, *, settle: float = 60.0, since: float | None = None) -> None:
        self.engine = engine
        self.settle = settle
        self.since = time.time() if since is None else since
        self._checkpoint = self.since
        self._folded: tuple[float, ...] = _ZERO
        self._lock = threading.Lock()

    def snapshot(self, now: float | None = None) -> Activity:
        """The counters now.

        :raises StorageError: the database failed.
        """
        now = time.time() if now is None else now
        with self._lock, _reading("reading outbox activity", self.engine) as conn:
            fold_to = now - self.settle
            if fold_to > self._checkpoint:
                settled = _activity_between(conn, self._checkpoint, fold_to)
                self._folded = tuple(a + b for a, b in zip(self._folded, settled))
                self._checkpoint = fold_to
            recent = _activity_between(conn, self._checkpoint, None)
            totals = [a + b for a, b in zip(self._folded, recent)]
            counts = dict.fromkeys(STATES, 0)
            for state, count in conn.execute(
                select(events.c.state, func.count()).group_by(events.c.state)
            ).all():
                counts[str(state)] = int(count)
            oldest = _float(
                conn.execute(
                    select(func.min(events.c.created_at)).where(events.c.state.in_(TO_SEND))
                ).scalar()
            )
        enqueued, delivered, retried, dead, requests, duration_sum = totals[:6]
        return Activity(
            since=self.since,
            enqueued=int(enqueued),
            delivered=int(delivered),
            retried=int(retried),
            dead=int(dead),
            requests=int(requests),
            duration_sum=duration_sum,
            duration_buckets=tuple(int(value) for value in totals[6:]),
            counts=counts,
            oldest_pending_age=None if oldest is None else max(0.0, now - oldest),
        )

    def stats(self, now: float | None = None) -> Stats:
        return self.snapshot(now).stats()


def _activity_between(conn: Connection, start: float, end: float | None) -> tuple[float, ...]:
    """Enqueues and attempt outcomes with their time in ``[start, end)``, as one vector."""

    def count_if(condition: Any) -> Any:
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    created = events.c.created_at >= start
    if end is not None:
        created = created & (events.c.created_at < end)
    enqueued = conn.execute(select(func.count()).where(created)).scalar_one()
    started = attempts.c.started_at >= start
    if end is not None:
        started = started & (attempts.c.started_at < end)
    sent = attempts.c.outcome.not_in(NO_REQUEST_LABELS)
    row = conn.execute(
        select(
            count_if(attempts.c.outcome.in_(DELIVERED_LABELS)),
            count_if(attempts.c.outcome.in_(RETRIED_LABELS)),
            count_if(attempts.c.outcome.in_(DEAD_LABELS)),
            count_if(sent),
            func.coalesce(func.sum(case((sent, attempts.c.duration), else_=0.0)), 0.0),
            *(count_if(sent & (attempts.c.duration <= bound)) for bound in DURATION_BUCKETS),
        ).where(started)
    ).one()
    return (float(enqueued), *(float(value) for value in row))


# -- helpers -------------------------------------------------------------------------------


@contextmanager
def _reading(action: str, engine: Engine) -> Iterator[Connection]:
    try:
        with engine.connect() as conn:
            yield conn
    except (SQLAlchemyError, sqlite3.Error) as exc:
        raise StorageError(f"{action} failed: {exc}") from exc


def _json(value: Any, *, times: Sequence[str]) -> dict[str, Any]:
    """A flat dataclass as a JSON-ready dict, with its ``times`` as ISO 8601 strings."""
    return {
        item.name: isoformat(getattr(value, item.name))
        if item.name in times
        else getattr(value, item.name)
        for item in fields(value)
    }


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _parse_json(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text
