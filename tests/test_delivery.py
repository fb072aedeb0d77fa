"""Delivery against the sandbox on loopback: order, classification, pauses and outages."""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import Future
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import pytest

from cms_outbox import CMSClient, EventState, StorageError, TrackResult
from cms_outbox.pacing import Quota, burst
from cms_outbox.sandbox import Sandbox
from cms_outbox.transport import Reply
from tests.conftest import TOKEN, FakeClock, accepted_in_order, returns, wait_until

Factory = Callable[..., CMSClient]


@pytest.fixture
def make_client(make_backend_client: Factory) -> Factory:
    """Every delivery test runs on each backend."""
    return make_backend_client


def connect(make_client: Factory, sandbox: Sandbox, **options: Any) -> CMSClient:
    options.setdefault("token", TOKEN)
    options.setdefault("rate_limit", None)
    return make_client(host=sandbox.url, **options)


def enqueue_story(client: CMSClient, customers: int, per_customer: int) -> dict[str, list[str]]:
    """Standard leads, deferred setups with follow-ups, and sales, interleaved across customers."""
    rng = random.Random(7)
    order: dict[str, list[str]] = defaultdict(list)
    plan = [c for c in range(customers) for _ in range(per_customer)]
    rng.shuffle(plan)
    for n, c in enumerate(plan):
        customer = f"customer-{c}"
        deferred = c % 2 == 0
        if not order[customer] and deferred:
            result = client.track_lead("lead_captured", customer, click_id=f"click-{c}",
                                       mode="deferred")  # fmt: skip
        elif n % 5 == 0:
            click = None if deferred else f"click-{c}"
            result = client.track_sale("purchase", customer, f"inv-{n}", 100 + n, "usd",
                                       click_id=click)  # fmt: skip
        else:
            result = client.track_lead(
                "step", customer, click_id=None if deferred else f"click-{c}"
            )
        order[customer].append(result.event_id)
    return order


def test_backlog_from_an_outage_is_delivered_once_in_order_by_one_flush(
    make_client: Factory, sandbox: Sandbox
) -> None:
    sandbox.down()
    client = connect(make_client, sandbox, workers=8)
    order = enqueue_story(client, customers=50, per_customer=20)
    outage = client.flush()
    assert outage.paused == "outage" and outage.delivered == 0 and outage.pending == 1000
    sandbox.up()
    report = client.flush()
    assert (report.delivered, report.dead, report.pending, report.blocked) == (1000, 0, 0, 0)
    assert accepted_in_order(sandbox) == order
    keys = [a.idempotency_key for a in sandbox.accepted]
    assert len(keys) == len(set(keys)) == 1000
    assert client.store.count_by_state() == {"delivered": 1000}


def test_background_flusher_delivers_the_backlog_without_any_call(
    make_client: Factory, sandbox: Sandbox
) -> None:
    sandbox.down()
    client = connect(make_client, sandbox, flush="background", interval=0.2)
    order = enqueue_story(client, customers=10, per_customer=10)
    # The flusher has tried and found the service down: it delivers once it is back.
    assert wait_until(lambda: client.store.control_row()["outage_since"] is not None)
    assert sandbox.accepted == []
    sandbox.up()
    assert sandbox.wait_for(lambda sb: len(sb.accepted) == 100, timeout=60)
    assert accepted_in_order(sandbox) == order


def test_online_event_is_sent_at_once_by_the_background_flusher(
    make_client: Factory, sandbox: Sandbox
) -> None:
    client = connect(make_client, sandbox, flush="background", interval=3600)
    first = client.track_lead("signup", "user-0", click_id="c")
    assert sandbox.wait_for(lambda sb: len(sb.accepted) == 1, timeout=60)
    # That pass over, the next one is an hour away: only a wake-up can send now.
    assert wait_until(lambda: client.store.count_by_state() == {"delivered": 1})
    assert wait_until(lambda: not client.flusher.busy)
    result = client.track_lead("signup", "user-1", click_id="c")
    assert sandbox.wait_for(lambda sb: len(sb.accepted) == 2, timeout=60)
    assert [a.idempotency_key for a in sandbox.accepted] == [first.event_id, result.event_id]


def test_wire_request_carries_the_documented_headers(
    make_client: Factory, sandbox: Sandbox
) -> None:
    client = connect(make_client, sandbox)
    result = client.track_sale("purchase", "user-1", "inv-1", 4999, "USD", click_id="c")
    client.flush()
    [accepted] = sandbox.accepted
    assert accepted.idempotency_key == result.event_id
    assert accepted.payload == {
        "clickId": "c", "eventName": "purchase", "customerExternalId": "user-1",
        "invoiceId": "inv-1", "amount": 4999, "currency": "USD",
        "timestamp": accepted.payload["timestamp"],
    }  # fmt: skip
    delivered = client.result(result.event_id)
    assert delivered.state is EventState.DELIVERED and delivered.status_code == 200
    assert isinstance(delivered.data, dict) and delivered.data["success"] is True


