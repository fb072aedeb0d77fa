"""Two flushers at the same moment: one records a follow-up answered 404 (its deferred
setup was not known yet) while the other delivers that setup, on PostgreSQL and MariaDB.

The setup commits late (an application's signup transaction), after the follow-up was
leased: the follow-up goes out alone and is answered 404. The test holds the follow-up's
row, so that its record waits (seen in the server's lock tables, not slept for), while the
second flusher delivers the setup and commits: its release finds the follow-up still in
flight. Once let go, the record of the 404 sees the delivered setup and makes the
follow-up pending again; it is delivered once, after its setup. (On SQLite one writer at
a time commits rows in sequence order: a setup is never committed after its follow-up.)
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any, Callable

import pytest
from sqlalchemy import Connection, Engine, text

from cms_outbox import CMSClient, EventState, TrackResult, store
from cms_outbox.sandbox import Sandbox
from tests.conftest import TOKEN, accepted_in_order, client_factory, wait_until
from tests.test_deadlocks import waiting_on

Factory = Callable[..., CMSClient]


@pytest.fixture
def app_engine(server_url: str, scratch_table: Callable[[str, str], Engine]) -> Engine:
    return scratch_table(server_url, "app_signups (id INTEGER PRIMARY KEY)")


@pytest.fixture
def make_client(server_url: str, app_engine: Engine) -> Iterator[Factory]:
    yield from client_factory(server_url)


def backend_id(conn: Connection) -> Any:
    """What ``waiting_on`` knows this connection's transaction by."""
    if conn.dialect.name == "postgresql":
        return conn.execute(text("SELECT pg_backend_pid()")).scalar()
    sql = (
        "SELECT trx_id FROM information_schema.innodb_trx "
        "WHERE trx_mysql_thread_id = CONNECTION_ID()"
    )
    return conn.execute(text(sql)).scalar()


def test_a_followup_answered_404_while_another_flusher_delivers_its_setup_is_sent_again(
    make_client: Factory, app_engine: Engine, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The record waits while the test looks, however long a loaded machine takes to look.
    monkeypatch.setattr(store, "LOCK_WAIT", 60)
    holder = app_engine.connect()
    lock = "FOR SHARE" if app_engine.dialect.name == "postgresql" else "LOCK IN SHARE MODE"

    def hold_followup(result: TrackResult) -> None:
        # The flusher has just leased the follow-up with the row recorded here: held now,
        # before it is sent, its record waits for the test.
        if result.event_id == others[0] and not holding:
            seq = first.store.get(follow_up)["id"]  # type: ignore[index]
            holder.execute(
                text(f"SELECT * FROM cms_outbox_events WHERE id = :id {lock}"), {"id": seq}
            )
            holding.append(backend_id(holder))

    options: dict[str, Any] = {
        "host": sandbox.url,
        "token": TOKEN,
        "rate_limit": None,
        "workers": 1,
    }
    first = make_client(on_delivered=hold_followup, **options)
    second = make_client(**options)
    holding: list[Any] = []
    errors: list[BaseException] = []
    others = [first.track_lead("signup", f"user-{n}", click_id=f"c{n}").event_id for n in "bc"]
    with app_engine.connect() as signup, app_engine.connect() as observer:
        setup = first.track_lead(
            "signup", "user-a", click_id="ca", mode="deferred", connection=signup
        ).event_id
        follow_up = first.track_lead("kyc_completed", "user-a").event_id  # committed first

        def flush() -> None:
            try:
                first.flush()
            except BaseException as exc:
                errors.append(exc)

        flusher = threading.Thread(target=flush)
        flusher.start()
        try:
            assert wait_until(lambda: bool(holding) and waiting_on(observer, holding[0]), step=0.2)
            signup.commit()  # the setup, committed after its follow-up went out
            assert second.flush().delivered == 1  # the setup; its follow-up is in flight
        finally:
            holder.rollback()  # the 404 is recorded now
            holder.close()
        flusher.join(60)
    assert not flusher.is_alive() and errors == []
    first.flush()  # sends it again, if its own pass has not already
    assert first.result(follow_up).state is EventState.DELIVERED
    seq = first.store.get(follow_up)["id"]  # type: ignore[index]
    assert [a["status_code"] for a in first.store.attempts_of(seq)] == [404, 200]
    assert accepted_in_order(sandbox)["user-a"] == [setup, follow_up]
    keys = Counter(r.idempotency_key for r in sandbox.accepted)
    assert keys == Counter([*others, setup, follow_up])
