"""Delivery policy: classification, backoff with full jitter, Retry-After, pacing, breaker."""

from __future__ import annotations

import random
from datetime import datetime, timezone
from email.utils import format_datetime

import pytest

from cms_outbox.policy import (
    Breaker,
    Bucket,
    Verdict,
    backoff,
    classify,
    parse_retry_after,
    slow_down,
    speed_up,
    take_tokens,
)


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


def test_token_bucket_paces_at_just_under_the_rate() -> None:
    bucket, now, sent = Bucket(0.0, 0.0, 1.0), 0.0, 0
    while now < 60.0:
        bucket, granted = take_tokens(bucket, 8, now, per_minute=600)
        if granted >= 1:
            sent += int(granted)
            assert granted <= 6  # bursts stay within 1% of the per-minute limit
        else:
            now += -granted
    assert 0.95 * 600 <= sent <= 600


def test_429_halves_the_rate_and_pauses_until_retry_after() -> None:
    bucket = slow_down(Bucket(1.0, 0.0, 1.0), 0.0, per_minute=60, pause=5.0)
    assert bucket.rate_factor == 0.5
    _, wait = take_tokens(bucket, 1, 0.0, per_minute=60)
    assert wait <= -5.0
    recovered = bucket
    for _ in range(10):
        recovered = speed_up(recovered)
    assert recovered.rate_factor == 1.0


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
