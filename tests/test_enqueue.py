"""Durable enqueue: ``track_lead``/``track_sale`` store the event, or raise and store nothing.

Everything goes through ``CMSClient(flush="off")`` on real databases: a SQLite file in
``tmp_path`` and, when configured, PostgreSQL. Rows are counted with plain SQL so that
a bug in the store cannot hide behind the store's own reads.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from cms_outbox import (
    ClientClosed,
    CMSClient,
    DirectoryNotFound,
    EventNotFound,
    EventState,
    InvoiceConflict,
    OutboxError,
    StorageError,
    TrackResult,
    ValidationError,
)

MakeClient = Callable[..., CMSClient]
ScratchTable = Callable[[str, str], Engine]
NOW = datetime(2026, 3, 14, 9, 26, 53, 589000, tzinfo=timezone.utc)
NOW_ISO = "2026-03-14T09:26:53.589Z"


def count_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM cms_outbox_events")).scalar_one())


def stored_payload(client: CMSClient, event_id: str) -> dict[str, Any]:
    row = client.store.get(event_id)
    assert row is not None, f"event {event_id} is not stored"
    return dict(json.loads(row["payload"]))


def sqlite_path(url: str) -> Path:
    database = make_url(url).database
    assert database is not None
    return Path(database)


@pytest.fixture
def client(make_client: MakeClient) -> CMSClient:
    """An enqueue-only client on the SQLite file whose clock stands still at NOW."""
    return make_client(clock=lambda: NOW)


@pytest.fixture
def app_engine(database_url: str, scratch_table: ScratchTable) -> Engine:
    """The application's own engine on the outbox database, with an ``app_orders`` table."""
    return scratch_table(database_url, "app_orders (id INTEGER PRIMARY KEY, total INTEGER)")


# -- the official SDK's calls, unchanged ------------------------------------------------------


def test_documented_sdk_calls_are_stored_pending_with_their_exact_payload(
    client: CMSClient,
) -> None:
    """The cutmeshort README's keyword calls, verbatim: nothing to change when switching."""
    standard = client.track_lead(
        click_id="id_123",
        event_name="signup_started",
        customer_external_id="user_42",
        customer_name="Jane Doe",  # optional
        customer_email="jane@example.com",  # optional
    )
    setup = client.track_lead(
        click_id="id_123",
        event_name="lead_captured",
        customer_external_id="user_42",
        mode="deferred",
    )
    follow_up = client.track_lead(
        event_name="kyc_completed",
        customer_external_id="user_42",
    )
    purchase = client.track_sale(
        click_id="id_123",
        event_name="purchase_completed",
        customer_external_id="user_42",
        invoice_id="inv_987",
        amount=4999,  # in cents
        currency="USD",  # 3-letter code
        customer_email="jane@example.com",  # optional
    )
    expected = {
        standard.event_id: {
            "clickId": "id_123", "eventName": "signup_started", "customerExternalId": "user_42",
            "timestamp": NOW_ISO, "customerName": "Jane Doe", "customerEmail": "jane@example.com",
        },
        setup.event_id: {
            "clickId": "id_123", "eventName": "lead_captured", "customerExternalId": "user_42",
            "timestamp": NOW_ISO, "mode": "deferred",
        },
        follow_up.event_id: {
            "eventName": "kyc_completed", "customerExternalId": "user_42", "timestamp": NOW_ISO,
        },
        purchase.event_id: {
            "clickId": "id_123", "eventName": "purchase_completed", "customerExternalId": "user_42",
            "invoiceId": "inv_987", "amount": 4999, "currency": "USD", "timestamp": NOW_ISO,
            "customerEmail": "jane@example.com",
        },
    }  # fmt: skip
    for returned in (standard, setup, follow_up, purchase):
        assert returned == TrackResult(True, returned.event_id, EventState.PENDING)
        assert client.result(returned.event_id) == returned
        assert stored_payload(client, returned.event_id) == expected[returned.event_id]
    assert len(expected) == 4 == count_rows(client.engine)
    assert client.store.get(setup.event_id)["mode"] == "deferred"  # type: ignore[index]
    assert client.store.get(purchase.event_id)["invoice_id"] == "inv_987"  # type: ignore[index]
    assert client.store.get(follow_up.event_id)["click_id"] is None  # type: ignore[index]