def test_retry_after_on_429_is_honoured(make_client: Factory, sandbox: Sandbox) -> None:
    # A day off the wall clock: the wait is counted on the client's clock, not the host's.
    clock = FakeClock(datetime.now(timezone.utc) - timedelta(days=1))
    client = connect(make_client, sandbox, clock=clock)
    event = client.track_lead("signup", "user-1", click_id="c")
    sandbox.set_faults(force_status=429, force_count=1, retry_after="2")
    first = client.flush()
    assert (first.retried, first.pending) == (1, 1)
    clock.advance(1.9)
    assert client.flush().pending == 1
    assert len(sandbox.requests) == 1  # not before Retry-After
    clock.advance(30)  # past it, whatever the request itself took
    assert client.flush().delivered == 1
    assert client.result(event.event_id).state is EventState.DELIVERED
    assert [r.idempotency_key for r in sandbox.requests] == [event.event_id] * 2


def test_server_errors_back_off_with_jitter(make_client: Factory, sandbox: Sandbox) -> None:
    clock = FakeClock()  # stands still: no backoff comes due during the test
    client = connect(make_client, sandbox, clock=clock)
    events = [client.track_lead("signup", f"user-{n}", click_id="c").event_id for n in range(20)]
    sandbox.set_faults(force_status=500)
    report = client.flush()
    assert report.retried >= 20 and report.pending == 20 and report.dead == 0
    rows = [client.store.get(e) for e in events]
    delays = [row["next_attempt_at"] - row["last_attempt_at"] for row in rows]  # type: ignore[index]
    ceilings = [2.0 ** (row["attempts"] - 1) for row in rows]  # type: ignore[index]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings))  # full jitter under 2^(n-1)
    assert len({round(d, 3) for d in delays}) > 10  # jittered, not in lockstep
    sent = len(sandbox.requests)
    # Nothing is due until the clock moves: a flush that sat out the backoff would hang.
    assert returns(lambda: client.flush().pending) == 20
    assert len(sandbox.requests) == sent
    clock.advance(30)  # past every backoff, whatever its request took
    assert client.flush().retried == 20 and len(sandbox.requests) == sent + 20


def test_422_is_dead_with_the_servers_error_kept(make_client: Factory, sandbox: Sandbox) -> None:
    dead: list[TrackResult] = []
    client = connect(make_client, sandbox, on_dead=dead.append)
    event = client.track_lead("signup", "user-1", click_id="c")
    sandbox.set_faults(force_status=422, force_count=1)
    report = client.flush()
    assert (report.dead, report.pending) == (1, 0)
    result = client.result(event.event_id)
    assert result.success is False and result.state is EventState.DEAD
    assert result.status_code == 422 and result.error is not None and "422" in result.error
    assert [r.event_id for r in dead] == [event.event_id]
    [attempt] = client.store.attempts_of(client.store.get(event.event_id)["id"])  # type: ignore[index]
    assert attempt["status_code"] == 422 and "success" in attempt["response"]


def test_409_counts_as_delivered(make_client: Factory, sandbox: Sandbox) -> None:
    client = connect(make_client, sandbox)
    event = client.track_lead("signup", "user-1", click_id="c")
    sandbox.set_faults(force_status=409, force_count=1)
    assert client.flush().delivered == 1
    assert client.result(event.event_id).state is EventState.DELIVERED


def test_bad_token_pauses_everything_and_a_corrected_token_delivers(
    make_client: Factory, sandbox: Sandbox
) -> None:
    wrong = connect(make_client, sandbox, token="revoked-token")
    for n in range(10):
        wrong.track_lead("signup", f"user-{n}", click_id="c")
    report = wrong.flush()
    assert report.paused == "auth" and report.pending == 10 and report.dead == 0
    assert len(sandbox.requests) == 1  # one 401 pauses the rest: the queue is not burnt
    assert wrong.flush().pending == 10  # an explicit flush probes once more, still paused
    assert wrong.store.control_row()["auth_paused_since"] is not None
    fixed = connect(make_client, sandbox)
    assert fixed.flush().delivered == 10
    assert len(sandbox.accepted) == 10


