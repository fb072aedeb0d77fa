"""The SQLite enqueue's statements: the cheap one where nothing is to decide, the full one
where the stored state depends on the customer's setups.

An event with a click id is never a follow-up: it is stored pending by a plain
``INSERT ... VALUES``. A follow-up reads its governing setup inside its own INSERT, so in
the same write transaction, and is stored blocked behind a dead one. Either way a sale whose
invoice id is taken inserts nothing and returns the stored event. Real SQLite files, the
statements seen through the driver's trace callback, rows counted with plain ``sqlite3``.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any, Callable

import pytest

from cms_outbox import CMSClient, EventState, InvoiceConflict, TrackResult
from cms_outbox.sandbox import Sandbox
from tests.conftest import TOKEN, wait_until

MakeClient = Callable[..., CMSClient]


def file_of(client: CMSClient) -> str:
    path = client.engine.url.database
    assert path is not None
    return path


def stored_rows(client: CMSClient) -> dict[str, tuple[str, str | None]]:
    """event_id -> (state, invoice_id), read with plain sqlite3."""
    with sqlite3.connect(file_of(client)) as conn:
        query = "SELECT event_id, state, invoice_id FROM cms_outbox_events"
        return {event_id: (state, invoice) for event_id, state, invoice in conn.execute(query)}


def traced(client: CMSClient) -> list[str]:
    """The statements the client's enqueue connection runs from now on."""
    client.track_lead("warm_up", "someone", click_id="c0")  # opens the enqueue connection
    group = client.store._group
    assert group is not None and group._conn is not None
    statements: list[str] = []
    group._conn.set_trace_callback(statements.append)
    return statements


def test_an_event_with_a_click_id_is_stored_by_a_plain_insert(make_client: MakeClient) -> None:
    client = make_client()
    statements = traced(client)
    lead = client.track_lead("signup", "user_1", click_id="click_1")
    sale = client.track_sale("purchase", "user_1", "inv_1", 4999, "USD", click_id="click_1")
    assert (lead.state, sale.state) == (EventState.PENDING, EventState.PENDING)
    assert len(statements) == 2
    for statement in statements:
        assert statement.startswith("INSERT INTO cms_outbox_events")
        assert " VALUES " in statement and "RETURNING" not in statement
        assert "SELECT" not in statement  # no read of the customer's setups
    follow_up = client.track_lead("kyc", "user_1")
    assert follow_up.state is EventState.PENDING  # no setup governs it
    assert "RETURNING state" in statements[2] and "mode = 'deferred'" in statements[2]
    rows = stored_rows(client)
    assert {rows[r.event_id][0] for r in (lead, sale, follow_up)} == {"pending"}


@pytest.fixture
def dead_setup(make_client: MakeClient, sandbox: Sandbox) -> CMSClient:
    """A client whose customer ``user_1`` has a deferred setup the service rejected."""
    client = make_client(host=sandbox.url, token=TOKEN, rate_limit=None)
    setup = client.track_lead("lead_captured", "user_1", click_id="click_0", mode="deferred")
    sandbox.set_faults(force_status=422, force_count=1)
    client.flush()
    sandbox.clear_faults()
    assert client.result(setup.event_id).state is EventState.DEAD
    return client


def test_behind_a_dead_setup_a_follow_up_is_stored_blocked_an_event_with_a_click_id_pending(
    dead_setup: CMSClient,
) -> None:
    client = dead_setup
    results = {
        "follow-up lead": client.track_lead("kyc", "user_1"),
        "follow-up sale": client.track_sale("purchase", "user_1", "inv_1", 100, "USD"),
        "lead with a click id": client.track_lead("signup", "user_1", click_id="click_2"),
        "sale with a click id": client.track_sale(
            "purchase", "user_1", "inv_2", 100, "USD", click_id="click_2"
        ),
        "another customer's follow-up": client.track_lead("kyc", "user_2"),
    }
    rows = stored_rows(client)
    states = {name: (r.state, rows[r.event_id][0]) for name, r in results.items()}
    assert states == {
        "follow-up lead": (EventState.BLOCKED, "blocked"),
        "follow-up sale": (EventState.BLOCKED, "blocked"),
        "lead with a click id": (EventState.PENDING, "pending"),
        "sale with a click id": (EventState.PENDING, "pending"),
        "another customer's follow-up": (EventState.PENDING, "pending"),
    }
    assert all(r.success and r == client.result(r.event_id) for r in results.values())
    # Repeats of both sales return the stored events, blocked or pending, and store nothing.
    assert client.track_sale("purchase", "user_1", "inv_1", 100, "USD") == results["follow-up sale"]
    again = client.track_sale("purchase", "user_1", "inv_2", 100, "USD", click_id="click_2")
    assert again == results["sale with a click id"]
    assert len(stored_rows(client)) == len(rows)


