"""Read-only reporting, split by the question each module answers.

- ``counts``: how many events are where (``status``)
- ``health``: whether that is healthy (``health``)
- ``activity``: what happened since a moment (``stats()``, metrics)
- ``pacing``: how fast the flushers may send (``status``, metrics)
- ``detail``: what is stored (``events``, ``show``)

Every query comes from ``cms_outbox.queries`` and runs in a read transaction that never
waits for a writer; nothing here writes.
"""

from __future__ import annotations

from .activity import DURATION_BUCKETS, Activity, ActivityTracker, Stats
from .counts import LastError, OutboxStatus, Pause, count_due, outbox_status
from .detail import (
    AttemptRecord,
    EventDetail,
    EventSummary,
    WaitedOn,
    event_detail,
    list_events,
    resolve_event_id,
)
from .health import Health, Limit, check_health
from .pacing import Pacing

__all__ = [
    "DURATION_BUCKETS",
    "Activity",
    "ActivityTracker",
    "AttemptRecord",
    "EventDetail",
    "EventSummary",
    "Health",
    "LastError",
    "Limit",
    "OutboxStatus",
    "Pacing",
    "Pause",
    "Stats",
    "WaitedOn",
    "check_health",
    "count_due",
    "event_detail",
    "list_events",
    "outbox_status",
    "resolve_event_id",
]
