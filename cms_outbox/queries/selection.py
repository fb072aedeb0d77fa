"""Which events to read: a selection by state, customer, name, invoice, status, attempts, time.

The dashboard's events page parses one from its query string (``web.filters``); here it
becomes a WHERE clause, and says whether an index narrows it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import ColumnElement, LargeBinary, and_, cast, func, true

from ..schema import events
from .base import DELIVERED

__all__ = ["Selection"]


@dataclass(frozen=True)
class Selection:
    """Which events to read; every field is optional and they combine with AND.

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

    @property
    def needs_scan(self) -> bool:
        """True when no index narrows the rows: only unindexed fields, or only a busy state.

        Such a selection is searched one window of sequence ids per page (``SCAN_WINDOW``),
        so that a rare event name cannot make a page read the whole table.
        """
        narrowed = (
            self.customer is not None
            or self.invoice is not None
            or self.since is not None
            or self.until is not None
            or (self.state is not None and self.state != DELIVERED)
        )
        unindexed = (
            self.event_name is not None
            or self.status_code is not None
            or self.min_attempts is not None
        )
        return unindexed and not narrowed

    def condition(self, dialect: str) -> ColumnElement[bool]:
        """The selection as a WHERE clause over ``cms_outbox_events`` for ``dialect``."""
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
