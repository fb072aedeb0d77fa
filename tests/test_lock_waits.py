"""What a flusher waits for behind an application's open transaction, on PostgreSQL and
MariaDB, and the bound on it.

An application that stores events with ``connection=`` and keeps its transaction open
holds no lock a flusher's lease, record or purge needs: leasing skips locked rows,
recording touches rows the flusher leased, storing a sale again reads the stored one
without a lock, and a purge deletes by key. What does hold a flusher is a lock the
application takes itself on a row it must change (``FOR SHARE``). Such a step waits
``store.LOCK_WAIT`` seconds, not the server's 50 s (5 tries: 250 s) or for ever, fails
with a plain message, and the next pass delivers every event once, in order. A row the
application locked while it was in flight is skipped by the hand-back and the sweep of
expired leases: it alone waits, with its customer's later events. The application's
transaction and its connections' settings are untouched.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any, Callable

import pytest
from sqlalchemy import Connection, Engine, text

from cms_outbox import CMSClient, StorageError, TrackResult
from cms_outbox.sandbox import Sandbox
from cms_outbox.store import LOCK_WAIT
from tests.conftest import TOKEN, FakeClock, accepted_in_order, client_factory, returns

Factory = Callable[..., CMSClient]
SALE: dict[str, Any] = {"customer_external_id": "user-a", "amount": 4999, "currency": "USD"}
DRIVER_WORDS = ("1205", "lock wait timeout exceeded", "55p03", "canceling statement")


@pytest.fixture
def app_engine(server_url: str, scratch_table: Callable[[str, str], Engine]) -> Engine:
    """The application's engine, with a table of its own; the client runs on it too."""
    return scratch_table(server_url, "app_orders (id INTEGER PRIMARY KEY, total INTEGER)")


@pytest.fixture
def make_client(server_url: str, app_engine: Engine) -> Iterator[Factory]:
    """Clients, closed before the application's engine is disposed of."""
    yield from client_factory(server_url)


def connect(make_client: Factory, app_engine: Engine, sandbox: Sandbox) -> CMSClient:
    return make_client(engine=app_engine, host=sandbox.url, token=TOKEN, rate_limit=None, workers=1)


def lock_sale(client: CMSClient, conn: Connection, invoice_id: str, **sale: Any) -> None:
    """Store the sale again inside the application's open transaction, as a retried
    checkout does, and lock it there, by its key."""
    again = client.track_sale("purchase", invoice_id=invoice_id, connection=conn, **sale)
    assert again.success
    lock = "FOR SHARE" if conn.dialect.name == "postgresql" else "LOCK IN SHARE MODE"
    seq = client.store.get(again.event_id)["id"]  # type: ignore[index]
    conn.execute(text(f"SELECT * FROM cms_outbox_events WHERE id = :id {lock}"), {"id": seq})


def gives_up(call: Callable[[], Any]) -> StorageError:
    """The StorageError ``call`` raises, after waiting for a lock ``LOCK_WAIT`` s at least."""
    started = time.monotonic()
    with pytest.raises(StorageError) as failed:
        # Six times the bound: a loaded machine stays well within it, while the servers'
        # own (MariaDB: 50 s, PostgreSQL: none) fail here.
        returns(call, timeout=6 * LOCK_WAIT)
    assert time.monotonic() - started >= LOCK_WAIT
    message = str(failed.value)
    assert "held a lock on outbox rows" in message
    assert not any(word in message.lower() for word in DRIVER_WORDS)
    return failed.value


def assert_server_defaults(engine: Engine) -> None:
    """Every idle pooled connection has the server's own lock wait, not the outbox's."""
    idle = engine.pool.checkedin()  # type: ignore[attr-defined]
    conns = [engine.connect() for _ in range(max(idle, 1))]
    try:
        for conn in conns:
            if conn.dialect.name == "postgresql":
                assert conn.execute(text("SHOW lock_timeout")).scalar() == "0"
            else:
                sql = "SELECT @@SESSION.innodb_lock_wait_timeout, @@GLOBAL.innodb_lock_wait_timeout"
                session, default = conn.execute(text(sql)).one()
                assert session == default != LOCK_WAIT
            conn.rollback()
    finally:
        for conn in conns:
            conn.close()


def test_an_open_application_transaction_that_stored_events_holds_no_delivery_back(
    make_client: Factory, app_engine: Engine, sandbox: Sandbox
) -> None:
    client = connect(make_client, app_engine, sandbox)
    setup = client.track_lead("signup", "user-a", click_id="ca", mode="deferred").event_id
    other = client.track_lead("signup", "user-b", click_id="cb").event_id
    with app_engine.connect() as conn:
        conn.execute(text("INSERT INTO app_orders (id, total) VALUES (1, 4999)"))
        follow_up = client.track_lead("login", "user-a", connection=conn).event_id
        new = client.track_lead("signup", "user-c", click_id="cc", connection=conn).event_id
        report = returns(client.flush)  # leases and records with the transaction open
        assert (report.delivered, report.dead) == (2, 0)
        conn.commit()
    assert client.flush().delivered == 2
    assert accepted_in_order(sandbox) == {
        "user-a": [setup, follow_up],
        "user-b": [other],
        "user-c": [new],
    }
    assert_server_defaults(app_engine)


