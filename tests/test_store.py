"""The store's lease contract, on every backend: FIFO, leases, fencing, blocking, purge."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone

import pytest

from cms_outbox import database, migrate
from cms_outbox.events import build_lead, build_sale
from cms_outbox.results import EventState
from cms_outbox.store import Attempt, Store, Stored

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
T0 = NOW.timestamp()


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    engine = database.create(database_url)
    migrate.upgrade(engine)
    yield Store(engine)
    engine.dispose()


def lead(store: Store, customer: str, **fields: object) -> str:
    event = build_lead("signup", customer, now=NOW, **fields)
    assert store.insert(event) == Stored(EventState.PENDING)
    return event.event_id


def outcome(seq: int, state: EventState, at: float = T0, **fields: object) -> Attempt:
    values = {"outcome": state.value, "started_at": at, "duration": 0.01, **fields}
    return Attempt(seq=seq, state=state, **values)  # type: ignore[arg-type]


def state_of(store: Store, event_id: str) -> str:
    row = store.get(event_id)
    assert row is not None
    return str(row["state"])


def test_lease_takes_one_head_per_customer_in_enqueue_order(store: Store) -> None:
    a1, b1, a2, b2 = (lead(store, c, click_id="x") for c in ("a", "b", "a", "b"))
    leased = store.lease("owner", 10, T0, 30)
    assert [lease.event_id for lease in leased] == [a1, b1]
    assert store.lease("other", 10, T0, 30) == []
    assert {state_of(store, e) for e in (a2, b2)} == {"pending"}


def test_next_event_of_a_customer_waits_until_the_head_is_finished(store: Store) -> None:
    first, second = lead(store, "a", click_id="x"), lead(store, "a", click_id="x")
    [head] = store.lease("owner", 10, T0, 30)
    assert store.record("owner", [outcome(head.seq, EventState.DELIVERED)]) == [True]
    [following] = store.lease("owner", 10, T0, 30)
    assert (head.event_id, following.event_id) == (first, second)


def test_a_retrying_head_holds_back_its_customer(store: Store) -> None:
    lead(store, "a", click_id="x")
    lead(store, "a", click_id="x")
    [head] = store.lease("owner", 10, T0, 30)
    retry = outcome(head.seq, EventState.PENDING, next_attempt_at=T0 + 60)
    assert store.record("owner", [retry]) == [True]
    assert store.lease("owner", 10, T0 + 1, 30) == []
    assert [lease.seq for lease in store.lease("owner", 10, T0 + 61, 30)] == [head.seq]


def test_expired_lease_is_reclaimed_and_late_result_is_ignored(store: Store) -> None:
    event_id = lead(store, "a", click_id="x")
    [first] = store.lease("crashed", 10, T0, 30)
    assert store.lease("rescuer", 10, T0 + 29, 30) == []
    [second] = store.lease("rescuer", 10, T0 + 31, 30)
    assert second.seq == first.seq
    late = outcome(first.seq, EventState.DEAD, error="late")
    assert store.record("crashed", [late]) == [False]
    assert store.record("rescuer", [outcome(second.seq, EventState.DELIVERED)]) == [True]
    row = store.get(event_id)
    assert row is not None and row["state"] == "delivered" and row["attempts"] == 1
    assert [a["outcome"] for a in store.attempts_of(first.seq)] == ["dead", "delivered"]


def test_release_returns_unsent_rows(store: Store) -> None:
    lead(store, "a", click_id="x")
    lead(store, "b", click_id="x")
    leased = store.lease("owner", 10, T0, 30)
    assert store.hand_back("owner", [leased[0].seq]) == 1
    assert store.hand_back("owner") == 1
    assert len(store.lease("next", 10, T0, 30)) == 2


def test_dead_deferred_setup_blocks_followups_until_retried(store: Store) -> None:
    setup = lead(store, "a", click_id="c1", mode="deferred")
    followup = lead(store, "a")
    standard = lead(store, "a", click_id="c2")
    other = lead(store, "b")
    [head, other_head] = store.lease("owner", 10, T0, 30)
    assert (head.event_id, other_head.event_id) == (setup, other)
    store.record("owner", [outcome(head.seq, EventState.DEAD, error="HTTP 422")])
    assert state_of(store, followup) == "blocked"
    assert state_of(store, standard) == "pending"  # held by FIFO, not itself a follow-up
    assert store.lease("owner", 10, T0, 30) == []
    assert store.retry([setup], now=T0) == 2
    assert state_of(store, followup) == "pending"
    [again] = store.lease("owner", 10, T0, 30)
    assert again.event_id == setup


def test_retry_by_state_keeps_attempt_history(store: Store) -> None:
    event_id = lead(store, "a", click_id="x")
    [head] = store.lease("owner", 10, T0, 30)
    store.record("owner", [outcome(head.seq, EventState.DEAD, error="HTTP 400")])
    assert store.retry(states=[EventState.DEAD], now=T0) == 1
    assert state_of(store, event_id) == "pending"
    assert len(store.attempts_of(head.seq)) == 1


def test_duplicate_invoice_returns_the_stored_sale(store: Store) -> None:
    first = build_sale("buy", "a", "inv-1", 100, "EUR", now=NOW)
    again = build_sale("buy", "a", "inv-1", 999, "USD", now=NOW)
    assert store.insert(first) == Stored(EventState.PENDING)
    existing = store.insert(again).existing
    assert existing is not None and existing["event_id"] == first.event_id
    assert store.count_by_state() == {"pending": 1}


def test_purge_removes_exactly_what_dry_run_listed(store: Store) -> None:
    old, new = lead(store, "a", click_id="x"), lead(store, "b", click_id="x")
    leases = store.lease("owner", 10, T0, 30)
    store.record(
        "owner",
        [
            outcome(leases[0].seq, EventState.DELIVERED, at=T0),
            outcome(leases[1].seq, EventState.DELIVERED, at=T0 + 100),
        ],
    )
    listed = [i for batch in store.purge(delivered_before=T0 + 50, dry_run=True) for i in batch]
    assert listed == [old]
    assert store.count_by_state() == {"delivered": 2}
    assert list(store.purge(delivered_before=T0 + 50, batch_size=1)) == [listed]
    assert store.get(old) is None and store.get(new) is not None
    assert store.attempts_of(leases[0].seq) == []


def test_purge_commits_batch_by_batch_as_it_is_consumed(store: Store) -> None:
    """A million-row purge must hold neither a long lock nor every id in memory."""
    ids = [lead(store, f"c{n}", click_id="x") for n in range(3)]
    leases = store.lease("owner", 10, T0, 30)
    store.record("owner", [outcome(lease.seq, EventState.DELIVERED, at=T0) for lease in leases])
    batches = store.purge(delivered_before=T0 + 50, batch_size=2)
    assert next(batches) == ids[:2]
    assert [store.get(i) is None for i in ids] == [True, True, False]  # already committed
    assert list(batches) == [ids[2:]]
    assert store.count_by_state() == {}


def test_shared_budget_is_read_and_written_atomically(store: Store) -> None:
    from cms_outbox.pacing import Budget, Quota, Source

    stored = Budget(5.0, T0, Quota(30, 6), Source.LEARNED, 3, T0 + 4, T0 + 2, T0, 7, T0, 27.0)
    seen = store.with_budget(lambda b: (stored, b))
    assert seen == Budget()  # a new outbox assumes the documented 60/min
    assert store.with_budget(lambda b: (b, b)) == stored


def test_fifo_check_is_a_covering_index_seek_on_sqlite(sqlite_url: str) -> None:
    """Leasing must not slow down as delivered history grows: "an earlier row of this
    customer unfinished" is answered from the (customer, state, id) index alone."""
    from cms_outbox.leasing import _ELIGIBLE

    engine = database.create(sqlite_url)
    migrate.upgrade(engine)
    eligible = _ELIGIBLE.params(now=T0, limit=16)
    sql = str(eligible.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        plan = [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)]
    engine.dispose()
    assert any("COVERING INDEX ix_cms_outbox_events_customer_state_id" in step for step in plan), (
        plan
    )
    assert any("INDEX ix_cms_outbox_events_state_id" in step for step in plan), plan