def test_a_sale_with_a_click_id_under_a_taken_invoice_returns_or_refuses_and_writes_nothing(
    make_client: MakeClient,
) -> None:
    client = make_client()
    first = client.track_sale("purchase", "user_1", "inv_1", 4999, "USD")  # a follow-up's form
    again = client.track_sale("purchase", "user_1", "inv_1", 4999, "USD", click_id="click_1")
    assert again == first  # the plain INSERT skipped it: the stored sale is the answer
    with pytest.raises(InvoiceConflict) as caught:
        client.track_sale("purchase", "user_1", "inv_1", 1, "EUR", click_id="click_1")
    assert caught.value.field == "invoice_id"
    assert list(stored_rows(client)) == [first.event_id]


def test_queued_callers_of_both_statements_share_one_transaction_each_with_its_answer(
    make_client: MakeClient,
) -> None:
    """Callers queued behind another writer go in one transaction: plain inserts, follow-ups
    and repeated invoices mixed, each caller gets its own row's answer."""
    client = make_client()
    statements = traced(client)
    calls: list[Callable[[], TrackResult]] = [
        lambda: client.track_lead("signup", "user_1", click_id="click_1"),
        lambda: client.track_sale("purchase", "user_1", "inv_1", 100, "USD", click_id="click_1"),
        lambda: client.track_lead("kyc", "user_1"),
        lambda: client.track_sale("purchase", "user_1", "inv_1", 100, "USD", click_id="click_1"),
        lambda: client.track_sale("purchase", "user_1", "inv_2", 100, "USD"),
        lambda: client.track_sale("purchase", "user_1", "inv_2", 100, "USD"),
        lambda: client.track_sale("purchase", "user_1", "inv_1", 100, "USD"),
    ]
    results: list[Any] = [None] * len(calls)

    def call(n: int) -> None:
        try:
            results[n] = calls[n]()
        except Exception as exc:  # reported by the assertions below
            results[n] = exc

    blocker = sqlite3.connect(file_of(client), isolation_level=None, check_same_thread=False)
    blocker.execute("PRAGMA busy_timeout = 30000")
    blocker.execute("BEGIN IMMEDIATE")  # another process's write: the callers queue up
    group = client.store._group
    assert group is not None
    threads = [threading.Thread(target=call, args=(0,))]
    threads[0].start()
    assert wait_until(lambda: group._leading and not group._queue)  # its batch taken, alone
    threads += [threading.Thread(target=call, args=(n,)) for n in range(1, len(calls))]
    for thread in threads[1:]:
        thread.start()
    assert wait_until(lambda: len(group._queue) == len(calls) - 1)
    blocker.rollback()
    blocker.close()
    for thread in threads:
        thread.join(timeout=60)
    assert all(isinstance(r, TrackResult) for r in results), results
    lead, sale_1, follow_up, sale_1_again, sale_2, sale_2_again, sale_1_third = results
    assert sale_1_again == sale_1_third == sale_1 and sale_2_again == sale_2
    assert len({lead.event_id, sale_1.event_id, follow_up.event_id, sale_2.event_id}) == 4
    rows = stored_rows(client)
    assert len(rows) == 5  # and the warm-up lead
    assert {r.event_id for r in (lead, sale_1, follow_up, sale_2)} <= set(rows)
    assert {rows[r.event_id][1] for r in (sale_1, sale_2)} == {"inv_1", "inv_2"}
    assert statements.count("BEGIN IMMEDIATE") == 1  # the six queued callers, together


def test_the_result_of_an_enqueue_is_the_result_the_stored_row_gives(
    make_client: MakeClient,
) -> None:
    """Built without the dataclass's ``__init__`` (the hot path), it is the same value."""
    client = make_client()
    tracked = client.track_lead("signup", "user_1", click_id="click_1")
    built = TrackResult(success=True, event_id=tracked.event_id, state=EventState.PENDING)
    assert tracked == built == client.result(tracked.event_id)
    assert (hash(tracked), repr(tracked), dict(tracked)) == (hash(built), repr(built), dict(built))
    with pytest.raises(AttributeError):  # frozen, as every TrackResult
        tracked.success = False  # type: ignore[misc]
