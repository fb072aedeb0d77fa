"""Which deferred setup governs a follow-up, against the sandbox, on every backend.

The rule: the latest deferred setup of the customer enqueued before the follow-up
governs it. Delivered releases it, dead holds it (``blocked``), pending makes it wait.
A setup is made to fail with the sandbox's one-shot forced 422; each customer's events
go out one at a time (FIFO), so the forced answer meets exactly the setup meant.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
from sqlalchemy import create_engine, event

from cms_outbox import CMSClient, EventState, TrackResult
from cms_outbox.sandbox import Sandbox
from cms_outbox.store import Attempt, Store
from tests.conftest import TOKEN, FakeClock, returns

Factory = Callable[..., CMSClient]


@pytest.fixture
def client(make_client: Factory, sandbox: Sandbox, database_url: str) -> CMSClient:
    return make_client(database_url=database_url, host=sandbox.url, token=TOKEN, rate_limit=None)


def setup(client: CMSClient, click: str, customer: str = "user-1") -> TrackResult:
    return client.track_lead("lead_captured", customer, click_id=click, mode="deferred")


def followup(client: CMSClient, customer: str = "user-1") -> TrackResult:
    return client.track_lead("kyc_completed", customer)


def deliver(client: CMSClient, sandbox: Sandbox, *, rejected: int = 0) -> None:
    """Flush, the next ``rejected`` requests answered 422."""
    if rejected:
        sandbox.set_faults(force_status=422, force_count=rejected)
    client.flush()
    sandbox.clear_faults()


def state(client: CMSClient, result: TrackResult) -> EventState:
    return client.result(result.event_id).state


def sent(sandbox: Sandbox, result: TrackResult) -> bool:
    return any(r.idempotency_key == result.event_id for r in sandbox.requests)


def test_no_setup_sends_the_followup_as_it_is(client: CMSClient, sandbox: Sandbox) -> None:
    lone = followup(client)
    deliver(client, sandbox)
    assert sent(sandbox, lone)  # the service decides: it has no association (404)
    assert state(client, lone) is EventState.DEAD


def test_one_delivered_setup_releases(client: CMSClient, sandbox: Sandbox) -> None:
    first, after = setup(client, "c1"), followup(client)
    deliver(client, sandbox)
    assert [state(client, r) for r in (first, after)] == [EventState.DELIVERED] * 2


def test_one_dead_setup_holds(client: CMSClient, sandbox: Sandbox) -> None:
    first, after = setup(client, "c1"), followup(client)
    deliver(client, sandbox, rejected=1)
    assert (state(client, first), state(client, after)) == (EventState.DEAD, EventState.BLOCKED)
    assert not sent(sandbox, after)
    late = followup(client)  # enqueued after the setup died: held by the same setup
    assert late.state is EventState.BLOCKED and late.success  # stored, blocked, not dead
    assert state(client, late) is EventState.BLOCKED
    deliver(client, sandbox)
    assert state(client, late) is EventState.BLOCKED and not sent(sandbox, late)
    assert client.retry([first.event_id]) == 3
    deliver(client, sandbox)
    assert [state(client, r) for r in (first, after, late)] == [EventState.DELIVERED] * 3


def test_a_followup_stored_blocked_says_so_in_its_result(
    client: CMSClient, sandbox: Sandbox
) -> None:
    """The call's result tells the state the follow-up was stored in, as ``result()`` does
    afterwards: blocked behind the dead setup, not on its way."""
    setup(client, "c1")
    deliver(client, sandbox, rejected=1)
    lead = followup(client)
    sale = client.track_sale("purchase", "user-1", "inv-1", 4999, "EUR")
    for tracked in (lead, sale):
        assert (tracked.state, tracked.success, tracked.error) == (EventState.BLOCKED, True, None)
        assert tracked == client.result(tracked.event_id)
        assert dict(tracked) == {"status": True, "data": None}  # the SDK's view: stored
    assert client.track_sale("purchase", "user-1", "inv-1", 4999, "EUR") == sale  # a repeat
    # Waiting cannot move it: wait= returns at once, as blocked.
    waited = returns(lambda: client.track_lead("signup", "user-1", wait=3600))
    assert waited.state is EventState.BLOCKED


def test_a_pending_setup_makes_the_followup_wait(
    make_client: Factory, sandbox: Sandbox, database_url: str
) -> None:
    """The clock stands still: the setup's retry is never due again within the flush
    (full jitter may draw a backoff shorter than the flush's next round)."""
    client = make_client(database_url=database_url, host=sandbox.url, token=TOKEN,
                         rate_limit=None, clock=FakeClock())  # fmt: skip
    first, after = setup(client, "c1"), followup(client)
    sandbox.set_faults(force_status=503)  # the setup keeps being retried
    report = client.flush()
    assert report.retried == 1 and not sent(sandbox, after)
    assert (state(client, first), state(client, after)) == (EventState.PENDING,) * 2


def test_dead_then_delivered_setup_releases(client: CMSClient, sandbox: Sandbox) -> None:
    """The service holds the second setup's association: the follow-up goes out."""
    first, second, after = setup(client, "bad"), setup(client, "c2"), followup(client)
    deliver(client, sandbox, rejected=1)
    assert [state(client, r) for r in (first, second, after)] == [
        EventState.DEAD, EventState.DELIVERED, EventState.DELIVERED,
    ]  # fmt: skip
    accepted = [a.idempotency_key for a in sandbox.accepted]
    assert accepted == [second.event_id, after.event_id]
    assert sandbox.accepted[1].click_id == "c2"  # resolved by the second setup


def test_two_setups_delivered_in_separate_passes(client: CMSClient, sandbox: Sandbox) -> None:
    """The issue's case: setup 1 died long before; setup 2 delivered; then a follow-up."""
    first = setup(client, "bad")
    deliver(client, sandbox, rejected=1)
    second = setup(client, "c2")
    deliver(client, sandbox)
    after = followup(client)
    deliver(client, sandbox)
    assert [state(client, r) for r in (first, second, after)] == [
        EventState.DEAD, EventState.DELIVERED, EventState.DELIVERED,
    ]  # fmt: skip


def test_delivered_then_dead_setup_holds(client: CMSClient, sandbox: Sandbox) -> None:
    """The latest setup governs: its click id was meant, so the follow-up waits for it."""
    first = setup(client, "c1")
    deliver(client, sandbox)
    second, after = setup(client, "c2"), followup(client)
    deliver(client, sandbox, rejected=1)
    assert [state(client, r) for r in (first, second, after)] == [
        EventState.DELIVERED, EventState.DEAD, EventState.BLOCKED,
    ]  # fmt: skip
    assert not sent(sandbox, after)


def test_each_followup_has_its_own_governing_setup(client: CMSClient, sandbox: Sandbox) -> None:
    first, held = setup(client, "bad"), followup(client)
    second, waiting = setup(client, "c2"), followup(client)
    deliver(client, sandbox, rejected=1)
    # The blocked follow-up holds the customer's later events back (FIFO); the second
    # setup governs the last follow-up, which is only waiting, not blocked.
    assert [state(client, r) for r in (first, held, second, waiting)] == [
        EventState.DEAD, EventState.BLOCKED, EventState.PENDING, EventState.PENDING,
    ]  # fmt: skip
    assert client.retry([first.event_id]) == 2
    deliver(client, sandbox)
    assert [a.idempotency_key for a in sandbox.accepted] == [
        first.event_id, held.event_id, second.event_id, waiting.event_id,
    ]  # fmt: skip


def test_retried_setup_releases_when_delivered_and_holds_when_dead_again(
    client: CMSClient, sandbox: Sandbox
) -> None:
    first, after = setup(client, "c1"), followup(client)
    deliver(client, sandbox, rejected=1)
    assert client.retry([first.event_id]) == 2
    deliver(client, sandbox, rejected=1)  # dead again: held again
    assert (state(client, first), state(client, after)) == (EventState.DEAD, EventState.BLOCKED)
    assert client.retry(blocked=True) == 1  # the follow-up alone: still held by its setup
    deliver(client, sandbox)
    assert state(client, after) is EventState.BLOCKED and not sent(sandbox, after)
    assert client.retry(dead=True) == 2
    deliver(client, sandbox)
    assert (state(client, first), state(client, after)) == (EventState.DELIVERED,) * 2


def test_a_dead_setup_holds_only_its_own_customer(client: CMSClient, sandbox: Sandbox) -> None:
    first, after = setup(client, "c1"), followup(client)
    other_setup, other = setup(client, "c9", "user-2"), followup(client, "user-2")
    deliver(client, sandbox, rejected=1)
    assert state(client, after) is EventState.BLOCKED
    assert [state(client, r) for r in (other_setup, other)] == [EventState.DELIVERED] * 2
    assert state(client, first) is EventState.DEAD


def test_lease_work_does_not_grow_with_dead_setups(make_client: Factory, database_url: str) -> None:
    """Statements per lease are the same with 0 and with 300 dead setups of other customers."""
    client = make_client(database_url=database_url)
    store: Store = client.store
    seen: list[str] = []

    def count(*args: Any) -> None:
        seen.append(args[2])

    def statements_of_one_lease(now: float) -> int:
        client.track_lead("signup", "fresh", click_id="c")
        seen.clear()
        event.listen(store.bookkeeping, "before_cursor_execute", count)
        try:
            [leased] = store.lease("probe", 10, now, 60)
        finally:
            event.remove(store.bookkeeping, "before_cursor_execute", count)
        store.record("probe", [Attempt(leased.seq, EventState.DELIVERED, "delivered", now, 0.1)])
        return len(seen)

    before = statements_of_one_lease(4e9)  # a "now" past every event's next attempt
    for n in range(300):
        client.track_lead("lead_captured", f"gone-{n}", click_id=f"c{n}", mode="deferred")
        client.track_lead("kyc_completed", f"gone-{n}")
    with client.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE cms_outbox_events SET state = CASE WHEN mode = 'deferred' "
            "THEN 'dead' ELSE 'blocked' END WHERE customer_external_id <> 'fresh'"
        )
    assert statements_of_one_lease(4e9 + 10) == before


