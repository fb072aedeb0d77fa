"""Pacing by table: headers read, the budget taken, paused by 429s, and limits learned. No I/O."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from cms_outbox import ConfigurationError
from cms_outbox.advert import Advert, parse_advert
from cms_outbox.pacing import (
    ASSUMED,
    AUTO,
    BURST,
    DEFAULT_PAUSE,
    SAFETY,
    UNPACED,
    Budget,
    Grant,
    Mode,
    Quota,
    RateLimit,
    Source,
    burst,
    hear,
    in_force,
    rate_limited,
    refund,
    take,
)

NOW = 1_800_000_000.0
CEILING_30 = RateLimit(Mode.CEILING, 30)


@pytest.mark.parametrize(
    ("value", "parsed"),
    [("auto", AUTO), (None, UNPACED), (0, UNPACED), (60, RateLimit(Mode.CEILING, 60)),
     (AUTO, AUTO)],
)  # fmt: skip
def test_rate_limit_setting_has_one_representation(value: object, parsed: RateLimit) -> None:
    assert RateLimit.parse(value) == parsed
    assert parsed.paced is (parsed.mode is not Mode.UNPACED)


@pytest.mark.parametrize("value", [-1, "60", 2.5, True, "AUTO!", []])
def test_rate_limit_setting_rejects_anything_else_naming_the_field(value: object) -> None:
    with pytest.raises(ConfigurationError, match="rate_limit"):
        RateLimit.parse(value)


@pytest.mark.parametrize(
    ("headers", "advert"),
    [
        ({}, Advert()),
        ({"ratelimit-policy": "default;q=60;w=60", "ratelimit": "default;r=12;t=17"},
         Advert(Quota(60, 60), None, 12, NOW + 17)),
        ({"ratelimit-policy": '"burst";q=100;w=60, "daily";q=1000;w=86400',
          "ratelimit": '"daily";r=900;t=3600, "burst";r=50;t=10'},
         Advert(Quota(1000, 86400), None, 900, NOW + 3600)),
        ({"ratelimit-policy": "default;q=30;w=6"}, Advert(Quota(30, 6))),
        ({"x-ratelimit-limit": "30", "x-ratelimit-remaining": "7",
          "x-ratelimit-reset": str(int(NOW) + 4)}, Advert(None, 30, 7, NOW + 4)),
        ({"x-ratelimit-limit": "30", "x-ratelimit-remaining": "7", "x-ratelimit-reset": "4"},
         Advert(None, 30, 7, NOW + 4)),
        # malformed or partial: ignored, never an error
        ({"ratelimit-policy": "default;q=abc;w=60", "ratelimit": "default;r=-1;t=x"}, Advert()),
        ({"ratelimit-policy": "default;q=0;w=60"}, Advert()),
        ({"ratelimit-policy": ";;,,", "ratelimit": "default"}, Advert()),
        ({"x-ratelimit-limit": "lots", "x-ratelimit-remaining": "7"}, Advert()),
        ({"x-ratelimit-remaining": "7", "x-ratelimit-reset": "inf"}, Advert()),
    ],
)  # fmt: skip
def test_advertised_headers_are_read_and_junk_ignored(
    headers: dict[str, str], advert: Advert
) -> None:
    assert parse_advert(headers, NOW) == advert


@pytest.mark.parametrize(
    ("budget", "limit", "quota", "source"),
    [
        (Budget(), AUTO, ASSUMED, Source.ASSUMED),
        (Budget(), CEILING_30, Quota(30, 60), Source.CONFIGURED),
        (Budget(), RateLimit(Mode.CEILING, 600), Quota(600, 60), Source.CONFIGURED),
        (Budget(quota=Quota(30, 6), source=Source.ADVERTISED), AUTO, Quota(30, 6),
         Source.ADVERTISED),
        (Budget(quota=Quota(30, 6), source=Source.ADVERTISED), CEILING_30, Quota(30, 60),
         Source.CONFIGURED),  # never above an explicit ceiling
        (Budget(quota=Quota(10, 60), source=Source.LEARNED), CEILING_30, Quota(10, 60),
         Source.LEARNED),
    ],
)  # fmt: skip
def test_limit_in_force_and_its_source(
    budget: Budget, limit: RateLimit, quota: Quota, source: Source
) -> None:
    assert in_force(budget, limit) == (quota, source)


def test_a_fresh_budget_grants_its_burst_then_paces_evenly() -> None:
    budget, grant = take(Budget(), 8, NOW, AUTO)
    assert grant == Grant(int(burst(ASSUMED)))
    assert 1 < burst(ASSUMED) <= BURST
    budget, grant = take(budget, 8, NOW, AUTO)
    assert grant.requests == 0 and 0.9 < grant.wait < 1.1  # 60/min: one a second


def test_a_take_with_an_earlier_clock_reading_refills_no_interval_twice() -> None:
    """Two flushers: one read the clock, the other read it later and took first. The
    first one's take, with its earlier time, must not rewind the refill."""
    budget = Budget(quota=Quota(600, 60), source=Source.ADVERTISED, tokens_at=NOW)
    limit = RateLimit.parse(600)
    granted = 0
    for now in (NOW + 0.4, NOW, NOW + 0.4):  # the later reading took first
        budget, grant = take(budget, 16, now, limit)
        granted += grant.requests
    assert granted == math.floor(0.4 * 10 * SAFETY)  # what 0.4 s refills: 3, not 7