def test_dead_deferred_setup_blocks_followups_until_retried(
    make_client: Factory, sandbox: Sandbox
) -> None:
    client = connect(make_client, sandbox)
    setup = client.track_lead("lead_captured", "user-1", click_id="c1", mode="deferred")
    followups = [
        client.track_lead("kyc_completed", "user-1"),
        client.track_sale("purchase", "user-1", "inv-1", 4999, "USD"),
    ]
    other = client.track_lead("signup", "user-2", click_id="c2")
    sandbox.set_faults(force_status=422, force_count=1)
    report = client.flush()
    assert (report.dead, report.blocked, report.delivered) == (1, 2, 1)
    assert [client.result(f.event_id).state for f in followups] == [EventState.BLOCKED] * 2
    assert [a.idempotency_key for a in sandbox.accepted] == [other.event_id]
    assert client.store.retry([setup.event_id]) == 3
    assert client.flush().delivered == 3
    assert [a.idempotency_key for a in sandbox.accepted][1:] == [
        setup.event_id,
        *(f.event_id for f in followups),
    ]


def test_outage_opens_the_circuit_and_probes_sparingly(
    make_client: Factory, sandbox: Sandbox
) -> None:
    """The passes a background flusher runs, one after another, on a clock moved by hand."""
    sandbox.set_faults(reset=True)  # connections accepted, then dropped without an answer
    clock = FakeClock()
    client = connect(make_client, sandbox, clock=clock)
    for n in range(20):
        client.track_lead("signup", f"user-{n}", click_id="c")

    def passes(count: int) -> int:
        for _ in range(count):
            client.flusher.run_pass()
        return len(sandbox.requests)

    assert passes(5) == 1  # a new flusher probes once, then the circuit is open
    assert client.store.control_row()["outage_since"] is not None
    probes = [1]
    for reopened in (1.0, 2.0, 4.0):  # each failed probe reopens it for up to twice as long
        clock.advance(reopened * 0.49)  # under the shortest the jitter allows
        assert passes(5) == probes[-1]
        clock.advance(reopened * 0.51)  # past the longest
        probes.append(passes(5))
    assert probes == [1, 2, 3, 4]  # one probe per reopening, not 20 requests per pass
    sandbox.clear_faults()
    clock.advance(8.0)
    client.flusher.run_pass()
    assert client.store.count_by_state() == {"delivered": 20}
    assert len(sandbox.accepted) == 20


def test_read_timeouts_count_as_outage_and_nothing_is_dead(
    make_client: Factory, sandbox: Sandbox
) -> None:
    client = connect(make_client, sandbox, read_timeout=0.3)
    event = client.track_lead("signup", "user-1", click_id="c")
    sandbox.set_faults(stall=2.0, force_count=None)
    report = client.flush()
    assert report.paused == "outage" and report.pending == 1
    sandbox.clear_faults()
    assert client.flush().delivered == 1
    assert client.result(event.event_id).state is EventState.DELIVERED
    assert sandbox.accepted_count(event.event_id) == 1


def test_connection_refused_keeps_events_pending(make_client: Factory, sandbox: Sandbox) -> None:
    client = connect(make_client, sandbox)
    sandbox.down()
    event = client.track_lead("signup", "user-1", click_id="c")
    assert client.flush().paused == "outage"
    result = client.result(event.event_id)
    assert result.state is EventState.PENDING and result.success is True
    assert "ConnectionError" in (result.error or "")


def test_max_age_is_the_only_way_retries_dead_letter(
    make_client: Factory, sandbox: Sandbox
) -> None:
    clock = FakeClock()
    client = connect(make_client, sandbox, max_age=0.5, clock=clock)
    event = client.track_lead("signup", "user-1", click_id="c")
    sandbox.set_faults(force_status=503)
    client.flush()
    assert client.result(event.event_id).state is EventState.PENDING
    clock.advance(30)  # older than max_age, and past the first backoff (under a second)
    client.flush()
    result = client.result(event.event_id)
    assert result.state is EventState.DEAD and "max_age" in (result.error or "")


def test_wait_reports_the_servers_answer(make_client: Factory, sandbox: Sandbox) -> None:
    client = connect(make_client, sandbox)
    ok = client.track_lead("signup", "user-1", click_id="c", wait=5)
    assert ok.state is EventState.DELIVERED and ok.status_code == 200 and ok.success
    sandbox.set_faults(force_status=422, force_count=1)
    rejected = client.track_lead("signup", "user-2", click_id="c", wait=5)
    assert rejected.success is False and rejected.status_code == 422 and rejected.error
    sandbox.down()
    # Refused: the call returns at once, well before a wait it could not use up.
    offline = returns(lambda: client.track_lead("signup", "user-3", click_id="c", wait=3600))
    assert offline.success is True and offline.state is EventState.PENDING


