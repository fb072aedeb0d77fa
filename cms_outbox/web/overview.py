"""The overview: the outbox now, and the activity chart (their SQL is in
``cms_outbox.queries.overview``).

The chart shows attempt outcomes, enqueues and the backlog per bucket, counted from
the attempts and events tables. A bucket that ended more than ``SETTLE`` seconds ago
no longer changes (an attempt is recorded within its timeout of starting), so each
``Activity`` counts it once and keeps the four numbers; only the recent buckets are
read again on each refresh. That keeps the day chart of a busy outbox cheap: a
day holds about 100,000 attempts at 60 requests a minute. The backlog line is worked
out on every read from the backlog now, so nothing kept can drift from the tables.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from .. import queries
from ..heartbeat import STALE_AFTER
from ..queries import IN_FLIGHT, PENDING, UNFINISHED
from ..queries.overview import (
    bucket_counts,
    first_created,
    state_counts_by_index,
    unfinished_count,
)

__all__ = ["SETTLE", "Activity", "Overview", "Timeline", "overview"]

# Seconds after which a bucket's counts are final: longer than any attempt takes to be
# recorded (connect + read timeout, 13 s by default) plus commit-order slack.
SETTLE = 120.0


@dataclass(frozen=True)
class Overview:
    """The outbox now: counts, the oldest event to send, pauses and pacing."""

    now: float
    counts: Mapping[str, int]
    oldest_pending_at: float | None
    pause_reason: str | None  # "outage" or "auth" while delivery is paused
    pause_since: float | None
    pause_error: str | None
    pacing: Mapping[str, Any]  # the shared pacing budget's columns, as stored
    flushers: Sequence[Mapping[str, Any]]  # heartbeat rows that beat within STALE_AFTER

    @property
    def backlog(self) -> int:
        return sum(self.counts[state] for state in UNFINISHED)

    @property
    def oldest_pending_age(self) -> float | None:
        if self.oldest_pending_at is None:
            return None
        return max(0.0, self.now - self.oldest_pending_at)


def overview(engine: Engine, now: float | None = None) -> Overview:
    """Counts per state, the oldest pending event, the delivery pause and pacing state.

    :raises StorageError: the database failed.
    """
    now = time.time() if now is None else now
    with queries.reading(engine, "reading the outbox overview") as conn:
        if conn.dialect.name == "postgresql":
            # One snapshot for the several counts, as SQLite's read transaction gives.
            conn.execution_options(isolation_level="REPEATABLE READ")
        counts = state_counts_by_index(conn)
        oldest = [first_created(conn, state) for state in (PENDING, IN_FLIGHT)]
        known = [moment for moment in oldest if moment is not None]
        values = queries.control_row(conn)
        rows = queries.flusher_rows(conn)
        beats = [row for row in rows if now - float(row["beat_at"]) <= STALE_AFTER]
    pause_reason = pause_since = pause_error = None
    pacing: dict[str, Any] = {}
    if values is not None:
        if values.get("auth_paused_since") is not None:
            pause_reason, pause_since = "auth", float(values["auth_paused_since"])
        elif values.get("outage_since") is not None:
            pause_reason, pause_since = "outage", float(values["outage_since"])
        if pause_reason is not None:
            pause_error = values.get("pause_error")
        pacing = {
            key: value
            for key, value in values.items()
            if key not in ("name", "outage_since", "auth_paused_since", "pause_error")
        }
    return Overview(
        now=now,
        counts=counts,
        oldest_pending_at=min(known) if known else None,
        pause_reason=pause_reason,
        pause_since=pause_since,
        pause_error=pause_error,
        pacing=pacing,
        flushers=beats,
    )


# -- the activity chart ------------------------------------------------------------------


@dataclass(frozen=True)
class Timeline:
    """Counts per bucket of ``bucket`` seconds from ``start``, oldest first.

    ``backlog[i]`` is the number of unfinished events at the end of bucket ``i``, worked
    back from the backlog now: enqueues add to it, deliveries and dead letters take from
    it. A dead event retried and finished again counts as finished twice, so the past
    backlog reads slightly high after retries.
    """

    start: float
    bucket: float
    delivered: Sequence[int]
    retried: Sequence[int]
    dead: Sequence[int]
    enqueued: Sequence[int]
    backlog: Sequence[int]


class Activity:
    """The chart of the last ``span`` seconds in buckets of ``bucket`` seconds."""

    def __init__(self, engine: Engine, *, span: float, bucket: float) -> None:
        self.engine = engine
        self.span = span
        self.bucket = bucket
        self._settled: dict[int, tuple[int, int, int, int]] = {}  # bucket number -> counts
        self._lock = threading.Lock()

    def forget(self) -> None:
        """Count every bucket afresh (after a purge deleted history)."""
        with self._lock:
            self._settled.clear()

    def read(self, now: float | None = None, *, unfinished: int | None = None) -> Timeline:
        """The chart now; ``unfinished`` is the backlog now, if the caller just counted it.

        :raises StorageError: the database failed.
        """
        now = time.time() if now is None else now
        size = max(1, int(round(self.span / self.bucket)))
        # Buckets are whole multiples of ``bucket`` since the epoch, so their edges stay
        # put between refreshes and a settled one is the same bucket next time.
        last = int(now // self.bucket)
        first = last - size + 1
        with self._lock:
            for number in [n for n in self._settled if n < first]:
                del self._settled[number]
            missing = [n for n in range(first, last + 1) if n not in self._settled]
            counts = dict(self._settled)
            with queries.reading(self.engine, "reading the outbox activity") as conn:
                if missing:
                    counts.update(bucket_counts(conn, self.bucket, missing[0], last))
                if unfinished is None:
                    unfinished = unfinished_count(conn)
            for number in missing:
                if (number + 1) * self.bucket <= now - SETTLE:
                    self._settled[number] = counts.get(number, (0, 0, 0, 0))
        rows = [counts.get(n, (0, 0, 0, 0)) for n in range(first, last + 1)]
        delivered, retried, dead, enqueued = (list(column) for column in zip(*rows))
        backlog = [0] * size
        level = unfinished
        for index in range(size - 1, -1, -1):
            backlog[index] = max(0, level)
            level += delivered[index] + dead[index] - enqueued[index]
        return Timeline(first * self.bucket, self.bucket, delivered, retried, dead, enqueued,
                        backlog)  # fmt: skip
