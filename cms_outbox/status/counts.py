"""How many events are where: the answer behind ``cms-outbox status`` and ``health``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine

from .. import queries
from ..formatting import isoformat, json_fields
from ..heartbeat import STALE_AFTER
from ..queries import IN_FLIGHT, PENDING
from ..queries.base import as_float
from .pacing import Pacing, pacing_of

__all__ = ["FlusherBeat", "LastError", "OutboxStatus", "Pause", "count_due", "outbox_status"]


@dataclass(frozen=True)
class Pause:
    """A delivery pause in effect: ``reason`` is ``"outage"`` or ``"auth"``."""

    reason: str
    since: float
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return json_fields(self, times=("since",))


@dataclass(frozen=True)
class LastError:
    """The most recent attempt that did not deliver."""

    at: float
    event_id: str | None  # None when the event has been purged since
    status_code: int | None
    outcome: str
    message: str | None

    def to_json(self) -> dict[str, Any]:
        return json_fields(self, times=("at",))


@dataclass(frozen=True)
class FlusherBeat:
    """A flusher's heartbeat: ``kind`` is ``"client"`` (in-process) or ``"daemon"``."""

    kind: str
    host: str
    pid: int
    version: str
    started_at: float
    beat_at: float

    def to_json(self) -> dict[str, Any]:
        return json_fields(self, times=("started_at", "beat_at"))


@dataclass(frozen=True)
class OutboxStatus:
    """What ``cms-outbox status`` shows; ``counts`` has every state, zeros included.

    ``pending_due`` counts the pending events a flusher could lease right now (due,
    and not held back by an earlier event of the same customer); ``pending_held`` those
    held back. ``next_attempt_at`` is when the next pending event not held back is due
    (a held one waits for the event ahead of it, whatever its own time says). ``new_dead`` and
    ``new_blocked`` count those that went wrong since ``acknowledged_at``, the last
    operator retry or purge (None: never; then every one is new).
    """

    now: float
    counts: Mapping[str, int]
    pending_first_try: int
    pending_retrying: int
    pending_due: int
    pending_held: int
    oldest_pending_at: float | None
    next_attempt_at: float | None
    last_delivery_at: float | None
    last_error: LastError | None
    pause: Pause | None
    delivered_last_minute: int
    delivered_last_hour: int
    acknowledged_at: float | None
    new_dead: int
    new_blocked: int
    pacing: Pacing | None = None  # None until a paced flusher has run
    flushers: tuple[FlusherBeat, ...] = ()  # every heartbeat row, stale ones included

    @property
    def live_flushers(self) -> tuple[FlusherBeat, ...]:
        """Flushers that beat within ``heartbeat.STALE_AFTER``: the ones delivering now."""
        return tuple(f for f in self.flushers if self.now - f.beat_at <= STALE_AFTER)

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
            "pending_held": self.pending_held,
            "oldest_pending_at": isoformat(self.oldest_pending_at),
            "oldest_pending_age_seconds": None if age is None else round(age, 3),
            "next_attempt_at": isoformat(self.next_attempt_at),
            "last_delivery_at": isoformat(self.last_delivery_at),
            "last_error": None if self.last_error is None else self.last_error.to_json(),
            "pause": None if self.pause is None else self.pause.to_json(),
            "delivered_last_minute": self.delivered_last_minute,
            "delivered_last_hour": self.delivered_last_hour,
            "acknowledged_at": isoformat(self.acknowledged_at),
            "new_dead": self.new_dead,
            "new_blocked": self.new_blocked,
            "pacing": None if self.pacing is None else self.pacing.to_json(),
            "flusher_running": bool(self.live_flushers),
            "flushers": [flusher.to_json() for flusher in self.live_flushers],
        }


def outbox_status(engine: Engine, now: float | None = None) -> OutboxStatus:
    """Counts by state, the oldest pending event, the last delivery and error, the pause.

    Read in one read transaction (one snapshot), which never waits for a writer.

    :raises StorageError: the database failed.
    """
    now = time.time() if now is None else now
    with queries.reading(engine, "reading the outbox status") as conn:
        first_try, retrying = queries.pending_summary(conn)
        due, held, next_at = queries.pending_outlook(conn, now)
        last_delivery, last_minute, last_hour = queries.deliveries(conn, now)
        control = queries.control_row(conn)
        acknowledged_at = None if control is None else as_float(control["acknowledged_at"])
        new_dead, new_blocked = queries.unacknowledged(conn, acknowledged_at)
        return OutboxStatus(
            now=now,
            counts=queries.counts_by_state(conn),
            pending_first_try=first_try,
            pending_retrying=retrying,
            pending_due=due,
            pending_held=held,
            oldest_pending_at=queries.oldest_unsent_at(conn),
            next_attempt_at=next_at,
            last_delivery_at=last_delivery,
            last_error=_last_error(conn),
            pause=_pause(control),
            delivered_last_minute=last_minute,
            delivered_last_hour=last_hour,
            acknowledged_at=acknowledged_at,
            new_dead=new_dead,
            new_blocked=new_blocked,
            pacing=pacing_of(control, now),
            flushers=tuple(_beat(row) for row in queries.flusher_rows(conn)),
        )


def _beat(row: Mapping[str, Any]) -> FlusherBeat:
    return FlusherBeat(
        kind=str(row["kind"]), host=str(row["host"]), pid=int(row["pid"]),
        version=str(row["version"]), started_at=float(row["started_at"]),
        beat_at=float(row["beat_at"]),
    )  # fmt: skip


def count_due(engine: Engine, now: float | None = None) -> int:
    """Pending events a flusher could lease now: due and not held back by FIFO.

    :raises StorageError: the database failed.
    """
    now = time.time() if now is None else now
    with queries.reading(engine, "counting due events") as conn:
        return queries.count_due(conn, now)


def _last_error(conn: Connection) -> LastError | None:
    row = queries.last_failed_attempt(conn)
    if row is None:
        return None
    return LastError(
        at=float(row["started_at"]) + float(row["duration"]),
        event_id=row["event_id"],
        status_code=row["status_code"],
        outcome=str(row["outcome"]),
        message=row["error"],
    )


def _pause(row: Mapping[str, Any] | None) -> Pause | None:
    if row is None:
        return None
    if row["auth_paused_since"] is not None:
        return Pause("auth", float(row["auth_paused_since"]), row["pause_error"])
    if row["outage_since"] is not None:
        return Pause("outage", float(row["outage_since"]), row["pause_error"])
    return None