def test_on_delivered_callback_gets_the_result(make_client: Factory, sandbox: Sandbox) -> None:
    delivered: list[TrackResult] = []
    client = connect(make_client, sandbox, on_delivered=delivered.append)
    event = client.track_lead("signup", "user-1", click_id="c")
    client.flush()
    assert [(r.event_id, r.status_code, r.success) for r in delivered] == [
        (event.event_id, 200, True)
    ]


def test_redact_after_delivery_drops_personal_data(make_client: Factory, sandbox: Sandbox) -> None:
    client = connect(make_client, sandbox, redact_after_delivery=True)
    event = client.track_lead("signup", "user-1", click_id="c", customer_name="Jane Doe",
                              customer_email="jane@example.com",
                              customer_avatar="https://example.com/j.png")  # fmt: skip
    pending_payload = client.store.get(event.event_id)["payload"]  # type: ignore[index]
    assert "jane@example.com" in pending_payload  # kept until delivered
    client.flush()
    [accepted] = sandbox.accepted
    assert accepted.payload["customerEmail"] == "jane@example.com"
    stored = json.loads(client.store.get(event.event_id)["payload"])  # type: ignore[index]
    personal = ("customerName", "customerEmail", "customerAvatar")
    assert stored == {key: value for key, value in accepted.payload.items() if key not in personal}


def test_a_failed_pass_still_counts_what_it_delivered(
    make_sqlite_client: Factory, sandbox: Sandbox, sqlite_url: str
) -> None:
    """A daemon's stop line sums the flusher's totals: a pass that dies on a storage
    error after some deliveries must not take their count with it."""
    path = sqlite_url.removeprefix("sqlite:///")

    def break_storage(result: TrackResult) -> None:
        with sqlite3.connect(path) as conn:  # the next round's record then fails
            conn.execute("DROP TABLE IF EXISTS cms_outbox_attempts")

    client = connect(make_sqlite_client, sandbox, workers=1, on_delivered=break_storage)
    for n in range(3):
        client.track_lead("signup", f"user-{n}", click_id=f"click-{n}")
    with pytest.raises(StorageError):
        client.flush()
    assert client.flusher.totals == {"delivered": 1, "retried": 0, "dead": 0}
    # The second answer could not be recorded; the third row, queued behind the second
    # request, may have gone out before the pass failed (its lease stays until next pass).
    assert len(sandbox.accepted) in (2, 3)


def test_a_late_request_never_made_gives_its_token_back_even_when_its_hand_back_fails(
    make_sqlite_client: Factory, sandbox: Sandbox, sqlite_url: str
) -> None:
    """Paced on a frozen clock, so that no token ever refills: a request a pass left behind
    at its deadline is not sent after all (its worker found the pass over), and handing
    its row back fails (the database refuses it). Its token is back all the same; the row
    is handed back by the next pass and delivered."""
    path = sqlite_url.removeprefix("sqlite:///")
    held = int(burst(Quota(60, 60)))  # the budget's burst at 60 per minute
    client = connect(make_sqlite_client, sandbox, workers=1, rate_limit=60, clock=FakeClock())
    event = client.track_lead("signup", "user-0", click_id="c")
    flusher = client.flusher
    now = flusher.clock()
    assert flusher.pacer.take(1, now).requests == 1
    [lease] = client.store.lease(flusher.owner, 1, now, 60.0)
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE UPDATE ON cms_outbox_events "
            "WHEN OLD.state = 'in_flight' AND NEW.state = 'pending' "
            "BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    unsent: Future[Reply | None] = Future()
    unsent.set_result(None)  # what a worker returns when it finds the pass over
    flusher.adopt({unsent: lease})  # recorded at once: the answer is in
    assert flusher.strays == 0 and client.store.get(event.event_id)["state"] == "in_flight"  # type: ignore[index]
    budget = client.store.with_budget(lambda budget: (budget, budget))
    assert budget.tokens == held  # the token of the request never made is back

    with sqlite3.connect(path) as conn:
        conn.execute("DROP TRIGGER refuse")
    report = client.flush()  # hands the stranded row back first, then sends it
    assert (report.delivered, report.pending) == (1, 0)
    assert [request.idempotency_key for request in sandbox.accepted] == [event.event_id]


