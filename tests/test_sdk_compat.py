"""Drop-in for the official SDK: its return value, read as its dict, and a reused invoice id.

The official SDK (``cutmeshort``) returns ``{"status": bool, "data": str}``; code written
against it must keep working with a ``TrackResult``. A sale whose ``invoice_id`` is already
stored for another sale is the caller's bug and must not hide behind the first sale's result.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Callable

import cutmeshort
import pytest
from sqlalchemy import create_engine, text

from cms_outbox import CMSClient, EventState, InvoiceConflict, TrackResult, ValidationError
from cms_outbox.sandbox import Sandbox
from tests.conftest import TOKEN

Factory = Callable[..., CMSClient]


def connect(make_client: Factory, sandbox: Sandbox, **options: Any) -> CMSClient:
    return make_client(token=TOKEN, host=sandbox.url, rate_limit=None, **options)


# -- TrackResult reads as the SDK's dict -------------------------------------------------


def test_track_result_is_a_read_only_mapping_with_the_sdks_keys() -> None:
    body = {"success": True, "status": True, "data": "lead:signup:user_42"}
    result = TrackResult(True, "e-1", EventState.DELIVERED, status_code=200, data=body)
    assert result["status"] is True and result["data"] == "lead:signup:user_42"
    assert dict(result) == {"status": True, "data": "lead:signup:user_42"}
    assert list(result) == ["status", "data"] and len(result) == 2
    assert "status" in result and "data" in result and "success" not in result
    assert result.get("status") is True and result.get("missing", "default") == "default"
    with pytest.raises(KeyError):
        result["success"]
    with pytest.raises(TypeError):
        result["status"] = False  # type: ignore[index]
    assert result.success is True and result.data == body  # attribute access stays


def test_a_dead_result_reads_as_the_sdks_failure() -> None:
    body = {"success": False, "error": "bad click", "statusCode": 422}
    result = TrackResult(
        False, "e-2", EventState.DEAD, error="HTTP 422", status_code=422, data=body
    )
    assert result["status"] is False
    assert result["data"] == body  # no "data" field in the answer: the whole body
    assert not TrackResult(False, "e-3", EventState.DEAD)["status"]


def test_sdk_code_reading_the_dict_works_against_the_outbox(
    make_client: Factory, sandbox: Sandbox
) -> None:
    """The SDK's documented pattern, with only the client swapped, after delivery."""
    client = connect(make_client, sandbox)
    response = client.track_lead(
        click_id="id_123", event_name="signup_started", customer_external_id="user_42", wait=5
    )
    assert response["status"] is True
    assert response["data"] == "lead:signup_started:user_42"  # the service's data string
    stored = client.track_lead(event_name="queued", customer_external_id="user_43", click_id="c")
    assert stored["status"] is True and stored["data"] is None  # stored, not yet answered


def test_the_same_snippets_give_the_same_accepted_events_as_the_official_sdk(
    sqlite_url: str,
) -> None:
    """Each of the SDK's documented calls, sent by the SDK and by the outbox, side by side."""

    def story(client: Any) -> list[Any]:
        return [
            client.track_lead(
                click_id="id_123",
                event_name="signup_started",
                customer_external_id="user_42",
                customer_name="Jane Doe",
                customer_email="jane@example.com",
            ),
            client.track_lead(
                click_id="id_456",
                event_name="lead_captured",
                customer_external_id="user_77",
                mode="deferred",
            ),
            client.track_lead(event_name="kyc_completed", customer_external_id="user_77"),
            client.track_sale(
                click_id="id_123",
                event_name="purchase_completed",
                customer_external_id="user_42",
                invoice_id="inv_987",
                amount=4999,
                currency="USD",
            ),
            client.track_sale(
                event_name="purchase_completed",
                customer_external_id="user_77",
                invoice_id="inv_988",
                amount=1500,
                currency="EUR",
            ),
        ]

    def accepted(sandbox: Sandbox) -> dict[str, list[tuple[str, dict[str, Any]]]]:
        """Each customer's accepted events in order (customers are sent concurrently).

        The outbox stamps the moment of the call; the SDK leaves it to the service.
        """
        seen: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for a in sandbox.accepted:
            payload = {k: v for k, v in a.payload.items() if k != "timestamp"}
            seen.setdefault(a.customer_external_id, []).append((a.kind, payload))
        return seen

    with Sandbox(token=TOKEN) as official_server, Sandbox(token=TOKEN) as outbox_server:
        official = story(cutmeshort.CMSClient(token=TOKEN, host=official_server.url))
        with CMSClient(
            token=TOKEN,
            host=outbox_server.url,
            rate_limit=None,
            database_url=sqlite_url,
            flush="off",
        ) as client:
            ours = story(client)
            report = client.flush(timeout=60)
            assert (report.delivered, report.dead, report.pending) == (5, 0, 0)
            delivered = [client.result(r.event_id) for r in ours]
        assert (
            accepted(outbox_server) == accepted(official_server)
            and len(outbox_server.accepted) == 5
        )
        assert [r["status"] for r in official] == [True] * 5
        assert [r["status"] for r in delivered] == [r["status"] for r in official]
        assert [r["data"] for r in delivered] == [r["data"] for r in official]


