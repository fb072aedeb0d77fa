"""What is stored: the events ``cms-outbox events`` lists and the one event ``show`` shows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from .. import queries
from ..errors import EventNotFound, ValidationError
from ..formatting import json_fields
from ..queries import BLOCKED, PENDING
from ..queries.base import as_float, event_name_of, parse_json

__all__ = [
    "AttemptRecord",
    "EventDetail",
    "EventSummary",
    "WaitedOn",
    "event_detail",
    "list_events",
    "resolve_event_id",
]

# How many candidates an ambiguous prefix lists.
CANDIDATES = 10


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
        value = json_fields(
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
        value = json_fields(self, times=("started_at",))
        del value["duration"]
        value["duration_seconds"] = round(self.duration, 6)
        value["response"] = parse_json(self.response)
        return value


@dataclass(frozen=True)
class WaitedOn:
    """The event another one waits for: ``reason`` is ``"deferred setup"`` (a blocked
    follow-up's) or ``"earlier event"`` (per-customer order)."""

    event_id: str
    reason: str
    kind: str
    state: str
    last_status_code: int | None
    last_error: str | None

    def to_json(self) -> dict[str, Any]:
        return json_fields(self, times=())


@dataclass(frozen=True)
class EventDetail:
    """One event with its wire payload and its full attempt history, oldest first."""

    summary: EventSummary
    payload: Any
    last_response: str | None
    attempts: Sequence[AttemptRecord] = field(default_factory=tuple)
    waits_on: WaitedOn | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            **self.summary.to_json(),
            "payload": self.payload,
            "last_response": parse_json(self.last_response),
            "attempt_history": [attempt.to_json() for attempt in self.attempts],
            "waits_on": None if self.waits_on is None else self.waits_on.to_json(),
        }


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
    with queries.reading(engine, "listing events") as conn:
        rows = queries.event_rows(
            conn, state=state, customer=customer, kind=kind, limit=limit,
            oldest_first=oldest_first,
        )  # fmt: skip
    return [_summary(row) for row in rows]


def event_detail(engine: Engine, event_id: str) -> EventDetail:
    """One event, its payload and its attempts (joined by ``event_seq``), in one snapshot.

    :raises EventNotFound: no such event in the outbox.
    :raises StorageError: the database failed.
    """
    with queries.reading(engine, "reading an event") as conn:
        row = queries.event_row(conn, event_id)
        if row is None:
            raise EventNotFound(f"event {event_id!r} is not in the outbox")
        history = queries.attempt_rows(conn, row["id"])
        waited = queries.waits_on(conn, row)
    return EventDetail(
        summary=_summary(row),
        payload=parse_json(row["payload"]),
        last_response=row["last_response"],
        attempts=tuple(
            AttemptRecord(
                started_at=float(item["started_at"]),
                duration=float(item["duration"]),
                status_code=item["status_code"],
                outcome=str(item["outcome"]),
                error=item["error"],
                response=item["response"],
            )
            for item in history
        ),
        waits_on=None if waited is None else _waited_on(row, waited),
    )


def _waited_on(row: Mapping[str, Any], waited: Mapping[str, Any]) -> WaitedOn:
    return WaitedOn(
        event_id=waited["event_id"],
        reason="deferred setup" if row["state"] == BLOCKED else "earlier event",
        kind=waited["kind"],
        state=waited["state"],
        last_status_code=waited["last_status_code"],
        last_error=waited["last_error"],
    )


def resolve_event_id(engine: Engine, text: str) -> str:
    """The one stored event id that is ``text`` or starts with it, as git takes short ids.

    :raises EventNotFound: no stored event id is or starts with ``text``.
    :raises ValidationError: ``text`` is empty, or the prefix of several event ids (the
        message lists them).
    :raises StorageError: the database failed.
    """
    if not text:
        raise ValidationError("event_id", "an event id or a prefix of one is required")
    with queries.reading(engine, "looking up an event id") as conn:
        if queries.event_row(conn, text) is not None:
            return text
        found = queries.event_ids_starting_with(conn, text, CANDIDATES + 1)
        if not found and text.lower() != text:
            found = queries.event_ids_starting_with(conn, text.lower(), CANDIDATES + 1)
    if not found:
        raise EventNotFound(f"event {text!r} is not in the outbox")
    if len(found) > 1:
        listed = ", ".join(found[:CANDIDATES]) + (", ..." if len(found) > CANDIDATES else "")
        raise ValidationError(
            "event_id",
            f"{text!r} is the start of more than one event id ({listed}): give more of it",
        )
    return found[0]


def _summary(row: Mapping[str, Any]) -> EventSummary:
    return EventSummary(
        seq=int(row["id"]),
        event_id=row["event_id"],
        kind=row["kind"],
        event_name=event_name_of(row["payload"]),
        customer_external_id=row["customer_external_id"],
        click_id=row["click_id"],
        mode=row["mode"],
        invoice_id=row["invoice_id"],
        state=row["state"],
        attempts=int(row["attempts"]),
        created_at=float(row["created_at"]),
        next_attempt_at=as_float(row["next_attempt_at"]),
        last_attempt_at=as_float(row["last_attempt_at"]),
        delivered_at=as_float(row["delivered_at"]),
        last_status_code=row["last_status_code"],
        last_error=row["last_error"],
    )
