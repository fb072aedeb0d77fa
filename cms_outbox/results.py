"""Values handed back to callers: event states, track results, flush reports."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

__all__ = ["EventState", "FlushReport", "TrackResult"]


class EventState(str, enum.Enum):
    """An event's state; the values are the words stored in the database and shown by the CLI."""

    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    DELIVERED = "delivered"
    DEAD = "dead"
    BLOCKED = "blocked"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class TrackResult:
    """What ``track_lead``/``track_sale``/``result`` report about one event.

    ``success`` is true while the event is stored or delivered and not dead.
    ``status_code`` and ``data`` are the service's, once it answered.
    """

    success: bool
    event_id: str
    state: EventState
    error: str | None = None
    status_code: int | None = None
    data: Any | None = None


@dataclass(frozen=True)
class FlushReport:
    """What one ``flush()`` did: outcomes of the attempts made, and what is left.

    ``pending`` counts events still to be sent (pending or in flight), ``blocked`` the
    follow-ups held behind a dead deferred setup, ``paused`` is ``"outage"`` or
    ``"auth"`` while delivery is paused.
    """

    delivered: int = 0
    retried: int = 0
    dead: int = 0
    pending: int = 0
    blocked: int = 0
    paused: str | None = None

    def __add__(self, later: FlushReport) -> FlushReport:
        """Two passes together: outcomes add up, what is left is the later pass's."""
        return FlushReport(
            delivered=self.delivered + later.delivered,
            retried=self.retried + later.retried,
            dead=self.dead + later.dead,
            pending=later.pending,
            blocked=later.blocked,
            paused=later.paused,
        )
