"""Delivery policy: classify answers, decide each attempt's consequences, break the circuit.

Pure: the clock and the random source are passed in, nothing here does I/O. Pacing
(the shared request budget) is ``pacing``'s.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from .advert import Advert
from .pacing import DEFAULT_PAUSE
from .results import EventState

__all__ = [
    "Answer",
    "Breaker",
    "Decision",
    "Rules",
    "Verdict",
    "backoff",
    "classify",
    "decide",
    "expiry",
    "parse_retry_after",
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


# -- the delivery decision ---------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What one attempt brought back: a status (None: no answer at all) and its headers."""

    status_code: int | None
    finished_at: float
    error: str | None = None
    retry_after: str | None = None
    advert: Advert = Advert()


@dataclass(frozen=True)
class Rules:
    """The settings the decision depends on."""

    max_age: float
    max_backoff: float


@dataclass(frozen=True)
class Decision:
    """An attempt's consequences: for the row, for the circuit breaker and for the pacing.

    :param next_attempt_at: when a pending row is due again (None: unchanged).
    :param counts: whether the attempt counts toward the row's attempts (and so its
        backoff); a 429 does not.
    :param breaker: ``"outage"`` or ``"auth"`` trip the circuit; None closes it.
    :param pause_until: a 429: every flusher of the outbox waits until then.
    """

    verdict: Verdict
    state: EventState
    outcome: str  # the word stored in the attempts table
    error: str | None = None
    next_attempt_at: float | None = None
    counts: bool = True
    breaker: str | None = None
    pause_until: float | None = None
    advert: Advert = Advert()


def decide(
    answer: Answer, attempts: int, created_at: float, now: float, rules: Rules, rng: random.Random
) -> Decision:
    """The whole delivery decision for one attempt; pure but for ``rng``'s jitter.

    :param attempts: the row's attempts before this one.
    :param created_at: when the event was stored (``max_age`` counts from there).
    """
    verdict = classify(answer.status_code)
    advert = answer.advert
    error = answer.error
    if verdict is Verdict.DELIVERED or verdict is Verdict.DUPLICATE:
        return Decision(verdict, EventState.DELIVERED, verdict.value, advert=advert)
    if verdict is Verdict.DEAD:
        return Decision(verdict, EventState.DEAD, "dead", error, advert=advert)
    if verdict is Verdict.AUTH or verdict is Verdict.OUTAGE:
        word = verdict.value
        return Decision(verdict, EventState.PENDING, word, error, breaker=word)
    retry_after = parse_retry_after(answer.retry_after, answer.finished_at)
    if answer.status_code == 429:
        # Not the event's fault either: due again first thing when the pause ends.
        if retry_after is not None:
            until = answer.finished_at + retry_after
        elif advert.reset_at is not None and advert.reset_at > answer.finished_at:
            until = advert.reset_at
        else:
            until = answer.finished_at + DEFAULT_PAUSE
        return Decision(
            verdict, EventState.PENDING, "rate_limited", error, next_attempt_at=until,
            counts=False, pause_until=until, advert=advert,
        )  # fmt: skip
    if now - created_at > rules.max_age:
        return expiry(now - created_at, error)
    delay = backoff(attempts + 1, rng, cap=rules.max_backoff, retry_after=retry_after)
    due = answer.finished_at + delay
    return Decision(verdict, EventState.PENDING, "retry", error, next_attempt_at=due, advert=advert)


def expiry(age: float, error: str | None = None) -> Decision:
    """Dead-letter an event older than ``max_age``: the only way retries end."""
    message = f"expired: not delivered within max_age ({age / 86400:.1f} days old)"
    if error:
        message += f"; last error: {error}"
    return Decision(Verdict.DEAD, EventState.DEAD, "expired", message)


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
