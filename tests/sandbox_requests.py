"""What the sandbox's tests send: the token, a valid lead and sale; the checks of an error body."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from cms_outbox.sandbox import Sandbox

TOKEN = "test-token"
LEAD = {"eventName": "signup", "customerExternalId": "cust-1", "clickId": "click-1"}
SALE = {
    "eventName": "purchase",
    "customerExternalId": "cust-1",
    "clickId": "click-1",
    "invoiceId": "inv-1",
    "amount": 4999,
    "currency": "USD",
}


@pytest.fixture
def sb():
    sandbox = Sandbox(token=TOKEN)
    sandbox.start()
    yield sandbox
    sandbox.stop()


@pytest.fixture
def http():
    session = requests.Session()
    yield session
    session.close()


def post(
    session: requests.Session,
    sandbox: Sandbox,
    kind: str,
    body: Any,
    *,
    key: str | None = None,
    token: str | None = TOKEN,
    timeout: float | tuple[float, float] = 60.0,
) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if key is not None:
        headers["Idempotency-Key"] = key
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return session.post(f"{sandbox.url}/track/{kind}", data=data, headers=headers, timeout=timeout)


def assert_error(response: requests.Response, status: int, type_: str) -> dict[str, Any]:
    assert response.status_code == status
    body = response.json()
    assert body["success"] is False
    assert body["type"] == type_
    assert body["statusCode"] == status
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["details"], dict)
    return body


def without(body: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != field}