def test_late_committed_setup_releases_its_followup_on_postgres(
    make_client: Factory, sandbox: Sandbox, postgres_url: str
) -> None:
    """A setup inserted in a signup transaction that commits late has the earlier sequence
    id, so it governs the follow-up committed meanwhile: that one, answered 404 because it
    went out first, is sent again once the setup is delivered."""
    client = make_client(database_url=postgres_url, host=sandbox.url, token=TOKEN, rate_limit=None)
    app = create_engine(postgres_url)
    try:
        with app.connect() as signup:
            first = client.track_lead(
                "lead_captured", "user-1", click_id="c1", mode="deferred", connection=signup
            )
            after = followup(client)
            client.flush()  # the setup is invisible: the follow-up goes out alone
            assert state(client, after) is EventState.DEAD
            assert client.result(after.event_id).status_code == 404
            signup.commit()
    finally:
        app.dispose()
    report = client.flush()
    assert report.delivered == 2
    assert [a.idempotency_key for a in sandbox.accepted] == [first.event_id, after.event_id]
    seq = client.store.get(after.event_id)["id"]  # type: ignore[index]
    assert [a["status_code"] for a in client.store.attempts_of(seq)] == [404, 200]


def test_a_404_is_final_when_no_setup_governs(client: CMSClient, sandbox: Sandbox) -> None:
    """Only the governing setup's delivery sends a 404'd follow-up again, not a later one."""
    early = followup(client)
    deliver(client, sandbox)
    later_setup = setup(client, "c1")
    deliver(client, sandbox)
    assert state(client, later_setup) is EventState.DELIVERED
    assert state(client, early) is EventState.DEAD
    assert sum(r.idempotency_key == early.event_id for r in sandbox.requests) == 1