@pytest.mark.parametrize(
    ("quota", "limit"), [(Quota(30, 6), AUTO), (Quota(120, 6), AUTO), (ASSUMED, AUTO),
                         (ASSUMED, CEILING_30)],
)  # fmt: skip
def test_paced_sending_stays_under_the_quota_in_every_window(
    quota: Quota, limit: RateLimit
) -> None:
    budget, now, sent = Budget(quota=quota, source=Source.ADVERTISED), NOW, []
    effective, _ = in_force(budget, limit)
    while now < NOW + 20 * effective.window:
        budget, grant = take(budget, 8, now, limit)
        sent += [now] * grant.requests
        now += grant.wait if not grant.requests else 0.0
    for start in sent:  # every sliding window starting at a request
        in_window = sum(1 for t in sent if start <= t < start + effective.window)
        assert in_window <= effective.requests + burst(effective)
    later = [t for t in sent if t >= NOW + effective.window]
    achieved = len(later) / (19 * effective.window) / effective.per_second
    assert 0.95 <= achieved <= 1.0


def test_remaining_only_lowers_what_is_sent_before_the_reset() -> None:
    budget = Budget(quota=Quota(18, 6), source=Source.ADVERTISED, tokens=5, tokens_at=NOW)
    budget = hear(budget, Advert(remaining=2, reset_at=NOW + 3), NOW)
    budget, grant = take(budget, 8, NOW, AUTO)
    assert grant.requests == 1  # tokens allow 1.5, remaining 2: the lower one
    budget, grant = take(budget, 8, NOW + 0.5, AUTO)
    assert grant.requests == 1 and budget.remaining == 0
    budget, grant = take(budget, 8, NOW + 1.0, AUTO)
    assert grant.requests == 0 and grant.wait == pytest.approx(2.0)  # nothing more until the reset
    # a higher remaining for the same window never raises it
    assert hear(budget, Advert(remaining=20, reset_at=NOW + 3.2), NOW + 1).remaining == 0
    budget, grant = take(budget, 8, NOW + 3.0, AUTO)
    assert grant.requests == 1 and budget.remaining is None  # renewed: tokens govern again


def test_advertised_policy_replaces_the_assumed_one() -> None:
    budget = hear(Budget(), Advert(Quota(120, 6)), NOW)
    assert (budget.quota, budget.source) == (Quota(120, 6), Source.ADVERTISED)
    assert hear(budget, Advert(), NOW) == budget  # headers gone: keep what we know


def test_x_ratelimit_window_is_inferred_from_consecutive_resets() -> None:
    budget = hear(Budget(), Advert(limit=30, remaining=29, reset_at=NOW + 6), NOW)
    assert budget.quota == Quota(30, 6)
    budget = hear(budget, Advert(limit=30, remaining=29, reset_at=NOW + 12), NOW + 6.1)
    assert budget.quota == Quota(30, 6) and budget.reset_at == NOW + 12
    # a first guess too short (heard late in a window) is corrected at the next reset
    guessed = hear(Budget(), Advert(limit=30, remaining=29, reset_at=NOW + 2), NOW)
    assert guessed.quota == Quota(30, 2)
    corrected = hear(guessed, Advert(limit=30, remaining=29, reset_at=NOW + 8), NOW + 2.1)
    assert corrected.quota == Quota(30, 6)
    # after idle windows, the gap between resets is not the window
    idle = hear(corrected, Advert(limit=30, remaining=29, reset_at=NOW + 26), NOW + 20.5)
    assert idle.quota == Quota(30, 6)


