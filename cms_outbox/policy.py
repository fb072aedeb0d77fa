"""Delivery policy: classify answers, back off with full jitter, pace, break the circuit.

Pure: the clock and the random source are passed in, nothing here does I/O.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime

__all__ = [
    "Breaker",
    "Bucket",
    "Verdict",
    "backoff",
    "classify",
    "parse_retry_after",
    "refund",
    "slow_down",
    "speed_up",
    "take_tokens",
]


class Verdict(str, enum.Enum):
    """What an answer (or its absence) means for the event and for the flusher."""

    DELIVERED = "delivered"
    DUPLICATE = "duplicate"  # 409: the service already has it
    DEAD = "dead"  # permanent rejection, kept with the response
    RETRY = "retry"  # transient: back off and try again
    AUTH = "auth"  # 401/403: pause everything, burn nothing
    OUTAGE = "outage"  # no answer at all: open the circuit


def classify(status_code: int | None) -> Verdict:
    """Map an HTTP status (None: connection error or timeout) to a verdict."""
    if status_code is None:
        return Verdict.OUTAGE
    if 200 <= status_code < 300:
        return Verdict.DELIVERED
    if status_code == 409:
        return Verdict.DUPLICATE
    if status_code in (401, 403):
        return Verdict.AUTH
    if status_code in (408, 429) or status_code >= 500:
        return Verdict.RETRY
    if 400 <= status_code < 500:
        return Verdict.DEAD
    return Verdict.RETRY  # 1xx/3xx: not an answer we can trust; try again later


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment is None:
        return None
    return max(0.0, moment.timestamp() - now)


def backoff(
    attempts: int,
    rng: random.Random,
    *,
    base: float = 1.0,
    cap: float = 300.0,
    retry_after: float | None = None,
) -> float:
    """Delay before the next try: full jitter under an exponential ceiling, >= Retry-After."""
    ceiling = min(cap, base * 2 ** min(max(attempts - 1, 0), 32))
    delay = rng.uniform(0, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


# -- pacing: a token bucket shared through the database ------------------------------


@dataclass(frozen=True)
class Bucket:
    """The shared token bucket: tokens at ``tokens_at``, and the 429 slow-down factor."""

    tokens: float
    tokens_at: float
    rate_factor: float


# Stay under the allowed rate, with a burst just big enough to absorb wake-up jitter: in
# any 60 s window a sliding-window limiter sees at most 0.97 * limit + burst <= limit.
SAFETY = 0.97
MIN_FACTOR = 1 / 16


def take_tokens(bucket: Bucket, want: int, now: float, per_minute: float) -> tuple[Bucket, float]:
    """Refill, then take up to ``want`` whole tokens.

    :returns: the new bucket and either the tokens granted (>= 1) or, when none can be
        granted, the negative number of seconds until one will be.
    """
    rate = per_minute * SAFETY * bucket.rate_factor / 60.0
    elapsed = max(0.0, now - bucket.tokens_at)
    tokens = min(burst(per_minute), bucket.tokens + elapsed * rate)
    granted = min(want, math.floor(tokens + 1e-9))  # 0.9999999 tokens is one token
    if granted >= 1:
        return Bucket(max(0.0, tokens - granted), now, bucket.rate_factor), float(granted)
    return Bucket(tokens, now, bucket.rate_factor), -max(0.001, (1.0 - tokens) / rate)


def burst(per_minute: float) -> float:
    """Tokens the bucket holds at most."""
    return max(1.5, per_minute * 0.01)


def refund(bucket: Bucket, count: int, per_minute: float) -> Bucket:
    """Give back tokens taken for rows that turned out not to be due."""
    return replace(bucket, tokens=min(burst(per_minute), bucket.tokens + count))


def slow_down(bucket: Bucket, now: float, per_minute: float, pause: float) -> Bucket:
    """After a 429: halve the rate and spend the next ``pause`` seconds' tokens in advance."""
    factor = max(MIN_FACTOR, bucket.rate_factor / 2)
    rate = per_minute * SAFETY * factor / 60.0
    tokens = min(bucket.tokens, 0.0) - pause * rate
    return Bucket(tokens, now, factor)


def speed_up(bucket: Bucket) -> Bucket:
    """After an accepted request: recover towards the full rate."""
    if bucket.rate_factor >= 1.0:
        return bucket
    return replace(bucket, rate_factor=min(1.0, bucket.rate_factor * 1.25))


# -- circuit breaker ------------------------------------------------------------------


PAUSES = ("outage", "auth")


@dataclass
class Breaker:
    """Stops a flusher from hammering a service that does not answer (or refuses the token).

    A new flusher starts half-open, so that an outage or a bad token at start-up costs
    one request rather than one per worker. Closed: send freely. Open: send nothing
    until ``retry_at``; then half-open: one probe, whose success closes the circuit
    and whose failure reopens it for longer (doubled, jittered, capped).
    """

    base: float = 1.0
    cap: float = 30.0
    reason: str | None = "starting"
    since: float | None = None
    retry_at: float = 0.0
    failures: int = 0
    error: str | None = None

    @property
    def paused(self) -> str | None:
        """``"outage"`` or ``"auth"`` while delivery is paused, else None."""
        return self.reason if self.reason in PAUSES else None

    def allowance(self, now: float) -> int | None:
        """How many requests may start now: None for no limit, 1 for a probe, or 0."""
        if self.reason is None:
            return None
        return 1 if now >= self.retry_at else 0

    def trip(self, reason: str, now: float, rng: random.Random, error: str | None) -> bool:
        """Open (or reopen) the circuit; returns True when this starts a new pause.

        Failures of requests already in flight when the circuit opened do not count
        again. An auth pause probes ten times less often: a token is rarely fixed in
        seconds.
        """
        if self.reason == reason and now < self.retry_at:
            return False
        started = self.reason != reason
        if started:
            self.since = now
            self.failures = 0
        self.reason = reason
        self.error = error
        self.failures += 1
        scale = 10.0 if reason == "auth" else 1.0
        ceiling = scale * min(self.cap, self.base * 2 ** min(self.failures - 1, 32))
        self.retry_at = now + rng.uniform(ceiling / 2, ceiling)
        return started

    def close(self) -> str | None:
        """Close after an answer; returns the pause that this ends, if any."""
        ended = self.paused
        self.reason = None
        self.since = None
        self.failures = 0
        self.error = None
        self.retry_at = 0.0
        return ended

    def probe_now(self) -> None:
        """Allow one probe at once (an explicit ``flush()`` should not sit out the delay)."""
        self.retry_at = 0.0