def test_a_record_blocked_by_an_application_transaction_gives_up_and_the_next_pass_delivers(
    make_client: Factory, app_engine: Engine, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    """The setup is answered 422 once: recording it dead holds its customer's follow-up,
    the sale the application's open transaction has locked. That record gives up, and the
    setup is not said to be dead-lettered; once the application commits, the setup is sent
    again (same Idempotency-Key) and accepted, and its follow-up after it."""
    caplog.set_level(logging.WARNING, logger="cms_outbox")
    client = connect(make_client, app_engine, sandbox)
    setup = client.track_lead("signup", "user-a", click_id="ca", mode="deferred").event_id
    sale = client.track_sale("purchase", invoice_id="inv-1", **SALE).event_id
    other = client.track_lead("signup", "user-b", click_id="cb").event_id
    sandbox.set_faults(force_status=422, force_count=1)  # the first request: the setup's
    with app_engine.connect() as conn:
        conn.execute(text("INSERT INTO app_orders (id, total) VALUES (1, 4999)"))
        lock_sale(client, conn, "inv-1", **SALE)
        gives_up(client.flush)
        assert_server_defaults(app_engine)
        conn.execute(text("UPDATE app_orders SET total = 5000 WHERE id = 1"))  # unaffected
        conn.commit()
    report = client.flush()  # hands back the rows the failed pass left leased, sends them
    assert (report.delivered, report.dead, report.pending) == (3, 0, 0)
    assert accepted_in_order(sandbox) == {"user-a": [setup, sale], "user-b": [other]}
    assert Counter(r.idempotency_key for r in sandbox.accepted) == Counter([setup, sale, other])
    assert not [r.getMessage() for r in caplog.records if "dead-lettered" in r.getMessage()]
    with app_engine.connect() as conn:
        assert conn.execute(text("SELECT total FROM app_orders")).scalar() == 5000


def test_a_purge_blocked_by_an_application_transaction_gives_up_and_purges_later(
    make_client: Factory, app_engine: Engine, sandbox: Sandbox
) -> None:
    client = connect(make_client, app_engine, sandbox)
    sale = client.track_sale("purchase", invoice_id="inv-1", click_id="cs", **SALE).event_id
    assert client.flush().delivered == 1

    def purge() -> list[str]:
        batches = client.store.purge(delivered_before=time.time() + 60, acknowledge=False)
        return [event_id for batch in batches for event_id in batch]

    with app_engine.connect() as conn:
        lock_sale(client, conn, "inv-1", click_id="cs", **SALE)
        gives_up(purge)
        conn.commit()
    assert purge() == [sale]


def test_a_row_an_application_locked_in_flight_holds_back_only_its_customer(
    make_client: Factory, app_engine: Engine, sandbox: Sandbox
) -> None:
    """The application locks an event the flusher has just leased (from the callback of
    the event recorded with it, so before it is sent) and keeps its transaction open for
    several passes. Recording that event gives up; every later pass hands back the
    rest, leaves the locked row leased and delivers every other customer's events; a
    second flusher's sweep of expired leases skips it too. Once the application commits,
    the row is handed back and sent again: every event accepted once, in order."""
    clock = FakeClock()
    held: list[Connection] = []
    lock = "FOR SHARE" if app_engine.dialect.name == "postgresql" else "LOCK IN SHARE MODE"

    def lock_user_a(result: TrackResult) -> None:
        if result.event_id == first and not held:
            held.append(app_engine.connect())
            # The row by its key: on MariaDB a read the event_id index covers locks no
            # more, and a scan of the small table at REPEATABLE READ would lock its gaps.
            seq = client.store.get(locked)["id"]  # type: ignore[index]
            sql = f"SELECT * FROM cms_outbox_events WHERE id = :id {lock}"
            held[0].execute(text(sql), {"id": seq})

    def flusher(**options: Any) -> CMSClient:
        return make_client(
            engine=app_engine, host=sandbox.url, token=TOKEN, rate_limit=None, workers=1,
            clock=clock, **options,
        )  # fmt: skip

    client = flusher(on_delivered=lock_user_a)
    first = client.track_lead("signup", "user-b", click_id="cb").event_id
    others = [first, client.track_lead("signup", "user-c", click_id="cc").event_id]
    locked = client.track_lead("signup", "user-a", click_id="ca").event_id  # leased 3rd
    user_a = [locked]
    try:
        gives_up(client.flush)
        for step in range(3):
            user_a.append(client.track_lead("login", "user-a", click_id=f"a{step}").event_id)
            others.append(client.track_lead("signup", f"user-d{step}", click_id="cd").event_id)
            report = returns(client.flush)  # pre-fix: the hand-back waits and gives up
            # Delivered with what the failed pass left leased (recorded with the locked row).
            assert report.dead == 0 and sandbox.accepted_count(others[-1]) == 1
        clock.advance(client.flusher.settings.lease_duration + 1)  # its lease has expired
        others.append(client.track_lead("signup", "user-e", click_id="ce").event_id)
        assert returns(flusher().flush).delivered == 1  # another flusher sweeps, skips it
        assert client.store.get(locked)["state"] == "in_flight"  # type: ignore[index]
        assert sandbox.accepted_count(user_a[1]) == 0  # held back behind it, in order
    finally:
        for conn in held:
            conn.commit()
            conn.close()
    report = client.flush()
    assert (report.delivered, report.dead, report.pending) == (4, 0, 0)
    accepted = accepted_in_order(sandbox)
    assert accepted.pop("user-a") == user_a
    assert sorted(key for keys in accepted.values() for key in keys) == sorted(others)
    assert Counter(r.idempotency_key for r in sandbox.accepted) == Counter(user_a + others)


def test_a_purge_never_waits_for_an_application_transaction_that_stored_an_event(
    make_client: Factory, app_engine: Engine, sandbox: Sandbox
) -> None:
    """On MariaDB a delete by ``id IN (...)`` may scan the table whole, and waited for the
    application's uncommitted new row; the purge deletes by key, at once, only the
    delivered events and their attempts."""
    client = connect(make_client, app_engine, sandbox)
    dead = client.track_lead("signup", "user-x", click_id="cx").event_id  # sent first: 422
    # Most of the table: the plan MariaDB chose for a delete by ``id IN (...)`` was a scan.
    delivered = [client.track_lead("signup", f"user-{n}", click_id="c").event_id for n in range(8)]
    sandbox.set_faults(force_status=422, force_count=1)
    report = client.flush()
    assert (report.delivered, report.dead) == (8, 1)
    waiting = client.track_lead("signup", "user-w", click_id="cw").event_id  # committed
    seqs = {e: client.store.get(e)["id"] for e in [*delivered, dead]}  # type: ignore[index]
    with app_engine.connect() as conn:
        new = client.track_lead("signup", "user-n", click_id="cn", connection=conn).event_id

        def purge() -> list[str]:
            batches = client.store.purge(delivered_before=time.time() + 60, acknowledge=False)
            return [event_id for batch in batches for event_id in batch]

        assert sorted(returns(purge)) == sorted(delivered)  # not after LOCK_WAIT: at once
        conn.commit()
    assert all(client.store.get(e) is None for e in delivered)
    assert all(client.store.attempts_of(seqs[e]) == [] for e in delivered)
    assert len(client.store.attempts_of(seqs[dead])) == 1
    assert client.flush().delivered == 2
    assert accepted_in_order(sandbox)["user-w"] == [waiting]
    assert accepted_in_order(sandbox)["user-n"] == [new]


def test_storing_a_sale_again_in_an_open_transaction_holds_no_delivery_back(
    make_client: Factory, app_engine: Engine, sandbox: Sandbox
) -> None:
    """Storing a sale again reads the stored one without a lock (on MariaDB it held a
    shared lock to the end of the application's transaction, and the flusher's record of
    that sale gave up): the sale is delivered while the transaction is open. A sale
    committed after the application's transaction began (after its snapshot, at MariaDB's
    REPEATABLE READ) is still found, read on a connection of its own."""
    client = connect(make_client, app_engine, sandbox)
    sale = client.track_sale("purchase", invoice_id="inv-1", click_id="cs", **SALE)
    with app_engine.connect() as conn:
        conn.execute(text("INSERT INTO app_orders (id, total) VALUES (1, 4999)"))
        again = client.track_sale("purchase", invoice_id="inv-1", connection=conn, **SALE)
        assert (again.event_id, again.state.value) == (sale.event_id, "pending")
        report = returns(client.flush)  # pre-fix on MariaDB: StorageError after LOCK_WAIT
        assert (report.delivered, report.dead) == (1, 0)
        conn.execute(text("SELECT total FROM app_orders")).all()  # its snapshot is taken
        late = client.track_sale("purchase", invoice_id="inv-2", click_id="c2", **SALE)
        found = client.track_sale("purchase", invoice_id="inv-2", connection=conn, **SALE)
        assert found.event_id == late.event_id
        assert returns(client.flush).delivered == 1
        conn.commit()
    assert client.store.count_by_state() == {"delivered": 2}
    assert accepted_in_order(sandbox) == {"user-a": [sale.event_id, late.event_id]}