def test_positional_calls_follow_the_sdk_argument_order(client: CMSClient) -> None:
    lead = client.track_lead("signup", "user_1", "id_1", "Jane", "jane@example.com")
    sale = client.track_sale("purchase", "user_1", "inv_1", 100, "eur", "id_1")
    assert stored_payload(client, lead.event_id)["customerEmail"] == "jane@example.com"
    assert stored_payload(client, sale.event_id)["currency"] == "EUR"
    assert stored_payload(client, sale.event_id)["clickId"] == "id_1"


def test_timestamp_is_stamped_at_enqueue_when_absent(make_client: MakeClient) -> None:
    """An event sent after an outage must carry when it happened, not when it was sent."""
    client = make_client()
    before = datetime.now(timezone.utc)
    result = client.track_lead(event_name="signup", customer_external_id="user_1")
    after = datetime.now(timezone.utc)
    stamped = stored_payload(client, result.event_id)["timestamp"]
    moment = datetime.fromisoformat(stamped.replace("Z", "+00:00"))
    assert stamped.endswith("Z")
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= moment <= after


def test_given_timestamp_is_kept(client: CMSClient) -> None:
    result = client.track_sale(
        "purchase", "user_1", "inv_1", 100, "USD", timestamp="2024-01-02T03:04:05+01:00"
    )
    assert stored_payload(client, result.event_id)["timestamp"] == "2024-01-02T02:04:05.000Z"


# -- nothing is written for a bad call -----------------------------------------------------------

BAD_CALLS: list[tuple[str, dict[str, Any], str]] = [
    ("lead", {"event_name": "", "customer_external_id": "u"}, "event_name"),
    ("lead", {"event_name": "e", "customer_external_id": None}, "customer_external_id"),
    ("lead", {"event_name": "e", "customer_external_id": "u", "mode": "deferred"}, "click_id"),
    ("lead", {"event_name": "e", "customer_external_id": "u", "timestamp": "soon"}, "timestamp"),
    ("sale", {"event_name": "e", "customer_external_id": "u", "invoice_id": "i",
              "amount": 49.99, "currency": "USD"}, "amount"),
    ("sale", {"event_name": "e", "customer_external_id": "u", "invoice_id": "i",
              "amount": 4999, "currency": "dollars"}, "currency"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "arguments", "field"), BAD_CALLS)
def test_bad_call_raises_and_writes_no_row(
    client: CMSClient, kind: str, arguments: dict[str, Any], field: str
) -> None:
    client.track_lead(event_name="earlier", customer_external_id="u")
    track = client.track_lead if kind == "lead" else client.track_sale
    with pytest.raises(ValidationError) as caught:
        track(**arguments)
    assert caught.value.field == field
    assert count_rows(client.engine) == 1


@pytest.mark.parametrize("wait", ["soon", "5", -1, float("nan"), float("inf"), True, [5]])
@pytest.mark.parametrize("kind", ["lead", "sale"])
def test_a_bad_wait_raises_naming_it_and_writes_no_row(
    client: CMSClient, kind: str, wait: Any
) -> None:
    """A string or inf was stored first and failed after (TypeError, OverflowError)."""
    track = client.track_lead if kind == "lead" else client.track_sale
    arguments = LEAD if kind == "lead" else SALE
    with pytest.raises(ValidationError) as caught:
        track(**arguments, wait=wait)
    assert caught.value.field == "wait"
    assert count_rows(client.engine) == 0


