"""Deadlocks in the flusher's own transactions on PostgreSQL and MariaDB: concurrent
flushers do not deadlock each other, and one provoked for real (the server cancels the
flusher's side) is run again, with every row delivered exactly once."""

from __future__ import annotations

import logging
import random
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any, Callable

import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from cms_outbox import CMSClient, FlushReport, store
from cms_outbox.driver_errors import transient
from cms_outbox.sandbox import Sandbox
from tests.conftest import TOKEN, client_factory, wait_until

Factory = Callable[..., CMSClient]
# The test's own transaction outweighs the flusher's (MariaDB cancels the transaction
# that changed fewer rows): it inserts this many rows into a table of its own first.
BALLAST = 500
# Events and flushers of the concurrent story: enough that, before their statements kept
# to the rows they change, MariaDB broke a deadlock between them in most runs.
STORY_EVENTS, FLUSHERS = 1500, 6


@pytest.fixture
def make_client(server_url: str) -> Iterator[Factory]:
    if server_url.startswith("postgresql"):
        # PostgreSQL looks for a deadlock once, when a waiter's deadlock_timeout has run
        # out, and cancels that waiter. The flusher's runs out first (the test's own
        # session waits 60 s), seconds after both sides wait: only a hang reaches it.
        server_url += "?options=-c%20deadlock_timeout%3D3s"
    yield from client_factory(server_url)


@pytest.fixture
def ballast(server_url: str, scratch_table: Callable[[str, str], Engine]) -> Engine:
    return scratch_table(server_url, "deadlock_ballast (n INTEGER PRIMARY KEY)")


def waiting_on(observer: Connection, blocker: Any) -> bool:
    """Whether another transaction waits for a lock the test's transaction holds."""
    if observer.dialect.name == "postgresql":
        sql = "SELECT count(*) FROM pg_stat_activity WHERE :b = ANY(pg_blocking_pids(pid))"
    else:
        sql = "SELECT count(*) FROM information_schema.innodb_lock_waits WHERE blocking_trx_id = :b"
    count = observer.execute(text(sql), {"b": blocker}).scalar()
    observer.rollback()  # a fresh snapshot on the next look
    return bool(count)