def test_governing_setup_is_an_index_seek_on_sqlite(sqlite_url: str) -> None:
    """Leasing must not slow down as dead setups accumulate: a follow-up's governing setup
    (and, at enqueue, the customer's latest setup) is read from the (customer, mode, id)
    index, never by scanning the customer's rows or the dead ones."""
    from cms_outbox.inserting import sqlite_insert_follow_up
    from cms_outbox.leasing import _LEASE_ELIGIBLE
    from cms_outbox.prepared import for_sqlite

    engine = database.create(sqlite_url)
    migrate.upgrade(engine)
    store = Store(engine)
    lead(store, "a")
    lease_params = {"owner": "owner", "expires": T0 + 30, "now": T0, "limit": 16}
    insert_values = ("e", "lead", "c", None, None, None, "{}", "pending", 0, T0, T0)
    statements = [
        for_sqlite(_LEASE_ELIGIBLE, lease_params),
        (sqlite_insert_follow_up(), insert_values),
    ]
    with engine.connect() as conn:
        plans = [
            [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params)]
            for sql, params in statements
        ]
    store.close()
    engine.dispose()
    assert len(plans) == 2  # the lease and the enqueue
    for plan in plans:
        assert any("INDEX ix_cms_outbox_events_customer_mode_id" in step for step in plan), plan
        full_scans = [s for s in plan if s.startswith("SCAN") and "INDEX" not in s]
        assert full_scans in ([], ["SCAN CONSTANT ROW"]), plan
