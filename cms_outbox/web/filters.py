"""The events page's filter: parsed from a query string, validated, and turned back into one.

The query string *is* the filter, so every filtered view has a URL to share. Bad
input raises ``ValidationError`` naming the field; the page shows it and lists nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlencode

from sqlalchemy import ColumnElement, LargeBinary, and_, cast, func, true

from ..errors import ValidationError
from ..results import EventState
from ..schema import events

__all__ = ["STATES", "EventFilter", "parse_time"]

STATES = tuple(state.value for state in EventState)
# The fields a filter takes, in the order of the form and of the URLs built from it.
FIELDS = ("state", "customer", "event_name", "invoice", "status_code", "min_attempts",
          "since", "until")  # fmt: skip
_TIME_FORMATS = ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d")


@dataclass(frozen=True)
class EventFilter:
    """Which events to list; every field is optional and they combine with AND.

    ``since``/``until`` bound ``created_at`` (epoch seconds, ``until`` exclusive).
    """

    state: str | None = None
    customer: str | None = None
    event_name: str | None = None
    invoice: str | None = None
    status_code: int | None = None
    min_attempts: int | None = None
    since: float | None = None
    until: float | None = None

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> EventFilter:
        """The filter in ``params`` (a query string's values); blank fields are unset.

        :raises ValidationError: a value that is not a state, a number or a UTC time.
        """
        raw = {name: (params.get(name) or "").strip() or None for name in FIELDS}
        state = raw["state"]
        if state is not None and state not in STATES:
            raise ValidationError("state", f"state must be one of {', '.join(STATES)}")
        since = parse_time("since", raw["since"])
        until = parse_time("until", raw["until"])
        if since is not None and until is not None and until <= since:
            raise ValidationError("until", "until must be later than since")
        return cls(
            state=state,
            customer=raw["customer"],
            event_name=raw["event_name"],
            invoice=raw["invoice"],
            status_code=_integer("status_code", raw["status_code"], 100, 599),
            min_attempts=_integer("min_attempts", raw["min_attempts"], 0, 1_000_000),
            since=since,
            until=until,
        )

    @property
    def needs_scan(self) -> bool:
        """True when no index narrows the rows: only unindexed fields, or only a busy state.

        Such a filter is searched one window of sequence ids per page (``SCAN_WINDOW``),
        so that a rare event name cannot make a page read the whole table.
        """
        narrowed = (
            self.customer is not None
            or self.invoice is not None
            or self.since is not None
            or self.until is not None
            or (self.state is not None and self.state != EventState.DELIVERED.value)
        )
        unindexed = (
            self.event_name is not None
            or self.status_code is not None
            or self.min_attempts is not None
        )
        return unindexed and not narrowed

    def values(self) -> dict[str, str]:
        """The filter as form values (times as ``YYYY-MM-DDTHH:MM`` UTC), unset ones left out."""
        values: dict[str, str] = {}
        for name in FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            values[name] = format_time(value) if name in ("since", "until") else str(value)
        return values

    def query_string(self, **extra: object) -> str:
        """This filter's URL query, plus ``extra`` parameters (None ones left out)."""
        params = {**self.values(), **{k: str(v) for k, v in extra.items() if v is not None}}
        return urlencode(params)

    def condition(self, dialect: str) -> ColumnElement[bool]:
        """The filter as a WHERE clause over ``cms_outbox_events`` for ``dialect``."""
        clauses: list[ColumnElement[bool]] = []
        if self.state is not None:
            clauses.append(events.c.state == self.state)
        if self.customer is not None:
            clauses.append(events.c.customer_external_id == self.customer)
        if self.invoice is not None:
            clauses.append(events.c.invoice_id == self.invoice)
        if self.status_code is not None:
            clauses.append(events.c.last_status_code == self.status_code)
        if self.min_attempts is not None:
            clauses.append(events.c.attempts >= self.min_attempts)
        if self.since is not None:
            clauses.append(events.c.created_at >= self.since)
        if self.until is not None:
            clauses.append(events.c.created_at < self.until)
        if self.event_name is not None:
            # The payload is compact JSON written by the library, so the name appears as
            # exactly this text; quotes inside other strings are escaped and cannot match.
            needle = '"eventName":' + json.dumps(self.event_name, ensure_ascii=False)
            clauses.append(_contains(events.c.payload, needle, dialect))
        return and_(true(), *clauses)


def _contains(column: ColumnElement[str], needle: str, dialect: str) -> ColumnElement[bool]:
    # Exact and case-sensitive: SQLite's LIKE ignores ASCII case, so "Signup" would match
    # "signup"; instr() and strpos() compare bytes and skip LIKE's pattern matching.
    if dialect == "sqlite":
        return func.instr(column, needle) > 0
    if dialect == "postgresql":
        return func.strpos(column, needle) > 0
    if dialect == "mysql":  # its default collations ignore case: compare the bytes
        return func.instr(cast(column, LargeBinary), needle.encode()) > 0
    return column.contains(needle, autoescape=True)


def parse_time(name: str, text: str | None) -> float | None:
    """A UTC time from a form (``2026-12-01T21:30``, seconds optional, or a date)."""
    if text is None:
        return None
    value = text.removesuffix("Z")
    for pattern in _TIME_FORMATS:
        try:
            moment = datetime.strptime(value, pattern)
        except ValueError:
            continue
        return moment.replace(tzinfo=timezone.utc).timestamp()
    raise ValidationError(name, f"{name} must be a UTC time like 2026-12-01T21:30")


def format_time(moment: float) -> str:
    text = datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return text.removesuffix(":00")


def _integer(name: str, text: str | None, low: int, high: int) -> int | None:
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ValidationError(name, f"{name} must be a whole number from {low} to {high}")
    return value
