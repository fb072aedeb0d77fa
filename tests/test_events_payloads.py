"""An accepted event is exactly the camelCase body the service takes, as in the SDK's examples."""

from __future__ import annotations

import re
import uuid

from cms_outbox.events import build_lead, build_sale
from tests.event_builders import LEAD_KEYS, NOW, NOW_ISO, SALE_KEYS, body, lead, sale

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}")


# -- payloads ------------------------------------------------------------------------------


def test_absent_fields_are_omitted_never_null() -> None:
    assert body(lead()) == {
        "eventName": "signup",
        "customerExternalId": "user_42",
        "timestamp": NOW_ISO,
    }
    assert body(sale()) == {
        "eventName": "purchase",
        "customerExternalId": "user_42",
        "invoiceId": "inv_1",
        "amount": 4999,
        "currency": "USD",
        "timestamp": NOW_ISO,
    }
    assert "null" not in lead().payload and "null" not in sale().payload


def test_every_field_is_camel_case() -> None:
    everything = {
        "click_id": "id_123",
        "customer_name": "Jane Doe",
        "customer_email": "jane@example.com",
        "customer_avatar": "https://cdn.example.com/jane.png",
    }
    assert set(body(lead(**everything, mode="deferred"))) == LEAD_KEYS
    assert set(body(sale(**everything))) == SALE_KEYS


# The official SDK's documented examples (cutmeshort README), and the exact body each sends.


def test_doc_example_standard_lead() -> None:
    event = build_lead(
        click_id="id_123",
        event_name="signup_started",
        customer_external_id="user_42",
        customer_name="Jane Doe",
        customer_email="jane@example.com",
        now=NOW,
    )
    assert body(event) == {
        "clickId": "id_123",
        "eventName": "signup_started",
        "customerExternalId": "user_42",
        "timestamp": NOW_ISO,
        "customerName": "Jane Doe",
        "customerEmail": "jane@example.com",
    }
    assert (event.kind, event.click_id, event.mode) == ("lead", "id_123", None)
    assert event.invoice_id is None


def test_doc_example_deferred_setup() -> None:
    event = build_lead(
        click_id="id_123",
        event_name="lead_captured",
        customer_external_id="user_42",
        mode="deferred",
        now=NOW,
    )
    assert body(event) == {
        "clickId": "id_123",
        "eventName": "lead_captured",
        "customerExternalId": "user_42",
        "timestamp": NOW_ISO,
        "mode": "deferred",
    }
    assert event.mode == "deferred"


def test_doc_example_follow_up_lead_has_no_click_id() -> None:
    """The library never adds a clickId the caller did not give (duplicate attribution)."""
    event = build_lead(event_name="kyc_completed", customer_external_id="user_42", now=NOW)
    assert body(event) == {
        "eventName": "kyc_completed",
        "customerExternalId": "user_42",
        "timestamp": NOW_ISO,
    }
    assert event.click_id is None and event.mode is None


def test_doc_example_sale() -> None:
    event = build_sale(
        click_id="id_123",
        event_name="purchase_completed",
        customer_external_id="user_42",
        invoice_id="inv_987",
        amount=4999,
        currency="USD",
        customer_email="jane@example.com",
        now=NOW,
    )
    assert body(event) == {
        "clickId": "id_123",
        "eventName": "purchase_completed",
        "customerExternalId": "user_42",
        "invoiceId": "inv_987",
        "amount": 4999,
        "currency": "USD",
        "timestamp": NOW_ISO,
        "customerEmail": "jane@example.com",
    }
    assert (event.kind, event.invoice_id, event.click_id) == ("sale", "inv_987", "id_123")


def test_each_event_gets_its_own_uuid() -> None:
    """The event id is the Idempotency-Key: two calls must never share one."""
    ids = {lead().event_id for _ in range(1000)}
    assert len(ids) == 1000
    for event_id in ids:
        assert UUID4.fullmatch(event_id)
        parsed = uuid.UUID(event_id)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
