"""Pacing: one request budget for every flusher of an outbox, following the service's limit.

The budget is a value the store keeps in the control row; every flusher takes from it
under the row's lock, so N processes together stay under one limit. The limit in force
comes from, in order of trust: a ``Retry-After`` on a 429 (a pause, always obeyed), the
service's advertised policy (``RateLimit-Policy``/``RateLimit`` or
``X-RateLimit-Limit/-Remaining/-Reset``), what 429s taught us when the service sends no
headers, and the documented 60 requests per minute. An explicit ``rate_limit`` number
replaces that assumption and is a ceiling on everything else.

Pure: the clock is passed in, nothing here does I/O.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace

from .advert import Advert, Quota
from .errors import ConfigurationError

__all__ = [
    "ASSUMED",
    "BURST",
    "Budget",
    "Grant",
    "Mode",
    "Quota",
    "RateLimit",
    "Source",
    "burst",
    "hear",
    "in_force",
    "rate_limited",
    "refund",
    "take",
]


class Mode(str, enum.Enum):
    """How the ``rate_limit`` setting paces."""

    AUTO = "auto"  # follow the service, starting from the documented 60/min
    CEILING = "ceiling"  # follow the service, never above the configured number
    UNPACED = "unpaced"  # no pacing at all (a sandbox, a plan without a limit)


@dataclass(frozen=True)
class RateLimit:
    """The ``rate_limit`` setting: ``"auto"``, a ceiling in requests per minute, or unpaced.

    ``parse`` is the one place that reads the public spellings: ``"auto"``, an ``int``
    >= 1, and ``0`` or ``None`` for no pacing.
    """

    mode: Mode
    per_minute: int = 0  # the ceiling; only with Mode.CEILING

    @classmethod
    def parse(cls, value: object) -> RateLimit:
        """:raises ConfigurationError: any other value, naming ``rate_limit``."""
        if isinstance(value, RateLimit):
            return value
        if value is None or (type(value) is int and value == 0):
            return UNPACED
        if value == "auto":
            return AUTO
        if type(value) is int and value > 0:
            return cls(Mode.CEILING, value)
        raise ConfigurationError(
            "rate_limit must be 'auto', a number of requests per minute >= 1, "
            f"or 0 or None for no pacing; got {value!r}"
        )

    @property
    def paced(self) -> bool:
        return self.mode is not Mode.UNPACED

    def __str__(self) -> str:
        if self.mode is Mode.CEILING:
            return f"{self.per_minute}/min at most"
        return str(self.mode.value)


AUTO = RateLimit(Mode.AUTO)
UNPACED = RateLimit(Mode.UNPACED)


class Source(str, enum.Enum):
    """Where the limit in force came from; the words ``status --json`` shows."""

    ASSUMED = "assumed"  # the documented 60/min: nothing heard from the service yet
    CONFIGURED = "configured"  # the explicit rate_limit number
    ADVERTISED = "advertised"  # the service's rate-limit headers
    LEARNED = "learned"  # 429s and Retry-After, from a service that sends no headers


ASSUMED = Quota(60.0, 60.0)  # DESIGN.md: the service allows 60 requests per minute
# Send at 97 % of the limit: wake-up jitter and clock skew between hosts need the slack.
SAFETY = 0.97
# The budget holds at most this many requests, so that after a quiet spell a handful of
# events (a short script's, at interpreter exit) leave in one round...
BURST = 5
# ...but never more than this share of the window's quota (the whole BURST at the assumed
# 60 per minute): a sliding-window limiter must not see the burst plus a window's worth
# of paced requests.
BURST_SHARE = 1 / 12
# A 429 that names no end pauses this long.
DEFAULT_PAUSE = 5.0
# A learned (or merely assumed) limit is probed 10 % upward after this many quiet windows
# spent sending at it (at least QUIET_MIN seconds), so that a raised limit is found.
PROBE_STEP = 1.1
QUIET_WINDOWS = 5
QUIET_MIN = 30.0


@dataclass(frozen=True)
class Budget:
    """The shared budget: tokens, the service's limit as last heard, and the 429 pause.

    :param remaining: requests the service still allows before ``reset_at`` (None: not
        advertised); it only ever lowers what the tokens allow.
    :param paused_until: a 429 stops every flusher until then.
    :param counted_since: start of the span whose grants ``counted`` counts (the end of the
        last 429 pause): a 429 inside it measures the service's real quota.
    :param changed_at: when a 429 or a probe last changed a learned quota, or the
        flushers last started sending at the limit: the quiet period before a probe
        starts there.
    :param probed_from: the requests of the quota before the last upward probe (0: none).
    :param ceiling: the explicit ``rate_limit`` of the flusher that took last (requests
        per minute, 0: none), so that ``status`` can tell what is in force.
    """

    tokens: float = 0.0
    tokens_at: float = 0.0
    quota: Quota = ASSUMED
    source: Source = Source.ASSUMED
    remaining: int | None = None
    reset_at: float = 0.0
    paused_until: float = 0.0
    counted_since: float = 0.0
    counted: int = 0
    changed_at: float = 0.0
    probed_from: float = 0.0
    ceiling: float = 0.0

    @property
    def limit(self) -> RateLimit:
        """The rate limit setting ``ceiling`` records."""
        return RateLimit(Mode.CEILING, int(self.ceiling)) if self.ceiling else AUTO


@dataclass(frozen=True)
class Grant:
    """What ``take`` allows: ``requests`` may start now; with none, ``wait`` seconds first."""

    requests: int
    wait: float = 0.0


def in_force(budget: Budget, limit: RateLimit) -> tuple[Quota, Source]:
    """The quota this flusher paces at, and where it came from.

    An explicit ceiling replaces the assumed 60/min and caps whatever the service
    advertised or taught.
    """
    if limit.mode is not Mode.CEILING:
        return budget.quota, budget.source
    ceiling = Quota(float(limit.per_minute), 60.0)
    if budget.source is Source.ASSUMED or ceiling.per_second <= budget.quota.per_second:
        return ceiling, Source.CONFIGURED
    return budget.quota, budget.source


def burst(quota: Quota) -> float:
    """Requests the budget holds at most."""
    return max(1.0, min(float(BURST), quota.requests * BURST_SHARE))


def take(budget: Budget, want: int, now: float, limit: RateLimit) -> tuple[Budget, Grant]:
    """Refill, then take up to ``want`` requests: none during a pause or past ``remaining``."""
    budget = _probe(budget, now, limit)
    ceiling = float(limit.per_minute) if limit.mode is Mode.CEILING else 0.0
    if ceiling != budget.ceiling:
        budget = replace(budget, ceiling=ceiling)
    if now < budget.paused_until:
        return budget, Grant(0, budget.paused_until - now)
    remaining = budget.remaining
    if remaining is not None and now >= budget.reset_at:
        remaining = None  # the service's window renewed
    quota, _ = in_force(budget, limit)
    rate = quota.per_second * SAFETY
    elapsed = max(0.0, now - budget.tokens_at)
    tokens = min(burst(quota), budget.tokens + elapsed * rate)
    # A flusher that read the clock before another took, and takes after it, brings an
    # earlier time: the refill stays counted up to the later one, never twice.
    refilled_to = max(now, budget.tokens_at)
    granted = min(want, math.floor(tokens + 1e-9))  # 0.9999999 tokens is one token
    if remaining is not None:
        granted = min(granted, remaining)
    if granted < 1:
        if remaining == 0:
            wait = budget.reset_at - now
        else:
            wait = (1.0 - tokens) / rate
        changed = replace(budget, tokens=tokens, tokens_at=refilled_to, remaining=remaining)
        return changed, Grant(0, max(0.001, wait))
    changed = replace(
        budget,
        tokens=max(0.0, tokens - granted),
        tokens_at=refilled_to,
        remaining=None if remaining is None else remaining - granted,
        counted=budget.counted + granted,
    )
    return changed, Grant(granted)


def refund(budget: Budget, count: int) -> Budget:
    """Give back requests taken for rows that turned out not to be due."""
    remaining = None if budget.remaining is None else budget.remaining + count
    return replace(
        budget,
        tokens=min(burst(budget.quota), budget.tokens + count),
        remaining=remaining,
        counted=max(0, budget.counted - count),
    )


def hear(budget: Budget, advert: Advert, now: float) -> Budget:
    """Apply what the service advertised: its policy replaces ours; remaining only lowers."""
    if advert.quota is not None:
        budget = _adopt(budget, advert.quota)
    elif advert.limit is not None:
        budget = _adopt(budget, Quota(float(advert.limit), _window_of(budget, advert, now)))
    if advert.remaining is None or advert.reset_at is None or advert.reset_at <= now:
        return budget
    if budget.remaining is not None and abs(advert.reset_at - budget.reset_at) < 1.5:
        return replace(budget, remaining=min(budget.remaining, advert.remaining))
    if advert.reset_at > budget.reset_at:  # a new window (or a sliding window's next step)
        return replace(budget, remaining=advert.remaining, reset_at=advert.reset_at)
    return budget  # a late answer from an earlier window


def rate_limited(
    budget: Budget, now: float, pause_until: float | None, advert: Advert, limit: RateLimit
) -> Budget:
    """After a 429: pause every flusher until the service's reset; without headers, learn.

    A 429 in the span since the last pause ended measures the real quota (what was
    granted in it, less the refused request, over the span up to the new pause's end);
    one outside it halves the quota; one right after an upward probe undoes the probe.
    Answers of the same wave (arriving while the pause already runs) only extend it.
    """
    budget = hear(budget, advert, now)
    if pause_until is None:
        pause_until = advert.reset_at if advert.reset_at is not None else now + DEFAULT_PAUSE
    pause_until = max(pause_until, now)
    wave = now < budget.paused_until
    # At the pause's end one request (the refused event, first in its customer's line)
    # may go at once; the rest is paced from there.
    paused = replace(budget, paused_until=max(budget.paused_until, pause_until), tokens=1.0)
    paused = replace(paused, tokens_at=paused.paused_until, remaining=None)
    if wave or not advert.empty:
        return paused
    quota, _ = in_force(budget, limit)
    span = pause_until - budget.counted_since
    if budget.source is Source.LEARNED and budget.probed_from:
        learned = Quota(budget.probed_from, budget.quota.window)
    elif budget.counted_since and budget.counted >= 2 and 1.0 <= span <= 3 * quota.window:
        learned = Quota(float(budget.counted - 1), span)
    else:
        learned = Quota(max(1.0, quota.requests / 2), quota.window)
    return replace(
        paused,
        quota=learned,
        source=Source.LEARNED,
        counted_since=paused.paused_until,
        counted=0,
        changed_at=now,
        probed_from=0.0,
    )


# -- helpers -------------------------------------------------------------------------------


def _adopt(budget: Budget, quota: Quota) -> Budget:
    if budget.source is Source.ADVERTISED and budget.quota == quota:
        return budget
    return replace(budget, quota=quota, source=Source.ADVERTISED, probed_from=0.0)


def _window_of(budget: Budget, advert: Advert, now: float) -> float:
    """The window of an ``X-RateLimit-Limit``, which does not say it.

    Consecutive windows' resets are one window apart; before two were seen, the time to
    the reset scaled by the share of the limit already used is the best guess.
    """
    assert advert.limit is not None
    known = budget.quota.window if budget.source is Source.ADVERTISED else None
    if advert.reset_at is None:
        return known or ASSUMED.window
    if budget.reset_at and budget.reset_at <= now + 0.5 and advert.reset_at > budget.reset_at:
        step = advert.reset_at - budget.reset_at
        # Heard soon after the last reset: one window later, not several idle ones.
        if now - budget.reset_at < step / 2:
            return max(1.0, round(step))
    if known is not None:
        return known
    # Assume the window so far was used evenly: the share left is the time left's share.
    left = (advert.remaining + 1) / advert.limit if advert.remaining is not None else 1.0
    return max(1.0, round((advert.reset_at - now) / min(1.0, max(left, 1e-3))))


def _probe(budget: Budget, now: float, limit: RateLimit) -> Budget:
    """After a quiet period at the limit, raise a learned (or assumed) quota by 10 %.

    Quiet means busy without a 429: while the flusher does not send at the limit there
    is nothing to learn, and the quiet period starts again.
    """
    quota, source = in_force(budget, limit)
    if source not in (Source.LEARNED, Source.ASSUMED) or now < budget.paused_until:
        return budget
    busy = now - budget.tokens_at < 2 / (quota.per_second * SAFETY)
    if not budget.changed_at or not busy:
        return replace(budget, changed_at=now)
    quiet = max(QUIET_MIN, QUIET_WINDOWS * budget.quota.window)
    if now - max(budget.changed_at, budget.paused_until) < quiet:
        return budget
    raised = Quota(budget.quota.requests * PROBE_STEP, budget.quota.window)
    return replace(
        budget, quota=raised, source=Source.LEARNED, probed_from=budget.quota.requests,
        changed_at=now,
    )  # fmt: skip
