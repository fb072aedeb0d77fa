"""Valid events for the tests of cms_outbox.events, built at a fixed moment, arguments replaced."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

from cms_outbox.events import Event, build_lead, build_sale

NOW = datetime(2026, 3, 14, 9, 26, 53, 589000, tzinfo=timezone.utc)
NOW_ISO = "2026-03-14T09:26:53.589Z"
PLUS_TWO = timezone(timedelta(hours=2))
LEAD_KEYS = {
    "clickId", "eventName", "customerExternalId", "timestamp", "customerName",
    "customerEmail", "customerAvatar", "mode",
}  # fmt: skip
SALE_KEYS = (LEAD_KEYS - {"mode"}) | {"invoiceId", "amount", "currency"}


def lead(**overrides: Any) -> Event:
    """A valid lead, with some arguments replaced."""
    arguments: dict[str, Any] = {"event_name": "signup", "customer_external_id": "user_42"}
    arguments.update(overrides)
    return build_lead(**arguments, now=NOW)


def sale(**overrides: Any) -> Event:
    """A valid sale, with some arguments replaced."""
    arguments: dict[str, Any] = {
        "event_name": "purchase",
        "customer_external_id": "user_42",
        "invoice_id": "inv_1",
        "amount": 4999,
        "currency": "USD",
    }
    arguments.update(overrides)
    return build_sale(**arguments, now=NOW)


def body(event: Event) -> dict[str, Any]:
    return dict(json.loads(event.payload))