@pytest.mark.parametrize("timeout", ["soon", -1, float("nan"), float("inf"), True])
def test_a_bad_flush_timeout_raises_naming_it(client: CMSClient, timeout: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        client.flush(timeout=timeout)
    assert caught.value.field == "timeout"


def is_currency_like(value: str) -> bool:
    return len(value) == 3 and value.isascii() and value.isalpha()


CONTROL = st.sampled_from(["\x00", "\n", "\x1b", "\x7f", "\x85", "\u2028", "\ud800", "\udfff"])
NOT_TEXT = st.one_of(
    st.integers(), st.floats(), st.booleans(), st.binary(max_size=4), st.lists(st.integers())
)
SAFE_CHAR = st.characters(codec="utf-8", exclude_categories=("Cc", "Zs", "Zl", "Zp"))
BROKEN_TEXT = st.one_of(
    st.builds("{}{}{}".format, st.text(max_size=8), CONTROL, st.text(max_size=8)),
    st.builds(lambda char, times: char * times, SAFE_CHAR, st.integers(2049, 2600)),  # any limit
)
BLANK = st.text(st.sampled_from(" \t"), max_size=3)
BAD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "event_name": st.none() | NOT_TEXT | BROKEN_TEXT | BLANK,
    "customer_external_id": st.none() | NOT_TEXT | BROKEN_TEXT | BLANK,
    "click_id": NOT_TEXT | BROKEN_TEXT | BLANK,
    "customer_name": NOT_TEXT | BROKEN_TEXT,
    "customer_email": NOT_TEXT | BROKEN_TEXT | st.text(st.sampled_from("abc.-"), max_size=20),
    "customer_avatar": NOT_TEXT | BROKEN_TEXT | st.just("https://x.io/a b.png"),
    "timestamp": NOT_TEXT | st.text(st.sampled_from("abcxyz!? "), max_size=20),
    "mode": NOT_TEXT | st.text(max_size=10).filter(lambda mode: mode != "deferred"),
    "invoice_id": st.none() | NOT_TEXT | BROKEN_TEXT | BLANK,
    "amount": st.none() | st.floats() | st.booleans() | st.integers(max_value=-1) | st.text(),
    "currency": st.none() | NOT_TEXT | st.text().filter(lambda c: not is_currency_like(c)),
}  # fmt: skip
LEAD: dict[str, Any] = {
    "event_name": "signup",
    "customer_external_id": "user_1",
    "click_id": "id_1",
}
SALE: dict[str, Any] = {**LEAD, "invoice_id": "inv_1", "amount": 100, "currency": "USD"}
SALE_ONLY = ("invoice_id", "amount", "currency")


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kind=st.sampled_from(["lead", "sale"]),
    field=st.sampled_from(sorted(BAD_VALUES)),
    data=st.data(),
)
def test_any_bad_input_raises_validation_error_and_writes_nothing(
    client: CMSClient, kind: str, field: str, data: st.DataObject
) -> None:
    """One argument spoiled at random: the error names it and the table does not grow."""
    if (kind == "lead" and field in SALE_ONLY) or (kind == "sale" and field == "mode"):
        kind = "sale" if kind == "lead" else "lead"
    arguments = dict(LEAD if kind == "lead" else SALE)
    arguments[field] = data.draw(BAD_VALUES[field], label=field)
    before = count_rows(client.engine)
    track = client.track_lead if kind == "lead" else client.track_sale
    with pytest.raises(ValidationError) as caught:
        track(**arguments)
    assert caught.value.field == field
    assert count_rows(client.engine) == before


# -- a sale's invoice_id is its natural key ---------------------------------------------------


