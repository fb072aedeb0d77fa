"""One flusher's side of the shared pacing budget: take, give back, hear the service.

``pacing`` decides; this applies its decisions to the budget in the store, under the
control row's lock, and logs one line, with the numbers, when the limit in force
changes, a 429 pauses every flusher (WARNING) and that pause is over (INFO).
"""

from __future__ import annotations

import logging
import threading

from .advert import Advert
from .formatting import format_age
from .pacing import Budget, Grant, RateLimit, hear, in_force, rate_limited, refund, take
from .store import Store

__all__ = ["Pacer"]

logger = logging.getLogger(__name__)


class Pacer:
    """Takes from the outbox's shared budget at the limit in force.

    Headers heard on ordinary answers wait for the next ``take`` (a write per answer
    would double the flusher's writes); a 429 is applied at once, so that every other
    flusher pauses too.
    """

    def __init__(self, store: Store, limit: RateLimit) -> None:
        self.store = store
        self.limit = limit
        self._heard: Advert | None = None
        self._lock = threading.Lock()
        self._paused: tuple[float, float] | None = None  # (since, until) of a pause we told

    @property
    def paced(self) -> bool:
        return self.limit.paced

    def take(self, want: int, now: float) -> Grant:
        """Up to ``want`` requests that may start now, or how long to wait for one."""
        with self._lock:
            heard, self._heard = self._heard, None
        limit = self.limit

        def change(budget: Budget) -> tuple[Budget, tuple[Budget, Budget, Grant]]:
            heard_budget = budget if heard is None else hear(budget, heard, now)
            after, grant = take(heard_budget, want, now, limit)
            return after, (budget, after, grant)

        before, after, grant = self.store.with_budget(change)
        self._log_limit(before, after)
        if self._paused is not None and now >= after.paused_until:
            logger.info(
                "rate-limit pause over after %s: pacing at %s",
                format_age(now - self._paused[0]), self._in_force(after),
            )  # fmt: skip
            self._paused = None
        return grant

    def give_back(self, count: int) -> None:
        """Return requests taken for rows that turned out not to be due."""
        self.store.with_budget(lambda budget: (refund(budget, count), None))

    def heard(self, advert: Advert) -> None:
        """Remember an ordinary answer's rate-limit headers for the next ``take``."""
        if not advert.empty:
            with self._lock:
                self._heard = advert

    def refused(self, now: float, pause_until: float, advert: Advert) -> None:
        """A 429: pause every flusher of the outbox until ``pause_until``; learn from it."""
        limit = self.limit

        def change(budget: Budget) -> tuple[Budget, tuple[Budget, Budget]]:
            after = rate_limited(budget, now, pause_until, advert, limit)
            return after, (budget, after)

        before, after = self.store.with_budget(change)
        if after.paused_until > max(before.paused_until, now):
            logger.warning(
                "rate limited (HTTP 429): every flusher of this outbox pauses for %s, then "
                "paces at %s",
                format_age(after.paused_until - now), self._in_force(after),
            )  # fmt: skip
            since = now if self._paused is None else self._paused[0]
            self._paused = (since, after.paused_until)
        self._log_limit(before, after)

    def _log_limit(self, before: Budget, after: Budget) -> None:
        if (before.quota, before.source) == (after.quota, after.source):
            return
        logger.info("pacing: %s", self._in_force(after))

    def _in_force(self, budget: Budget) -> str:
        """``30 requests per 60s (30.0/min, learned)``."""
        quota, source = in_force(budget, self.limit)
        return (
            f"{quota.requests:.4g} requests per {quota.window:g}s "
            f"({quota.per_minute:.1f}/min, {source.value})"
        )