def test_a_pass_that_fails_gives_back_the_tokens_of_requests_it_never_made(
    make_sqlite_client: Factory, sandbox: Sandbox, sqlite_url: str
) -> None:
    """Paced on a frozen clock, so that no token ever refills: a pass leases two rows (one
    on the wire, one queued behind it), the service goes down, and recording the outage
    fails (the database refuses it). The queued row never went out: its token is back, so
    the budget still holds one token per event left, and all of them are delivered."""
    path = sqlite_url.removeprefix("sqlite:///")
    held = int(burst(Quota(60, 60)))  # the budget's burst at 60 per minute
    client = connect(make_sqlite_client, sandbox, workers=1, rate_limit=60, clock=FakeClock())
    client.track_lead("signup", "user-0", click_id="c")
    assert client.flush().delivered == 1  # closes the new flusher's circuit
    sandbox.set_faults(stall=300.0)  # the request on the wire is held until down()
    for n in range(1, held - 1):
        client.track_lead("signup", f"user-{n}", click_id="c")
    failures: list[BaseException] = []

    def fail() -> None:
        try:
            client.flush()
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=fail)
    thread.start()
    assert wait_until(lambda: len(sandbox.requests) == 2)
    assert client.flusher.in_flight == 2  # one on the wire, one queued: two tokens taken
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON cms_outbox_attempts "
            "BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    sandbox.down()  # the held request ends without an answer; the queued one is not sent
    thread.join(60)
    assert [type(exc) for exc in failures] == [StorageError]
    budget = client.store.with_budget(lambda budget: (budget, budget))
    assert len(sandbox.requests) == 2
    assert budget.tokens == held - 2  # one per request made, none for the one never sent

    with sqlite3.connect(path) as conn:
        conn.execute("DROP TRIGGER refuse")
    sandbox.clear_faults()
    sandbox.up()
    report = client.flush()
    assert (report.delivered, report.pending) == (held - 2, 0)
    assert len(sandbox.requests) == held  # the unanswered one again, then the rest


def test_a_stop_sends_none_of_the_rows_leased_behind_the_requests_on_the_wire(
    make_sqlite_client: Factory, sandbox: Sandbox
) -> None:
    """Each worker has a second row leased behind its request so it never waits for the
    database between two; a stop hands that row back unsent, with no attempt recorded."""
    client = connect(make_sqlite_client, sandbox, workers=1)
    client.track_lead("signup", "user-0", click_id="c")  # closes the new flusher's circuit
    client.flush()
    sandbox.set_faults(stall=300.0)  # the request on the wire is held until down()
    for n in range(1, 4):
        client.track_lead("signup", f"user-{n}", click_id="c")
    stop = threading.Event()
    reports: list[Any] = []
    thread = threading.Thread(target=lambda: reports.append(client.flusher.run_pass(stop=stop)))
    thread.start()
    assert wait_until(lambda: len(sandbox.requests) == 2)
    assert client.store.count_by_state()["in_flight"] == 2  # one on the wire, one queued
    assert client.flusher.in_flight == 2
    stop.set()
    assert wait_until(lambda: client.flusher.in_flight == 1)  # the queued one taken back
    sandbox.down()  # the held request ends without an answer
    thread.join(60)
    [report] = reports
    assert (report.delivered, report.pending) == (0, 3)
    assert len(sandbox.requests) == 2
    assert client.store.count_by_state() == {"delivered": 1, "pending": 3}
    with sqlite3.connect(str(client.engine.url.database)) as conn:
        assert conn.execute("SELECT count(*) FROM cms_outbox_attempts").fetchone()[0] == 2


def test_flushers_sharing_an_outbox_never_deadlock(make_client: Factory, sandbox: Sandbox) -> None:
    """Three flushers drain one backlog while each hands its leases back between passes
    and reclaims expired ones: none may lock another's leased rows (MySQL at REPEATABLE
    READ failed here with 1213 Deadlock found)."""
    options = {"workers": 8, "connect_timeout": 0.2, "read_timeout": 0.5, "lease_seconds": 1.0}
    flushers = [connect(make_client, sandbox, **options) for _ in range(3)]
    events = 1500
    for n in range(events):
        flushers[0].track_lead("signup", f"customer-{n % 150}", click_id=f"click-{n}")
    failures: list[str] = []

    def drain(client: CMSClient) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                client.flush()
            except StorageError as exc:
                failures.append(str(exc))
            if client.store.count_by_state() == {"delivered": events}:
                return

    threads = [threading.Thread(target=drain, args=(client,)) for client in flushers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert flushers[0].store.count_by_state() == {"delivered": events}
    assert len(sandbox.accepted) == events
    assert all(
        count == 1 for count in Counter(a.idempotency_key for a in sandbox.accepted).values()
    )
