r"""Every read query of the outbox, in one package: the flusher, the store, status, the CLI,
metrics and the dashboard share them.

``reading`` opens a read transaction that never takes the write lock: on SQLite a
deferred ``BEGIN`` in WAL mode reads the last committed state while a writer (an
application's open transactional-outbox transaction, a flusher) holds the lock; on
PostgreSQL and MySQL plain ``SELECT``\ s, never ``FOR UPDATE``. So ``status``, ``health``,
``events``, ``show``, ``result()``, ``stats()`` and metrics answer at once, whatever
transaction the application keeps open. The query functions take a connection, so a
writer can also run one inside its own transaction (the store does, after a conflict).

The lease rule's predicate (``leasable``) lives here too: the store leases by it and
``status`` counts by it, so the two can never disagree.

By question: ``base`` (the words, ``reading``), ``due`` (the lease rule, what waits),
``counts`` (how many, what happened), ``rows`` (whole rows), ``selection`` (which events
a filter picks), ``browse`` (the dashboard's pages of events and one event in context)
and ``overview`` (the dashboard's counts and chart, each bounded by an index). The last
three serve only the dashboard: import them from their modules, so that a client never
loads them.
"""

from __future__ import annotations

from .base import (
    BLOCKED,
    CONTROL_ROW,
    DEAD,
    DEAD_OUTCOMES,
    DELIVERED,
    DELIVERED_OUTCOMES,
    IN_FLIGHT,
    NO_REQUEST_OUTCOMES,
    PAUSED_OUTCOMES,
    PENDING,
    RETRIED_OUTCOMES,
    STATES,
    SUMMARY_COLUMNS,
    TO_SEND,
    UNFINISHED,
    reading,
)
from .counts import (
    activity_between,
    counts_by_state,
    deliveries,
    last_failed_attempt,
    leased_by,
    oldest_unsent_at,
    pending_summary,
    unacknowledged,
)
from .due import (
    count_due,
    fifo_clear,
    has_work,
    leasable,
    pending_outlook,
    waits_on,
)
from .rows import (
    BUDGET_COLUMNS,
    attempt_rows,
    budget_of,
    control_row,
    event_ids_starting_with,
    event_row,
    event_rows,
    flusher_rows,
    sale_by_invoice,
)

__all__ = [
    "BLOCKED",
    "BUDGET_COLUMNS",
    "CONTROL_ROW",
    "DEAD",
    "DEAD_OUTCOMES",
    "DELIVERED",
    "DELIVERED_OUTCOMES",
    "IN_FLIGHT",
    "NO_REQUEST_OUTCOMES",
    "PENDING",
    "PAUSED_OUTCOMES",
    "RETRIED_OUTCOMES",
    "STATES",
    "SUMMARY_COLUMNS",
    "TO_SEND",
    "UNFINISHED",
    "activity_between",
    "attempt_rows",
    "budget_of",
    "control_row",
    "count_due",
    "counts_by_state",
    "deliveries",
    "event_ids_starting_with",
    "event_row",
    "event_rows",
    "fifo_clear",
    "flusher_rows",
    "has_work",
    "last_failed_attempt",
    "leased_by",
    "leasable",
    "oldest_unsent_at",
    "pending_outlook",
    "pending_summary",
    "reading",
    "sale_by_invoice",
    "unacknowledged",
    "waits_on",
]