def test_duplicate_invoice_returns_the_existing_event(
    make_client: MakeClient, database_url: str
) -> None:
    client = make_client(database_url=database_url)
    first = client.track_sale("purchase", "user_1", "inv_987", 4999, "USD", "id_123")
    again = client.track_sale("purchase", "user_1", "inv_987", 4999, "USD", "id_123")
    assert again == first == client.result(first.event_id)
    assert count_rows(client.engine) == 1
    with pytest.raises(InvoiceConflict):  # another sale under the same invoice: a bug to see
        client.track_sale("purchase", "user_1", "inv_987", 1, "EUR", "id_123")
    assert count_rows(client.engine) == 1
    assert stored_payload(client, first.event_id)["amount"] == 4999  # the first one stands
    other = client.track_sale("purchase", "user_1", "inv_988", 4999, "USD", "id_123")
    assert other.event_id != first.event_id
    assert count_rows(client.engine) == 2


def test_leads_have_no_natural_key(client: CMSClient) -> None:
    """Two identical leads are two events: only the caller knows whether they differ."""
    first = client.track_lead("signup", "user_1", "id_1")
    second = client.track_lead("signup", "user_1", "id_1")
    assert first.event_id != second.event_id
    assert count_rows(client.engine) == 2


def test_a_sale_committed_after_the_transaction_began_is_the_duplicate_it_returns(
    make_client: MakeClient, database_url: str, app_engine: Engine
) -> None:
    """The application's transaction has already read (on MySQL that fixes its snapshot)
    when another transaction commits the same invoice: the stored sale is returned."""
    client = make_client(database_url=database_url)
    with app_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM app_orders")).scalar_one() == 0
        first = client.track_sale("purchase", "user_1", "inv_1", 4999, "USD", "id_1")
        again = client.track_sale(
            "purchase", "user_1", "inv_1", 4999, "USD", "id_1", connection=conn
        )
        conn.commit()
    assert again == first
    assert count_rows(app_engine) == 1


def test_the_same_invoice_from_two_open_transactions_stores_one_sale(
    make_client: MakeClient, database_url: str, app_engine: Engine
) -> None:
    """The second waits for the first's commit, then returns the sale it stored."""
    client = make_client(database_url=database_url)
    second: list[Any] = []
    with app_engine.connect() as first_conn, app_engine.connect() as second_conn:
        assert second_conn.execute(text("SELECT count(*) FROM app_orders")).scalar_one() == 0
        first = client.track_sale(
            "purchase", "user_1", "inv_1", 4999, "USD", "id_1", connection=first_conn
        )

        def track_in_second() -> None:
            try:
                second.append(client.track_sale(
                    "purchase", "user_1", "inv_1", 4999, "USD", "id_1", connection=second_conn
                ))  # fmt: skip
                second_conn.commit()
            except Exception as exc:  # reported by the assertion below
                second.append(exc)

        thread = threading.Thread(target=track_in_second)
        thread.start()
        first_conn.commit()
        thread.join(timeout=60)
    assert second == [first]
    assert count_rows(app_engine) == 1


# -- transactional outbox: connection= --------------------------------------------------------


@pytest.mark.parametrize("commit", [True, False], ids=["commit", "rollback"])
def test_connection_puts_the_event_in_the_application_transaction(
    make_client: MakeClient, database_url: str, app_engine: Engine, commit: bool
) -> None:
    client = make_client(database_url=database_url)
    with app_engine.connect() as conn:
        conn.execute(text("INSERT INTO app_orders (id, total) VALUES (1, 4999)"))
        result = client.track_sale(
            "purchase", "user_1", "inv_1", 4999, "USD", "id_1", connection=conn
        )
        assert result.success and result.state is EventState.PENDING
        with pytest.raises(EventNotFound):  # not visible outside the open transaction
            client.result(result.event_id)
        if commit:
            conn.commit()
        else:
            conn.rollback()
    assert count_rows(app_engine) == (1 if commit else 0)
    if commit:
        assert client.result(result.event_id).state is EventState.PENDING
        assert stored_payload(client, result.event_id)["invoiceId"] == "inv_1"
    else:
        with pytest.raises(EventNotFound):
            client.result(result.event_id)


