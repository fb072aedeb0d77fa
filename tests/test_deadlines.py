"""Every deadline is kept whatever the service does: stalled reads, a pass in progress, a pause.

The service holds its answer far longer than any deadline asked (``STALL``), so what a
call returns shows whether it kept its deadline: a request still in flight, an event
not yet recorded. A call that waited for the answer instead fails those checks, and
``HANG`` (well under ``STALL``) bounds each call so that it fails rather than waits.
No verdict depends on how fast the machine is; nothing sleeps a fixed time.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from cms_outbox import CMSClient, EventState, TrackResult
from cms_outbox.sandbox import Sandbox
from tests.conftest import TOKEN, returns, wait_until

Factory = Callable[..., CMSClient]
STALL = 300.0  # seconds the sandbox holds an answer: no deadline here is that long
HANG = 60.0  # seconds after which a call with a deadline of a few has not kept it
WAITING = (EventState.PENDING, EventState.IN_FLIGHT)


def connect(make_client: Factory, sandbox: Sandbox, **options: Any) -> CMSClient:
    options.setdefault("token", TOKEN)
    options.setdefault("rate_limit", None)
    options.setdefault("final_flush_timeout", 1.0)
    options.setdefault("read_timeout", 2 * STALL)  # the answer is waited for, not timed out
    return make_client(host=sandbox.url, **options)


def arrived(sandbox: Sandbox, count: int = 1) -> Callable[[], bool]:
    return lambda: len(sandbox.requests) >= count


def left_in_flight(client: CMSClient) -> None:
    """Flush until the one pending event's request is on the wire, stalled: each flush
    returns by its deadline, delivering nothing (a loaded machine may send nothing within
    the first one's second)."""

    def sent() -> bool:
        report = returns(lambda: client.flush(timeout=1.0), HANG)
        assert (report.delivered, report.pending) == (0, 1)
        return client.flusher.strays == 1

    assert wait_until(sent, step=0)


def test_flush_returns_on_time_while_a_request_stalls_and_records_it_later(
    make_client: Factory, sandbox: Sandbox
) -> None:
    client = connect(make_client, sandbox)
    event = client.track_lead("signup", "user-1", click_id="c")
    sandbox.set_faults(stall=STALL)
    left_in_flight(client)  # to finish in the background
    assert client.result(event.event_id).state is EventState.IN_FLIGHT
    again = returns(lambda: client.flush(timeout=1.0), HANG)  # still in flight: not resent
    assert again.pending == 1 and len(sandbox.requests) == 1
    sandbox.down()  # the stalled request ends without an answer; that is recorded later
    assert wait_until(lambda: client.result(event.event_id).state is EventState.PENDING)
    assert client.flusher.strays == 0
    sandbox.up()
    sandbox.clear_faults()
    assert client.flush().delivered == 1
    assert [r.idempotency_key for r in sandbox.requests] == [event.event_id] * 2
    assert client.flusher.totals["delivered"] == 1


def test_wait_returns_on_time_while_its_request_stalls(
    make_client: Factory, sandbox: Sandbox
) -> None:
    client = connect(make_client, sandbox)
    # A first event delivered: the flusher's threads and connection are up, its circuit
    # closed, so the next requests leave at once.
    first = client.track_lead("signup", "user-0", click_id="c", wait=STALL)
    assert first.state is EventState.DELIVERED
    sandbox.set_faults(stall=STALL)
    results: list[TrackResult] = []

    def waited_in_flight() -> bool:
        """A call whose request left within its wait and stalls: it returns by its deadline,
        in flight (a loaded machine may send nothing within one wait: then it is pending)."""
        customer = f"user-{len(results) + 1}"

        def call() -> TrackResult:
            return client.track_lead("signup", customer, click_id="c", wait=2.0)

        results.append(returns(call, HANG))
        assert results[-1].success and results[-1].state in WAITING
        return results[-1].state is EventState.IN_FLIGHT

    assert wait_until(waited_in_flight, step=0)
    sandbox.down()  # the stalled requests end without an answer; that is recorded later
    assert wait_until(
        lambda: {client.result(r.event_id).state for r in results} == {EventState.PENDING}
    )


def test_flush_returns_on_time_while_the_background_pass_is_stuck(
    make_client: Factory, sandbox: Sandbox
) -> None:
    client = connect(make_client, sandbox, flush="background")
    sandbox.set_faults(stall=STALL)
    client.track_lead("signup", "user-1", click_id="c")
    assert wait_until(arrived(sandbox))  # the background pass waits for its answer
    assert client.flusher.busy
    report = returns(lambda: client.flush(timeout=1.0), HANG)
    assert (report.delivered, report.pending) == (0, 1)
    assert client.flusher.busy  # the background pass still holds on
    sandbox.stop()  # cuts the stall short


def test_flush_reports_what_the_background_pass_delivered_meanwhile(
    make_client: Factory, sandbox: Sandbox
) -> None:
    """One customer's chain goes out one request at a time, each answered after 0.5 s: the
    pass is still at work seconds after its first request, when the flush comes."""
    client = connect(make_client, sandbox, flush="background", workers=1)
    sandbox.set_faults(stall=0.5)
    chain = [client.track_lead("step", "user-1", click_id="c") for _ in range(8)]
    assert wait_until(arrived(sandbox)) and client.flusher.busy
    before = client.flusher.totals["delivered"]  # the first answer is still on its way
    report = client.flush(timeout=60.0)  # waits for that pass, then finds nothing left
    assert [client.result(e.event_id).state for e in chain] == [EventState.DELIVERED] * 8
    # What was delivered from the flush's start: not those before it (an answer may land
    # between reading ``before`` and that start), and not none.
    assert 1 <= report.delivered <= 8 - before
    assert report.pending == 0


def test_close_keeps_its_deadline_with_a_request_in_flight(
    make_client: Factory, sandbox: Sandbox
) -> None:
    client = connect(make_client, sandbox, flush="background", final_flush_timeout=1.0)
    sandbox.set_faults(stall=STALL)
    event = client.track_lead("signup", "user-1", click_id="c")
    assert wait_until(arrived(sandbox))
    returns(client.close, HANG)
    reader = connect(make_client, sandbox)  # the event is still stored, leased, not lost
    assert reader.result(event.event_id).state is EventState.IN_FLIGHT
    sandbox.stop()  # the connection drops: that late outcome is still recorded
    assert wait_until(lambda: reader.result(event.event_id).state is EventState.PENDING)


def test_close_without_background_flusher_keeps_its_deadline(
    make_client: Factory, sandbox: Sandbox
) -> None:
    client = connect(make_client, sandbox, final_flush_timeout=1.0)
    event = client.track_lead("signup", "user-1", click_id="c")
    sandbox.set_faults(stall=STALL)
    left_in_flight(client)
    returns(client.close, HANG)
    reader = connect(make_client, sandbox)
    assert reader.result(event.event_id).state is EventState.IN_FLIGHT  # close did not wait
    sandbox.stop()


def test_flush_keeps_its_deadline_when_the_probe_of_a_paused_breaker_stalls(
    make_client: Factory, sandbox: Sandbox
) -> None:
    client = connect(make_client, sandbox, read_timeout=0.3)
    client.track_lead("signup", "user-1", click_id="c")
    sandbox.set_faults(stall=STALL)
    assert client.flush().paused == "outage"  # a read timeout opened the circuit
    slow = connect(make_client, sandbox)  # same outbox, a long read timeout, breaker open
    slow.flusher.breaker.trip("outage", time.time(), slow.flusher.rng, "test")
    left_in_flight(slow)  # an explicit flush probes once; the probe stalls
    result = returns(lambda: slow.track_lead("signup", "user-2", click_id="c", wait=2.0), HANG)
    assert result.state is EventState.PENDING
    assert slow.flusher.strays == 1  # the probe still stalls: user-2 waits behind it
    sandbox.stop()


def test_flush_returns_on_time_while_the_background_pass_paces(
    make_client: Factory, sandbox: Sandbox
) -> None:
    """The reported case: 40 events at 6 a minute; the pass holds its lock for ~6 minutes."""
    client = connect(make_client, sandbox, flush="background", rate_limit=6)
    for n in range(40):
        client.track_lead("signup", f"user-{n}", click_id="c")
    assert wait_until(arrived(sandbox)) and client.flusher.busy
    report = returns(lambda: client.flush(timeout=1.0), HANG)
    assert report.pending > 30  # at most 6 more can have gone out within HANG
    assert client.flusher.busy  # the pacing pass goes on
