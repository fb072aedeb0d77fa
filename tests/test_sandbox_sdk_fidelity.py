"""The official SDK's documented calls succeed on the sandbox, and a bad token is its own 401."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest

from cms_outbox.sandbox import Sandbox
from tests.sandbox_requests import TOKEN, sb

__all__ = ["sb"]  # the fixtures: pytest finds them here


# -- fidelity with the official SDK ----------------------------------------------------


def sdk_client(token: str, sandbox: Sandbox) -> Any:
    cutmeshort = pytest.importorskip("cutmeshort")
    return cutmeshort.CMSClient(token=token, host=sandbox.url)


def close_sdk(client: Any) -> None:
    # CMSClient.close() calls ApiClient.close(), which does not exist in 1.0.1.
    client.api_client.rest_client.pool_manager.clear()


def test_official_sdk_documented_examples_succeed(sb):
    client = sdk_client(TOKEN, sb)
    try:
        standard = client.track_lead(
            click_id="id_123", event_name="signup_started", customer_external_id="user_42"
        )
        setup = client.track_lead(
            click_id="id_456",
            event_name="signup_started",
            customer_external_id="user_77",
            mode="deferred",
        )
        follow_up = client.track_lead(
            event_name="trial_started",
            customer_external_id="user_77",
            timestamp=datetime.now(timezone.utc),
        )
        sale = client.track_sale(
            click_id="id_123",
            event_name="purchase",
            customer_external_id="user_42",
            invoice_id="inv_1",
            amount=4999,
            currency="USD",
        )
    finally:
        close_sdk(client)

    assert standard == {"status": True, "data": "lead:signup_started:user_42"}
    assert setup["status"] is True and follow_up["status"] is True
    assert sale == {"status": True, "data": "sale:purchase:user_42"}
    assert [(a.kind, a.customer_external_id, a.click_id) for a in sb.accepted] == [
        ("lead", "user_42", "id_123"),
        ("lead", "user_77", "id_456"),
        ("lead", "user_77", "id_456"),
        ("sale", "user_42", "id_123"),
    ]
    assert sb.accepted[3].payload["amount"] == 4999
    assert sb.accepted[3].payload["currency"] == "USD"
    assert "clickId" not in sb.accepted[2].payload


def test_official_sdk_reports_401_for_a_bad_token(sb):
    from cutmeshort.exceptions import UnauthorizedException

    client = sdk_client("wrong-token", sb)
    try:
        with pytest.raises(UnauthorizedException) as raised:
            client.track_lead(click_id="id_123", event_name="e", customer_external_id="u")
    finally:
        close_sdk(client)
    assert raised.value.status == 401
    assert json.loads(raised.value.body or "")["type"] == "unauthorized"
    assert (
        raised.value.data is not None and raised.value.data.status_code == 401
    )  # parsed by the SDK's ErrorResponse model
    assert sb.accepted == []
