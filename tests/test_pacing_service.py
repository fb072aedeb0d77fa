"""Pacing against the real sandbox: advertised limits, 429 pauses shared by every flusher."""

from __future__ import annotations

import contextlib
import io
import json
import time
from typing import Any, Callable

import pytest
import requests

from cms_outbox import CMSClient, EventState
from cms_outbox.cli import main as cli_main
from cms_outbox.pacing import Budget, Quota, Source, burst
from cms_outbox.sandbox import Limits, Sandbox
from cms_outbox.status import ActivityTracker, outbox_status
from tests.conftest import TOKEN, FakeClock, wait_until

Factory = Callable[..., CMSClient]


def budget_of(client: CMSClient) -> Budget:
    return client.store.with_budget(lambda budget: (budget, budget))


def leads(client: CMSClient, count: int, customer: str = "c") -> list[str]:
    return [client.track_lead("step", customer, click_id="k").event_id for _ in range(count)]


def test_advertised_policy_replaces_the_assumed_one_for_every_flusher(
    make_client: Factory,
) -> None:
    with Sandbox(token=TOKEN, limits=Limits(600, 6)) as sandbox:
        first = make_client(token=TOKEN, host=sandbox.url)
        other = make_client(token=TOKEN, host=sandbox.url)
        assert budget_of(other).source is Source.ASSUMED
        leads(first, 3)
        assert first.flush(timeout=60).delivered == 3
        budget = budget_of(other)  # another client of the same outbox sees it
        assert (budget.quota, budget.source) == (Quota(600, 6), Source.ADVERTISED)
        assert {r.status for r in sandbox.requests} == {200}


def flush_until(client: CMSClient, delivered: int) -> None:
    """Flush until ``delivered`` events in all are delivered, never more, then once again
    to show that no more go out: each flush returns within half a second, a loaded
    machine only takes more of them."""

    def reached() -> bool:
        client.flush(timeout=0.5)
        count = client.store.count_by_state().get("delivered", 0)
        assert count <= delivered
        return count == delivered

    assert wait_until(reached, step=0)
    client.flush(timeout=0.5)
    assert client.store.count_by_state().get("delivered", 0) == delivered


def test_explicit_ceiling_is_never_exceeded_whatever_is_advertised(make_client: Factory) -> None:
    held = int(burst(Quota(60, 60)))  # what the budget holds at 60/min
    clock = FakeClock()  # the flusher's and the service's: time passes only when told

    def now() -> float:
        return clock().timestamp()

    with Sandbox(token=TOKEN, limits=Limits(600, 6), clock=now) as sandbox:
        client = make_client(token=TOKEN, host=sandbox.url, rate_limit=60, clock=clock)
        leads(client, held + 2, "a")
        flush_until(client, held)  # the burst, and not one more while no time passes
        clock.advance(1.05)  # a second, and the 3% pacing keeps below the ceiling
        flush_until(client, held + 1)  # then one a second: never the 100/s advertised
        clock.advance(1.05)
        flush_until(client, held + 2)
        assert [r.status for r in sandbox.requests] == [200] * (held + 2)


def test_a_429_pauses_every_flusher_and_the_same_event_goes_first(make_client: Factory) -> None:
    clock = FakeClock()  # the flushers' and the service's, moved by hand

    def now() -> float:
        return clock().timestamp()

    with Sandbox(token=TOKEN, limits=Limits(600, 6), clock=now) as sandbox:  # nothing to learn
        first = make_client(token=TOKEN, host=sandbox.url, clock=clock)
        other = make_client(token=TOKEN, host=sandbox.url, clock=clock)
        ids = leads(first, 3)
        sandbox.set_faults(force_status=429, force_count=1, retry_after="2")

        def refused() -> bool:  # however many flushes a loaded machine needs to send it
            assert first.flush(timeout=0.5).delivered == 0
            return budget_of(other).paused_until >= now() + 2.0

        assert wait_until(refused, step=0)
        assert first.store.count_by_state() == {"pending": 3}
        assert other.flush(timeout=0.5).delivered == 0  # the other flusher waits too
        clock.advance(1.9)
        assert other.flush(timeout=0.5).delivered == 0  # until the Retry-After has passed
        assert len(sandbox.requests) == 1

        def flushed_all() -> bool:  # counted in the outbox: an answer may land between flushes
            clock.advance(1.0)
            other.flush(timeout=1.0)
            return first.store.count_by_state() == {"delivered": 3}

        assert wait_until(flushed_all, step=0)
        keys = [r.idempotency_key for r in sandbox.requests]
        assert keys == [ids[0], ids[0], ids[1], ids[2]]  # retried first: order holds
        row = first.store.get(ids[0])
        assert row is not None and row["state"] == EventState.DELIVERED.value
        assert row["attempts"] == 1  # the 429 does not count toward the attempts
        labels = [a["outcome"] for a in first.store.attempts_of(row["id"])]
        assert labels == ["rate_limited", "delivered"]


