"""The words every read query shares, and the read transaction they run in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, case, func

from ..database import READ_ONLY
from ..driver_errors import storage_errors
from ..fork_gate import guarding
from ..results import EventState
from ..schema import events

__all__ = [
    "BLOCKED",
    "CONTROL_ROW",
    "DEAD",
    "DEAD_OUTCOMES",
    "DELIVERED",
    "DELIVERED_OUTCOMES",
    "IN_FLIGHT",
    "NO_REQUEST_OUTCOMES",
    "PAUSED_OUTCOMES",
    "PENDING",
    "RETRIED_OUTCOMES",
    "STATES",
    "SUMMARY_COLUMNS",
    "TO_SEND",
    "UNFINISHED",
    "as_float",
    "count_if",
    "event_name_of",
    "parse_json",
    "reading",
]

STATES = tuple(state.value for state in EventState)
PENDING = EventState.PENDING.value
IN_FLIGHT = EventState.IN_FLIGHT.value
DELIVERED = EventState.DELIVERED.value
DEAD = EventState.DEAD.value
BLOCKED = EventState.BLOCKED.value
TO_SEND = (PENDING, IN_FLIGHT)  # still to be sent
UNFINISHED = (PENDING, IN_FLIGHT, BLOCKED)  # holds a customer's later events back (FIFO)
CONTROL_ROW = "default"

# The attempt outcomes the flusher records (``Attempt.outcome``), grouped as FlushReport counts.
DELIVERED_OUTCOMES = ("delivered", "duplicate")
DEAD_OUTCOMES = ("dead", "expired")
RETRIED_OUTCOMES = ("retry", "rate_limited")
# A pause (a refused token, no answer at all) hands the event back unchanged: not a retry.
PAUSED_OUTCOMES = ("auth", "outage")
NO_REQUEST_OUTCOMES = ("expired",)  # dead-lettered by age without sending anything

# What ``events`` lists of each row (the payload for the event name; no last response).
SUMMARY_COLUMNS = (
    events.c.id, events.c.event_id, events.c.kind, events.c.payload,
    events.c.customer_external_id, events.c.click_id, events.c.mode, events.c.invoice_id,
    events.c.state, events.c.attempts, events.c.created_at, events.c.next_attempt_at,
    events.c.last_attempt_at, events.c.delivered_at, events.c.last_status_code,
    events.c.last_error,
)  # fmt: skip


@contextmanager
def reading(engine: Engine, action: str) -> Iterator[Connection]:
    """A connection in a read transaction that never waits for a writer.

    :param action: what the caller is doing, for the ``StorageError`` message.
    :raises StorageError: the database failed.
    """
    with guarding(engine), storage_errors(action), engine.connect() as conn:
        conn.execution_options(**{READ_ONLY: True})
        yield conn


def count_if(condition: Any) -> Any:
    """How many rows meet ``condition``, as one column of an aggregate query."""
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def as_float(value: Any) -> float | None:
    """A column's number as a float; NULL stays None."""
    return None if value is None else float(value)


def parse_json(text: str | None) -> Any:
    """Stored JSON text as a value; text that is not JSON stays text."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def event_name_of(payload: str) -> str | None:
    """The ``eventName`` of a stored payload, if it has one."""
    value = parse_json(payload)
    name = value.get("eventName") if isinstance(value, dict) else None
    return name if isinstance(name, str) else None
