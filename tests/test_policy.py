"""Delivery policy: classification, backoff with full jitter, Retry-After, the decision, breaker.

The decision is tested by table: an answer, the attempt number and the time go in; the
row's next state, its due time and the breaker and pacing effects come out. No I/O.
"""

from __future__ import annotations

import random
from datetime import datetime, timezone
from email.utils import format_datetime

import pytest

from cms_outbox.advert import Advert, Quota
from cms_outbox.pacing import DEFAULT_PAUSE
from cms_outbox.policy import (
    Answer,
    Breaker,
    Decision,
    Rules,
    Verdict,
    backoff,
    classify,
    decide,
    parse_retry_after,
)
from cms_outbox.results import EventState


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.DELIVERED), (201, Verdict.DELIVERED), (202, Verdict.DELIVERED),
        (409, Verdict.DUPLICATE),
        (400, Verdict.DEAD), (404, Verdict.DEAD), (422, Verdict.DEAD),
        (401, Verdict.AUTH), (403, Verdict.AUTH),
        (408, Verdict.RETRY), (429, Verdict.RETRY), (500, Verdict.RETRY),
        (502, Verdict.RETRY), (503, Verdict.RETRY), (504, Verdict.RETRY),
        (None, Verdict.OUTAGE),
    ],
)  # fmt: skip
def test_classification_follows_the_design_table(status: int | None, verdict: Verdict) -> None:
    assert classify(status) is verdict


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    rng = random.Random(1)
    for attempts in range(1, 12):
        ceiling = min(300.0, 2.0 ** (attempts - 1))
        delays = [backoff(attempts, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8 and min(delays) < ceiling * 0.2  # spread, not fixed


def test_backoff_never_goes_under_retry_after() -> None:
    rng = random.Random(2)
    assert all(backoff(1, rng, retry_after=2.0) >= 2.0 for _ in range(100))
    assert backoff(1, rng, retry_after=10_000.0, cap=300.0) == 300.0


def test_retry_after_in_seconds_and_http_date() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc).timestamp()
    later = format_datetime(datetime(2026, 1, 1, 12, 0, 30, tzinfo=timezone.utc), usegmt=True)
    assert parse_retry_after("2", now) == 2.0
    assert parse_retry_after(later, now) == pytest.approx(30.0)
    assert parse_retry_after("Thu, 01 Jan 2025 00:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


NOW = 1_800_000_000.0
DAY = 86400.0
RULES = Rules(max_age=30 * DAY, max_backoff=300.0)
ADVERT = Advert(quota=Quota(30, 6), remaining=12, reset_at=NOW + 4)
PENDING, DELIVERED, DEAD = EventState.PENDING, EventState.DELIVERED, EventState.DEAD


@pytest.mark.parametrize(
    ("answer", "attempts", "age", "state", "label", "counts", "breaker", "pause", "due"),
    [
        # answer, attempts, age, state, label, counts, breaker, pause, due
        (Answer(200, NOW), 0, 0.0, DELIVERED, "delivered", True, None, None, None),
        (Answer(201, NOW, advert=ADVERT), 5, 0.0, DELIVERED, "delivered", True, None, None, None),
        (Answer(409, NOW), 0, 0.0, DELIVERED, "duplicate", True, None, None, None),
        (Answer(422, NOW, "HTTP 422: bad"), 0, 0.0, DEAD, "dead", True, None, None, None),
        (Answer(400, NOW), 3, 0.0, DEAD, "dead", True, None, None, None),
        (Answer(401, NOW), 0, 0.0, PENDING, "auth", True, "auth", None, None),
        (Answer(403, NOW), 0, 40 * DAY, PENDING, "auth", True, "auth", None, None),
        (Answer(None, NOW, "ConnectTimeout"), 0, 40 * DAY, PENDING, "outage", True, "outage",
         None, None),
        # 429: every flusher pauses until the service's reset; Retry-After wins
        (Answer(429, NOW, retry_after="7"), 4, 0.0, PENDING, "rate_limited", False, None,
         NOW + 7, NOW + 7),
        (Answer(429, NOW, retry_after="7", advert=ADVERT), 0, 0.0, PENDING, "rate_limited",
         False, None, NOW + 7, NOW + 7),
        (Answer(429, NOW, advert=ADVERT), 0, 0.0, PENDING, "rate_limited", False, None,
         NOW + 4, NOW + 4),
        (Answer(429, NOW), 0, 0.0, PENDING, "rate_limited", False, None,
         NOW + DEFAULT_PAUSE, NOW + DEFAULT_PAUSE),
        (Answer(429, NOW, retry_after="soon"), 0, 0.0, PENDING, "rate_limited", False, None,
         NOW + DEFAULT_PAUSE, NOW + DEFAULT_PAUSE),
        # a 429 never dead-letters, however old the event
        (Answer(429, NOW, retry_after="2"), 9, 40 * DAY, PENDING, "rate_limited", False, None,
         NOW + 2, NOW + 2),
        # a 503 with Retry-After: a plain retry, no earlier than it says
        (Answer(503, NOW, retry_after="30"), 0, 0.0, PENDING, "retry", True, None, None,
         NOW + 30),
        # too old: the retry becomes an expiry
        (Answer(500, NOW), 2, 31 * DAY, DEAD, "expired", True, None, None, None),
    ],
)  # fmt: skip
def test_decision_table(
    answer: Answer, attempts: int, age: float, state: EventState, label: str, counts: bool,
    breaker: str | None, pause: float | None, due: float | None,
) -> None:  # fmt: skip
    decision = decide(answer, attempts, NOW - age, NOW, RULES, random.Random(0))
    assert (decision.state, decision.outcome, decision.counts) == (state, label, counts)
    assert decision.breaker == breaker
    assert decision.pause_until == pause
    assert decision.next_attempt_at == due
    assert decision.advert == answer.advert or decision.verdict in (Verdict.AUTH, Verdict.OUTAGE)


def test_a_retry_is_due_within_the_backoff_ceiling_of_its_attempt() -> None:
    for attempts, ceiling in [(0, 1.0), (1, 2.0), (4, 16.0), (20, 300.0)]:
        dues = [
            decide(Answer(500, NOW), attempts, NOW, NOW, RULES, random.Random(seed))
            for seed in range(50)
        ]
        assert all(NOW <= d.next_attempt_at <= NOW + ceiling for d in dues if d.next_attempt_at)
        assert {d.outcome for d in dues} == {"retry"}


def test_expired_errors_keep_the_last_error() -> None:
    decision: Decision = decide(
        Answer(503, NOW, "HTTP 503"), 1, NOW - 31 * DAY, NOW, RULES, random.Random(0)
    )
    assert decision.error is not None
    assert decision.error.startswith("expired: not delivered within max_age (31.0 days old)")
    assert decision.error.endswith("last error: HTTP 503")


def test_breaker_probes_once_after_a_growing_delay() -> None:
    rng = random.Random(3)
    breaker = Breaker(base=1.0, cap=8.0)
    assert breaker.allowance(0.0) == 1  # a new flusher starts with one probe
    breaker.close()
    assert breaker.allowance(0.0) is None
    assert breaker.trip("outage", 0.0, rng, "refused") is True
    assert breaker.allowance(0.0) == 0
    assert breaker.trip("outage", 0.1, rng, "refused") is False  # same wave: not counted again
    assert breaker.failures == 1
    delays = []
    now = 0.0
    for _ in range(6):
        delays.append(breaker.retry_at - now)
        now = breaker.retry_at
        assert breaker.allowance(now) == 1
        assert breaker.trip("outage", now, rng, "refused") is False
    assert delays[0] <= 1.0 and all(d <= 8.0 for d in delays) and delays[-1] >= 4.0
    assert breaker.close() == "outage" and breaker.allowance(now) is None
