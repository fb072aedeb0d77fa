"""Values handed back to callers: event states, track results, flush reports."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any

__all__ = [
    "EventState", "FlushReport", "TrackResult", "parse_body", "result_of_row", "stored_result",
]  # fmt: skip


class EventState(str, enum.Enum):
    """An event's state; the values are the words stored in the database and shown by the CLI."""

    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    DELIVERED = "delivered"
    DEAD = "dead"
    BLOCKED = "blocked"

    def __str__(self) -> str:
        return self.value


# The official SDK returns ``{"status": bool, "data": str}``; these are its keys.
SDK_KEYS = ("status", "data")


@dataclass(frozen=True)
class TrackResult(Mapping[str, Any]):
    """What ``track_lead``/``track_sale``/``result`` report about one event.

    ``success`` is true while the event is stored or delivered and not dead.
    ``status_code`` and ``data`` are the service's, once it answered.

    It is also a read-only mapping with the official SDK's keys, so code written
    against the SDK's dict keeps working: ``result["status"]`` is ``success`` and
    ``result["data"]`` the ``data`` string of the service's answer (``None`` until
    it answered).
    """

    success: bool
    event_id: str
    state: EventState
    error: str | None = None
    status_code: int | None = None
    data: Any | None = None

    def __getitem__(self, key: str) -> Any:
        if key == "status":
            return self.success
        if key == "data":
            if isinstance(self.data, dict) and "data" in self.data:
                return self.data["data"]
            return self.data
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(SDK_KEYS)

    def __len__(self) -> int:
        return len(SDK_KEYS)


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


_GIVEN = ("success", "event_id", "state")  # what stored_result sets; the rest default


def skips_init_soundly(cls: type, given: tuple[str, ...] = _GIVEN) -> bool:
    """Whether setting the ``__dict__`` of the frozen dataclass ``cls`` to its ``given``
    fields and every other field's default builds what its ``__init__`` would: no
    ``__slots__``, no ``__post_init__``, and a plain default for every field not given."""
    return (
        "__slots__" not in vars(cls)
        and not hasattr(cls, "__post_init__")
        and all(f.init and (f.name in given or f.default is not MISSING) for f in fields(cls))
        and set(given) <= {f.name for f in fields(cls)}
    )


# stored_result skips the frozen dataclass's __init__; it may only while skips_init_soundly
# holds, or its results would silently differ from those of TrackResult(...).
if not skips_init_soundly(TrackResult):
    raise TypeError("TrackResult changed: stored_result must build it with its __init__")
# Every field in declaration order, with its default: stored_result replaces the given.
_STORED = {f.name: f.default for f in fields(TrackResult)}
_new = object.__new__
_set = object.__setattr__


def stored_result(event_id: str, state: EventState) -> TrackResult:
    """``TrackResult(success=True, event_id=event_id, state=state)``, the result of every
    enqueue, at under half the cost of the frozen dataclass's ``__init__``."""
    result = _new(TrackResult)
    values = _STORED.copy()
    values["success"] = True
    values["event_id"] = event_id
    values["state"] = state
    _set(result, "__dict__", values)
    return result


def result_of_row(row: Mapping[str, Any]) -> TrackResult:
    """A ``TrackResult`` from a stored event row."""
    state = EventState(row["state"])
    return TrackResult(
        success=state is not EventState.DEAD,
        event_id=row["event_id"],
        state=state,
        error=row["last_error"] if state is not EventState.DELIVERED else None,
        status_code=row["last_status_code"],
        data=parse_body(row["last_response"]),
    )


def parse_body(body: str | None) -> Any:
    """A stored or received body: its JSON value, or the text when it is not JSON."""
    if body is None:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body