@pytest.mark.parametrize("commit", [True, False], ids=["commit", "rollback"])
def test_orm_session_puts_the_event_in_its_transaction(
    make_client: MakeClient, database_url: str, app_engine: Engine, commit: bool
) -> None:
    client = make_client(database_url=database_url)
    with Session(app_engine) as session:
        session.execute(text("INSERT INTO app_orders (id, total) VALUES (1, 4999)"))
        result = client.track_lead("signup", "user_1", "id_1", connection=session)
        if commit:
            session.commit()
        else:
            session.rollback()
    with app_engine.connect() as conn:
        orders = conn.execute(text("SELECT count(*) FROM app_orders")).scalar_one()
    assert (orders, count_rows(app_engine)) == ((1, 1) if commit else (0, 0))
    if commit:
        assert stored_payload(client, result.event_id)["clickId"] == "id_1"


# -- the SQLite file ------------------------------------------------------------------------


def test_database_files_are_private(make_client: MakeClient, sqlite_url: str) -> None:
    """Payloads hold customer e-mails: even a permissive umask must not expose them."""
    old_umask = os.umask(0)
    try:
        client = make_client()
        client.track_lead("signup", "user_1", customer_email="jane@example.com")
    finally:
        os.umask(old_umask)
    path = sqlite_path(sqlite_url)
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        assert name.exists(), name
        assert stat.S_IMODE(name.stat().st_mode) == 0o600, name


def test_token_is_never_stored(make_client: MakeClient, sqlite_url: str) -> None:
    token = "secret-token-xyz"
    client = make_client(token=token)
    assert client.settings.token == token
    client.track_lead("signup", "user_1", "id_1")
    client.track_sale("purchase", "user_1", "inv_1", 4999, "USD")
    path = sqlite_path(sqlite_url)
    files = [path, Path(f"{path}-wal")]
    contents = b"".join(name.read_bytes() for name in files)
    assert b"inv_1" in contents  # the check reads the right files
    assert token.encode() not in contents
    client.close()  # checkpoints the WAL into the main file
    assert token.encode() not in path.read_bytes()


# -- concurrency ----------------------------------------------------------------------------

WRITER = """
import os, sys, time
from cms_outbox import CMSClient

url, tag, go = sys.argv[1:4]
with CMSClient(database_url=url, flush="off") as client:
    open(f"{go}.{tag}", "w").close()
    while not os.path.exists(go):
        time.sleep(0.005)
    for i in range(500):
        client.track_lead(event_name="signup", customer_external_id=f"{tag}-{i}")
"""


def test_four_processes_enqueue_into_one_sqlite_file(sqlite_url: str, tmp_path: Path) -> None:
    """Each process migrates the empty file at once, then all write together: nothing lost."""
    go = str(tmp_path / "go")
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, sqlite_url, str(tag), go],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for tag in range(4)
    ]
    try:
        deadline = time.monotonic() + 60
        while not all(os.path.exists(f"{go}.{tag}") for tag in range(4)):
            assert all(w.poll() is None for w in writers), "a writer died before starting"
            assert time.monotonic() < deadline, "writers did not get ready"
            time.sleep(0.01)
        Path(go).touch()
        outputs = [writer.communicate(timeout=120) for writer in writers]
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
    for writer, (_, stderr) in zip(writers, outputs):
        assert (writer.returncode, stderr) == (0, "")
    engine = create_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            counts = conn.execute(
                text(
                    "SELECT count(*), count(DISTINCT customer_external_id), "
                    "count(DISTINCT event_id) FROM cms_outbox_events"
                )
            ).one()
            assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
    finally:
        engine.dispose()
    assert tuple(counts) == (2000, 2000, 2000)