def test_remaining_holds_back_until_the_reset_without_a_429(make_client: Factory) -> None:
    clock = FakeClock()  # the flusher's and the service's windows: moved by hand

    def now() -> float:
        return clock().timestamp()

    with Sandbox(token=TOKEN, limits=Limits(4, 2), clock=now) as sandbox:
        client = make_client(token=TOKEN, host=sandbox.url, rate_limit=6000, clock=clock)
        other_traffic: dict[str, Any] = {"headers": {"Authorization": f"Bearer {TOKEN}"}}
        body = {"eventName": "x", "customerExternalId": "elsewhere", "clickId": "k"}
        for _ in range(3):  # the same account's other traffic uses most of the window
            requests.post(f"{sandbox.url}/track/lead", json=body, timeout=60, **other_traffic)
        leads(client, 6)

        def delivered_all() -> bool:  # windows pass in steps, not at this machine's pace
            client.flush(timeout=0.5)
            clock.advance(0.5)
            return client.store.count_by_state() == {"delivered": 6}

        assert wait_until(delivered_all, step=0)
        statuses = [r.status for r in sandbox.requests]
        assert statuses.count(429) <= 1  # the first answer can only tell after the fact
        assert budget_of(client).source is Source.ADVERTISED


def test_without_headers_a_429_teaches_a_lower_limit(make_client: Factory) -> None:
    clock = FakeClock()  # stands still until the test moves it past the Retry-After
    with Sandbox(token=TOKEN) as sandbox:
        client = make_client(token=TOKEN, host=sandbox.url, clock=clock)
        leads(client, 1)
        sandbox.set_faults(force_status=429, force_count=1, retry_after="1")

        def refused() -> bool:  # however many flushes a loaded machine needs to send it
            assert client.flush(timeout=0.3).delivered == 0
            return budget_of(client).source is Source.LEARNED

        assert wait_until(refused, step=0)
        budget = budget_of(client)
        assert (budget.quota, budget.source) == (Quota(30, 60), Source.LEARNED)  # halved

        def delivered_later() -> bool:  # counted in the outbox: it may land between flushes
            clock.advance(1.0)
            client.flush(timeout=1.0)
            return client.store.count_by_state() == {"delivered": 1}

        assert wait_until(delivered_later, step=0)


def test_status_and_metrics_show_the_pacing_in_force_and_its_source(
    make_client: Factory, sqlite_url: str
) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest

    from cms_outbox.metrics import OutboxCollector

    with Sandbox(token=TOKEN, limits=Limits(600, 6, "fixed")) as sandbox:
        client = make_client(token=TOKEN, host=sandbox.url)
        assert outbox_status(client.engine).pacing is None  # no paced flusher yet
        leads(client, 2)
        client.flush(timeout=60)
        pacing = outbox_status(client.engine).pacing
        assert pacing is not None
        assert (pacing.requests, pacing.window, pacing.source) == (600, 6, "advertised")
        assert pacing.remaining is not None and pacing.remaining <= 598
        assert pacing.paused_until is None
        shown = json.loads(main_output(["status", "--json", "--database-url", sqlite_url]))
        assert shown["pacing"]["source"] == "advertised"
        assert shown["pacing"]["per_minute"] == 6000.0
        assert shown["pacing"]["window_seconds"] == 6.0
        text = main_output(["status", "--database-url", sqlite_url])
        assert "600 per 6s = 6000.0/min (advertised)" in text

        sandbox.set_faults(force_status=429, force_count=1, retry_after="3600")
        leads(client, 1, "other")
        began = time.monotonic()

        def paused_by_429() -> bool:  # each flush returns at once: the pause is an hour
            client.flush(timeout=0.2)
            pacing = outbox_status(client.engine).pacing
            return pacing is not None and pacing.paused_until is not None

        assert wait_until(paused_by_429, step=0)
        paused = outbox_status(client.engine).pacing
        took = time.monotonic() - began  # what has passed of the pause, at most
        assert paused is not None and paused.paused_until is not None
        assert 3600 - took <= paused.pause_seconds <= 3600
        assert "PAUSED after a 429 until" in main_output(["status", "--database-url", sqlite_url])
        registry = CollectorRegistry(auto_describe=False)
        registry.register(OutboxCollector(ActivityTracker(client.engine)))
        metrics = generate_latest(registry).decode()
        assert 'cms_outbox_pacing_requests_per_minute{source="advertised"} 6000.0' in metrics
        assert "cms_outbox_pacing_pause_seconds 35" in metrics  # under an hour left


def test_an_explicit_ceiling_shows_as_configured(make_client: Factory) -> None:
    with Sandbox(token=TOKEN) as sandbox:  # no headers: nothing advertised
        client = make_client(token=TOKEN, host=sandbox.url, rate_limit=120)
        leads(client, 1)
        client.flush(timeout=60)
        pacing = outbox_status(client.engine).pacing
        assert pacing is not None
        assert (pacing.per_minute, pacing.source) == (120, "configured")


def main_output(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main(argv) == 0
    return out.getvalue()


def test_x_ratelimit_headers_are_followed_and_their_window_found(make_client: Factory) -> None:
    clock = FakeClock()  # the flusher's and the service's windows: moved by hand

    def now() -> float:
        return clock().timestamp()

    with Sandbox(token=TOKEN, limits=Limits(40, 2, "fixed", headers="x"), clock=now) as sandbox:
        client = make_client(token=TOKEN, host=sandbox.url, clock=clock)
        leads(client, 2, "a")
        assert client.flush(timeout=60).delivered == 2
        first = budget_of(client)
        assert first.source is Source.ADVERTISED and first.quota.requests == 40
        clock.advance(first.reset_at + 0.1 - now())  # into the next window, not one later
        leads(client, 2, "b")
        assert client.flush(timeout=60).delivered == 2
        assert budget_of(client).quota == Quota(40, 2)  # one window between two resets
        assert {r.status for r in sandbox.requests} == {200}
