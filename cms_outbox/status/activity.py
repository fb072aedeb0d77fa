"""What happened in the outbox since a moment: the counters of ``stats()`` and metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from .. import queries
from ..formatting import json_fields
from ..queries import IN_FLIGHT, PENDING
from .pacing import Pacing, pacing_of

__all__ = ["DURATION_BUCKETS", "Activity", "ActivityTracker", "Stats"]

# Seconds; an attempt is bounded by connect + read timeout (3.05 + 10 by default).
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0)


@dataclass(frozen=True)
class Stats:
    """What ``CMSClient.stats()`` reports.

    ``enqueued``/``delivered``/``retried``/``dead`` count what happened in the outbox
    (every process that writes to it, every flusher of it) since ``since``;
    ``pending`` (pending or in flight) and ``oldest_pending_age`` (seconds, None when
    nothing is pending) describe it now.
    """

    since: float
    enqueued: int
    delivered: int
    retried: int
    dead: int
    pending: int
    oldest_pending_age: float | None

    def to_json(self) -> dict[str, Any]:
        value = json_fields(self, times=("since",))
        value["oldest_pending_age_seconds"] = value.pop("oldest_pending_age")
        return value


@dataclass(frozen=True)
class Activity:
    """Monotonic counters since ``since`` plus the outbox as it is now (for metrics).

    ``duration_buckets`` holds cumulative request counts per ``DURATION_BUCKETS``
    bound; ``requests`` and ``duration_sum`` cover every HTTP attempt.
    """

    since: float
    enqueued: int
    delivered: int
    retried: int
    dead: int
    requests: int
    duration_sum: float
    duration_buckets: tuple[int, ...]
    counts: Mapping[str, int]
    oldest_pending_age: float | None
    pacing: Pacing | None = None  # None until a paced flusher has run

    @property
    def pending(self) -> int:
        return self.counts[PENDING] + self.counts[IN_FLIGHT]

    def stats(self) -> Stats:
        return Stats(
            since=self.since,
            enqueued=self.enqueued,
            delivered=self.delivered,
            retried=self.retried,
            dead=self.dead,
            pending=self.pending,
            oldest_pending_age=self.oldest_pending_age,
        )


_ZERO: tuple[float, ...] = (0.0,) * (6 + len(DURATION_BUCKETS))


class ActivityTracker:
    """Counts enqueues and attempt outcomes in the outbox from the database, monotonically.

    Rows commit out of order and purges delete old ones, so counting "everything
    since ``since``" on every read would both miss late commits and shrink after a
    purge. Instead, a window ending ``settle`` seconds ago (longer than any attempt
    takes to be recorded) is folded into fixed totals, and only the recent window is
    counted again on each read. Purges only delete rows far older than that window.
    """

    def __init__(self, engine: Engine, *, settle: float = 60.0, since: float | None = None) -> None:
        self.engine = engine
        self.settle = settle
        self.since = time.time() if since is None else since
        self._checkpoint = self.since
        self._folded: tuple[float, ...] = _ZERO
        self._lock = threading.Lock()

    def snapshot(self, now: float | None = None) -> Activity:
        """The counters now, read in one read transaction that never waits for a writer.

        :raises StorageError: the database failed.
        """
        now = time.time() if now is None else now
        with self._lock, queries.reading(self.engine, "reading outbox activity") as conn:
            fold_to = now - self.settle
            if fold_to > self._checkpoint:
                settled = queries.activity_between(
                    conn, self._checkpoint, fold_to, DURATION_BUCKETS
                )
                self._folded = tuple(a + b for a, b in zip(self._folded, settled))
                self._checkpoint = fold_to
            recent = queries.activity_between(conn, self._checkpoint, None, DURATION_BUCKETS)
            totals = [a + b for a, b in zip(self._folded, recent)]
            counts = queries.counts_by_state(conn)
            oldest = queries.oldest_unsent_at(conn)
            control = queries.control_row(conn)
        enqueued, delivered, retried, dead, requests, duration_sum = totals[:6]
        return Activity(
            since=self.since,
            enqueued=int(enqueued),
            delivered=int(delivered),
            retried=int(retried),
            dead=int(dead),
            requests=int(requests),
            duration_sum=duration_sum,
            duration_buckets=tuple(int(value) for value in totals[6:]),
            counts=counts,
            oldest_pending_age=None if oldest is None else max(0.0, now - oldest),
            pacing=pacing_of(control, now),
        )

    def stats(self, now: float | None = None) -> Stats:
        return self.snapshot(now).stats()