def test_eight_threads_enqueue_through_one_client(client: CMSClient) -> None:
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def write(tag: int) -> None:
        try:
            start.wait()
            for i in range(200):
                client.track_lead(event_name="signup", customer_external_id=f"{tag}-{i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(tag,)) for tag in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    with client.engine.connect() as conn:
        distinct = conn.execute(
            text("SELECT count(DISTINCT customer_external_id) FROM cms_outbox_events")
        ).scalar_one()
    assert (count_rows(client.engine), distinct) == (1600, 1600)


# -- storage failures are OutboxErrors, never driver exceptions ----------------------------------


def assert_translated(error: StorageError) -> None:
    assert isinstance(error, OutboxError)
    assert not isinstance(error, SQLAlchemyError)
    assert error.__cause__ is not None  # the driver's error, kept for debugging


def test_a_path_under_a_file_is_a_storage_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("not a directory")
    with pytest.raises(StorageError) as caught:
        CMSClient(database_url=f"sqlite:///{tmp_path / 'a_file' / 'outbox.db'}", flush="off")
    assert not isinstance(caught.value, DirectoryNotFound)  # the directory is there: a file
    assert f"{tmp_path / 'a_file'} is a file, not a directory" in str(caught.value)
    assert list(tmp_path.iterdir()) == [tmp_path / "a_file"]  # nothing was created


def test_file_that_is_not_sqlite_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is not a SQLite database\x00\xff" * 200)
    with pytest.raises(StorageError) as caught:
        CMSClient(database_url=f"sqlite:///{path}", flush="off")
    assert_translated(caught.value)


def test_missing_table_is_a_storage_error(
    make_client: MakeClient, database_url: str, app_engine: Engine
) -> None:
    """The table dropped behind the client's back: every call says so as a StorageError."""
    client = make_client(database_url=database_url)
    stored = client.track_lead("signup", "user_1")
    with app_engine.begin() as conn:
        conn.execute(text("DROP TABLE cms_outbox_events"))
    calls: list[Callable[[], object]] = [
        lambda: client.track_lead("signup", "user_1"),
        lambda: client.track_sale("purchase", "user_1", "inv_1", 100, "USD"),
        lambda: client.result(stored.event_id),
    ]
    for call in calls:
        with pytest.raises(StorageError) as caught:
            call()
        assert_translated(caught.value)
    with app_engine.connect() as conn, pytest.raises(StorageError) as caught:
        client.track_lead("signup", "user_1", connection=conn)
    assert_translated(caught.value)


# -- lifecycle ------------------------------------------------------------------------------


def test_calls_after_close_raise_client_closed(make_client: MakeClient) -> None:
    client = make_client()
    client.close()
    calls: list[Callable[[], object]] = [
        lambda: client.track_lead("signup", "user_1"),
        lambda: client.track_sale("purchase", "user_1", "inv_1", 100, "USD"),
        lambda: client.result("00000000-0000-4000-8000-000000000000"),
        lambda: client.flush(),
    ]
    for call in calls:
        with pytest.raises(ClientClosed):
            call()
    assert issubclass(ClientClosed, RuntimeError)


def test_close_is_idempotent_and_disposes_its_own_engine(make_client: MakeClient) -> None:
    client = make_client()
    client.track_lead("signup", "user_1")
    pool = client.engine.pool
    client.close()
    client.close()
    assert client.engine.pool is not pool  # dispose() replaces the pool: connections released


def test_context_manager_closes_and_events_survive(make_client: MakeClient) -> None:
    with make_client() as client:
        result = client.track_lead("signup", "user_1")
    with pytest.raises(ClientClosed):
        client.track_lead("signup", "user_2")
    reopened = make_client()
    assert reopened.result(result.event_id) == result


def test_engine_passed_in_is_not_disposed(sqlite_url: str) -> None:
    """The application owns it: closing the client must leave it usable."""
    engine = create_engine(sqlite_url)
    pool = engine.pool
    try:
        with CMSClient(engine=engine, flush="off") as client:
            client.track_lead("signup", "user_1")
        assert engine.pool is pool
        assert count_rows(engine) == 1
    finally:
        engine.dispose()