def test_a_429_pauses_everyone_until_its_end_and_the_wave_counts_once() -> None:
    budget = Budget(quota=Quota(30, 6), source=Source.ADVERTISED, tokens=1.0, tokens_at=NOW)
    paused = rate_limited(budget, NOW, NOW + 4, Advert(Quota(30, 6)), AUTO)
    assert paused.paused_until == NOW + 4 and paused.quota == Quota(30, 6)
    _, grant = take(paused, 8, NOW + 1, AUTO)
    assert grant.requests == 0 and grant.wait == pytest.approx(3.0)
    again = rate_limited(paused, NOW + 0.1, NOW + 4, Advert(), AUTO)
    assert again.quota == paused.quota and again.source is Source.ADVERTISED  # same wave


def test_without_headers_a_429_halves_then_the_next_one_measures_the_real_quota() -> None:
    budget = Budget(quota=Quota(120, 6), source=Source.ADVERTISED)
    first = rate_limited(budget, NOW, NOW + 5, Advert(), AUTO)
    assert (first.quota, first.source) == (Quota(60, 6), Source.LEARNED)
    assert first.counted_since == NOW + 5
    # after the pause, 30 accepted and the 31st refused, in one 6 s window
    counted = replace(first, counted=31)
    second = rate_limited(counted, NOW + 8, NOW + 11, Advert(), AUTO)
    assert second.quota == Quota(30, 6) and second.source is Source.LEARNED


def test_a_learned_limit_is_probed_upward_after_a_quiet_period_and_a_failed_probe_undone() -> None:
    learned = Budget(quota=Quota(30, 6), source=Source.LEARNED, changed_at=NOW, tokens_at=NOW)
    quiet, _ = take(replace(learned, tokens_at=NOW + 9.9), 1, NOW + 10, AUTO)
    assert quiet.quota == Quota(30, 6)  # busy, but not for a quiet period yet
    probed, _ = take(replace(learned, tokens_at=NOW + 30.9), 1, NOW + 31, AUTO)
    assert probed.quota.requests == pytest.approx(33) and probed.probed_from == 30
    undone = rate_limited(probed, NOW + 33, NOW + 36, Advert(), AUTO)
    assert undone.quota == Quota(30, 6) and undone.changed_at == NOW + 33


def test_no_probe_while_not_sending_at_the_limit() -> None:
    learned = Budget(quota=Quota(30, 6), source=Source.LEARNED, changed_at=NOW, tokens_at=NOW)
    idle, _ = take(learned, 1, NOW + 31, AUTO)  # nothing taken for 31 s: idle, not quiet
    assert idle.quota == Quota(30, 6) and idle.changed_at == NOW + 31


def test_an_assumed_limit_is_probed_too_but_never_an_advertised_or_configured_one() -> None:
    start = Budget(tokens_at=NOW)
    first, _ = take(start, 1, NOW, AUTO)
    assert first.changed_at == NOW  # the quiet period starts with the first request
    busy = replace(first, tokens_at=NOW + 299.5)
    probed, _ = take(busy, 1, NOW + 300, AUTO)
    assert probed.quota.requests == pytest.approx(66) and probed.source is Source.LEARNED
    for budget, limit in [(replace(busy, source=Source.ADVERTISED), AUTO), (busy, CEILING_30)]:
        kept, _ = take(budget, 1, NOW + 300, limit)
        assert kept.quota == ASSUMED


def test_a_429_without_any_end_pauses_the_default_time() -> None:
    paused = rate_limited(Budget(), NOW, None, Advert(), AUTO)
    assert paused.paused_until == NOW + DEFAULT_PAUSE


def test_refund_gives_back_tokens_and_remaining() -> None:
    budget = Budget(tokens=0.0, remaining=3, counted=4)
    assert refund(budget, 2) == replace(budget, tokens=2.0, remaining=5, counted=2)


@pytest.mark.parametrize(
    ("flag", "parsed"),
    [("auto", AUTO), ("AUTO", AUTO), ("0", UNPACED), ("90", RateLimit(Mode.CEILING, 90))],
)
def test_rate_limit_flag_reads_auto_or_a_number(flag: str, parsed: RateLimit) -> None:
    from cms_outbox.cli.arguments import rate_limit

    assert rate_limit(flag) == parsed


def test_a_bad_rate_limit_flag_is_one_line_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    from cms_outbox.cli import main

    assert main(["flush", "--rate-limit", "fast"]) == 2
    assert "argument --rate-limit: invalid integer 'fast'" in capsys.readouterr().err