def test_a_lower_case_currency_goes_out_upper_case_where_the_sdk_sends_it_as_given(
    sqlite_url: str,
) -> None:
    """Payment providers hand out `usd`; the wire carries exactly 3 upper-case letters."""
    sale: dict[str, Any] = {"event_name": "purchase", "customer_external_id": "user_42",
                            "invoice_id": "inv_1", "amount": 4999, "click_id": "id_1"}  # fmt: skip
    with Sandbox(token=TOKEN) as official_server, Sandbox(token=TOKEN) as outbox_server:
        with pytest.raises(cutmeshort.ApiException):
            cutmeshort.CMSClient(token=TOKEN, host=official_server.url).track_sale(
                **sale, currency="usd"
            )
        [refused] = official_server.requests
        assert refused.status == 422 and official_server.accepted == []
        with CMSClient(
            token=TOKEN, host=outbox_server.url, rate_limit=None, database_url=sqlite_url,
            flush="off",
        ) as client:  # fmt: skip
            first = client.track_sale(**sale, currency="usd")
            assert client.track_sale(**sale, currency="USD").event_id == first.event_id
            assert client.flush(timeout=10).delivered == 1
        [accepted] = outbox_server.accepted
        assert accepted.payload["currency"] == "USD"


# -- a reused invoice id ----------------------------------------------------------------

SALE: dict[str, Any] = {
    "event_name": "purchase",
    "customer_external_id": "user_42",
    "invoice_id": "inv_1",
    "amount": 4999,
    "currency": "USD",
    "click_id": "c-1",
}


def event_count(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM cms_outbox_events")).scalar_one())
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("field", "value"),
    [("customer_external_id", "user_43"), ("amount", 5000), ("currency", "EUR")],
)
def test_a_reused_invoice_id_for_another_sale_raises_and_writes_nothing(
    make_client: Factory, sqlite_url: str, field: str, value: Any
) -> None:
    client = make_client()
    first = client.track_sale(**SALE)
    with pytest.raises(InvoiceConflict) as raised:
        client.track_sale(**{**SALE, field: value})
    error = raised.value
    assert isinstance(error, ValidationError) and isinstance(error, ValueError)
    assert error.field == "invoice_id" and error.stored_event_id == first.event_id
    assert str(error).startswith("invoice_id: 'inv_1' is already stored for another sale")
    assert field in str(error) and repr(value).lower() in str(error).lower()
    assert event_count(sqlite_url) == 1


def test_an_identical_retry_returns_the_stored_sale(make_client: Factory, sqlite_url: str) -> None:
    client = make_client()
    first = client.track_sale(**SALE)
    again = client.track_sale(**{**SALE, "customer_name": "Jane"})  # not part of the identity
    assert again == client.result(first.event_id) and again.event_id == first.event_id
    assert event_count(sqlite_url) == 1


def test_a_conflict_inside_the_applications_transaction_writes_nothing(
    make_client: Factory, sqlite_url: str
) -> None:
    client = make_client()
    client.track_sale(**SALE)
    with client.engine.begin() as conn:
        with pytest.raises(InvoiceConflict):
            client.track_sale(**{**SALE, "amount": 1}, connection=conn)
    assert event_count(sqlite_url) == 1


def test_concurrent_sales_with_one_invoice_id_store_one_and_the_rest_conflict_or_match(
    database_url: str,
) -> None:
    """Two clients race: the unique index picks one sale, then each loser compares with it."""
    clients = [CMSClient(database_url=database_url, flush="off") for _ in range(2)]
    amounts = [4999, 4999, 5000, 5000] * 3  # identical retries and conflicting sales
    outcomes: list[tuple[int, str]] = []
    barrier = threading.Barrier(len(amounts))

    def sell(n: int, amount: int) -> None:
        barrier.wait()
        try:
            result = clients[n % 2].track_sale(**{**SALE, "amount": amount})
            outcomes.append((amount, result.event_id))
        except InvoiceConflict as exc:
            outcomes.append((amount, f"conflict {exc.stored_event_id}"))

    threads = [threading.Thread(target=sell, args=(n, a)) for n, a in enumerate(amounts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        (row,) = _stored_sales(clients[0])
        stored_amount = json.loads(row["payload"])["amount"]
        for amount, outcome in outcomes:
            expected = row["event_id"] if amount == stored_amount else f"conflict {row['event_id']}"
            assert outcome == expected
        assert len(outcomes) == len(amounts)
    finally:
        for client in clients:
            client.close()


def _stored_sales(client: CMSClient) -> list[dict[str, Any]]:
    with client.engine.connect() as conn:
        rows = conn.execute(text("SELECT event_id, payload FROM cms_outbox_events"))
        return [dict(row._mapping) for row in rows]