def test_a_deadlock_in_the_flusher_is_run_again_and_every_row_delivered_once(
    make_client: Factory,
    sandbox: Sandbox,
    ballast: Engine,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A deferred setup answered 422 is recorded dead, and the same transaction holds its
    two follow-ups, in id order: the test holds the second, sees the flusher wait for it,
    then locks the first. The server breaks the cycle on the flusher's side, which runs
    its transaction again; once the setup is retried, all three are delivered once."""
    caplog.set_level(logging.DEBUG, logger="cms_outbox.driver_errors")
    # The flusher waits while the test sees it wait, then closes the cycle: a loaded
    # machine may take seconds to look, and the flusher must still be waiting by then.
    monkeypatch.setattr(store, "LOCK_WAIT", 60)
    client = make_client(host=sandbox.url, token=TOKEN, rate_limit=None, workers=2)
    setup = client.track_lead("signup", "customer-a", click_id="ca", mode="deferred").event_id
    follow_ups = [client.track_lead(name, "customer-a").event_id for name in ("login", "buy")]
    a, b = (client.store.get(event_id)["id"] for event_id in follow_ups)  # type: ignore[index]
    sandbox.set_faults(force_status=422, force_count=1)
    postgres = client.engine.dialect.name == "postgresql"
    with ballast.connect() as holder, ballast.connect() as observer:
        if postgres:
            holder.execute(text("SET deadlock_timeout = '60s'"))
        holder.execute(
            text("INSERT INTO deadlock_ballast (n) VALUES (:n)"), [{"n": n} for n in range(BALLAST)]
        )
        lock = "SELECT id FROM cms_outbox_events WHERE id = :id FOR UPDATE"
        holder.execute(text(lock), {"id": b})
        me = holder.execute(
            text(
                "SELECT pg_backend_pid()"
                if postgres
                else "SELECT trx_id FROM information_schema.innodb_trx "
                "WHERE trx_mysql_thread_id = CONNECTION_ID()"
            )
        ).scalar()
        reports: list[FlushReport] = []
        errors: list[BaseException] = []

        def flush() -> None:
            try:
                reports.append(client.flush())
            except BaseException as exc:
                errors.append(exc)

        flusher = threading.Thread(target=flush)
        flusher.start()
        # Recording the dead setup holds its follow-ups in id order: holds a, waits for b.
        # MariaDB refreshes its lock tables only after 0.1 s without a look at them.
        assert wait_until(lambda: waiting_on(observer, me), step=0.2)
        holder.execute(text(lock), {"id": a})  # the other order: the server breaks the cycle
        holder.rollback()  # not cancelled ourselves: the flusher's transaction was
    flusher.join(60)
    assert not flusher.is_alive() and errors == []
    retried = [r.getMessage() for r in caplog.records if "running it again" in r.getMessage()]
    assert retried and retried[0].startswith("recording and leasing: ")
    assert "deadlock" in retried[0]
    [report] = reports
    assert (report.dead, report.blocked, report.pending) == (1, 2, 0)
    assert client.store.count_by_state() == {"dead": 1, "blocked": 2}
    assert client.retry([setup]) == 3
    assert client.flush().delivered == 3
    keys = [request.idempotency_key for request in sandbox.accepted]
    assert keys == [setup, *follow_ups]


def test_neither_a_lock_wait_timeout_nor_a_broken_statement_is_run_again(
    server_url: str, ballast: Engine
) -> None:
    """The rule itself, on the server's real errors: a lock wait that timed out (MariaDB
    1205, PostgreSQL lock_not_available) is not run again, since the lock is held by a
    transaction that has already kept it that long; a broken statement never is."""
    postgres = server_url.startswith("postgresql")
    with ballast.begin() as conn:
        conn.execute(text("INSERT INTO deadlock_ballast (n) VALUES (1)"))
    with ballast.connect() as holder, ballast.connect() as waiter:
        holder.execute(text("SELECT n FROM deadlock_ballast WHERE n = 1 FOR UPDATE"))
        if postgres:
            waiter.execute(text("SET lock_timeout = '50ms'"))
        else:
            waiter.execute(text("SET SESSION innodb_lock_wait_timeout = 1"))
        with pytest.raises(DBAPIError) as timed_out:
            waiter.execute(text("UPDATE deadlock_ballast SET n = 2 WHERE n = 1"))
        waiter.rollback()
        holder.rollback()
        with pytest.raises(DBAPIError) as broken:
            waiter.execute(text("INSERT INTO deadlock_ballast (n) VALUES (1)"))  # a duplicate
        waiter.rollback()
    assert not transient(timed_out.value) and not transient(broken.value)


def test_concurrent_flushers_record_and_lease_without_deadlocking_each_other(
    make_client: Factory, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    """Six flushers drain one outbox at once: deferred setups, follow-ups (answered 404
    where their customer has no setup), sales and plain leads, many per customer. Every
    setup that finishes scans its customer's follow-ups to hold or release them; those
    scans used to lock index entries of rows another flusher had just changed, and on
    MariaDB two of them met in a deadlock (1213) in most runs. Not one transaction is run
    again now, and every event is finished, sent exactly once."""
    caplog.set_level(logging.DEBUG, logger="cms_outbox.driver_errors")
    clients = [
        make_client(host=sandbox.url, token=TOKEN, rate_limit=None, workers=8)
        for _ in range(FLUSHERS)
    ]
    rng = random.Random(4)
    stored = set()
    for n in range(STORY_EVENTS):
        customer, kind = f"c{rng.randrange(STORY_EVENTS // 3)}", rng.random()
        if kind < 0.3:
            result = clients[0].track_lead("signup", customer, click_id=f"k{n}", mode="deferred")
        elif kind < 0.6:
            result = clients[0].track_lead("login", customer)
        elif kind < 0.8:
            result = clients[0].track_sale("purchase", customer, f"inv-{n}", 4999, "USD")
        else:
            result = clients[0].track_lead("signup", customer, click_id=f"k{n}")
        stored.add(result.event_id)
    errors: list[BaseException] = []

    def flush(client: CMSClient) -> None:
        try:
            client.flush()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=flush, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == [] and not any(thread.is_alive() for thread in threads)
    retried = [r.getMessage() for r in caplog.records if "running it again" in r.getMessage()]
    assert retried == []
    counts = clients[0].store.count_by_state()
    assert set(counts) <= {"delivered", "dead"} and sum(counts.values()) == STORY_EVENTS
    sent = Counter(request.idempotency_key for request in sandbox.requests)
    assert set(sent) == stored and set(sent.values()) == {1}
