"""Each event rule refuses bad input with a ValidationError naming the caller's argument."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import pytest

from cms_outbox import ValidationError
from tests.event_builders import NOW, NOW_ISO, PLUS_TWO, body, lead, sale


def rejected(build: Any, field: str, **overrides: Any) -> ValidationError:
    """Assert ``build(**overrides)`` is refused for ``field``; return the error."""
    with pytest.raises(ValidationError) as caught:
        build(**overrides)
    assert caught.value.field == field, str(caught.value)
    assert isinstance(caught.value, ValueError)  # callers of the official SDK catch ValueError
    assert field in str(caught.value)
    return caught.value


BOTH = pytest.mark.parametrize("build", [lead, sale], ids=["lead", "sale"])


# -- required text fields ------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize("bad", ["", "   ", None, 42, b"signup", ["signup"]])
def test_event_name_must_be_a_non_empty_string(build: Any, bad: Any) -> None:
    rejected(build, "event_name", event_name=bad)


@BOTH
@pytest.mark.parametrize("bad", ["", " \t", None, 42, 4.2, b"user_42"])
def test_customer_external_id_must_be_a_non_empty_string(build: Any, bad: Any) -> None:
    rejected(build, "customer_external_id", customer_external_id=bad)


@pytest.mark.parametrize("bad", ["", None, 987, b"inv_1"])
def test_invoice_id_must_be_a_non_empty_string(bad: Any) -> None:
    rejected(sale, "invoice_id", invoice_id=bad)


@BOTH
@pytest.mark.parametrize("bad", ["", 123, ["id_123"]])
def test_click_id_when_given_must_be_a_non_empty_string(build: Any, bad: Any) -> None:
    rejected(build, "click_id", click_id=bad)


# -- mode ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["Deferred", "DEFERRED", "immediate", "", True, 1])
def test_mode_accepts_only_deferred(bad: Any) -> None:
    rejected(lead, "mode", click_id="id_123", mode=bad)


def test_deferred_lead_needs_the_click_id_it_stores() -> None:
    """A deferred setup without click_id would associate nothing."""
    rejected(lead, "click_id", mode="deferred")


# -- amount and currency -------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [True, False, 49.99, 4999.0, -1, "4999", None, 10**16],
    ids=["True", "False", "49.99", "4999.0", "negative", "str", "None", "huge"],
)
def test_amount_must_be_non_negative_int_cents(bad: Any) -> None:
    """bool is an int and 49.99 looks like dollars: neither may pass for cents."""
    rejected(sale, "amount", amount=bad)


def test_amount_zero_is_allowed() -> None:
    assert body(sale(amount=0))["amount"] == 0


@pytest.mark.parametrize("bad", ["US", "USDD", "US1", "", "U D", "€UR", 840, None, b"USD"])
def test_currency_must_be_three_letters(bad: Any) -> None:
    rejected(sale, "currency", currency=bad)


@pytest.mark.parametrize("given_currency", ["usd", "Usd", "uSD"])
def test_currency_is_normalised_to_upper_case(given_currency: str) -> None:
    assert body(sale(currency=given_currency))["currency"] == "USD"


# -- timestamp -----------------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize(
    "bad",
    [1710408413, 1710408413.5, "yesterday", "2024-13-01T00:00:00", "14/03/2024", "",
     date(2024, 3, 14), datetime(1900, 1, 1), "0001-01-01T00:00:00"],
)  # fmt: skip
def test_timestamp_must_be_a_datetime_or_iso_8601(build: Any, bad: Any) -> None:
    rejected(build, "timestamp", timestamp=bad)


@pytest.mark.parametrize(
    ("given_timestamp", "expected"),
    [
        (datetime(2024, 3, 14, 12, 0, 0), "2024-03-14T12:00:00.000Z"),  # naive means UTC
        (datetime(2024, 3, 14, 14, 0, 0, tzinfo=PLUS_TWO), "2024-03-14T12:00:00.000Z"),
        ("2024-03-14T12:00:00Z", "2024-03-14T12:00:00.000Z"),
        ("2024-03-14T12:00:00.123456z", "2024-03-14T12:00:00.123Z"),
        ("2024-03-14T07:00:00-05:00", "2024-03-14T12:00:00.000Z"),
        ("2024-03-14T12:00:00", "2024-03-14T12:00:00.000Z"),
    ],
)  # fmt: skip
def test_timestamp_is_sent_as_iso_8601_utc(given_timestamp: Any, expected: str) -> None:
    assert body(lead(timestamp=given_timestamp))["timestamp"] == expected
    assert body(sale(timestamp=given_timestamp))["timestamp"] == expected


@BOTH
def test_absent_timestamp_is_the_enqueue_moment(build: Any) -> None:
    """An event delivered after an outage must still carry the moment it happened."""
    event = build()
    assert body(event)["timestamp"] == NOW_ISO
    assert event.created_at == NOW.timestamp()


# -- optional descriptive fields -------------------------------------------------------------


@BOTH
@pytest.mark.parametrize(
    "bad", ["jane.example.com", "jane@", "@example.com", "ja ne@example.com", "", 7]
)
def test_customer_email_must_look_like_an_address(build: Any, bad: Any) -> None:
    rejected(build, "customer_email", customer_email=bad)


@BOTH
@pytest.mark.parametrize("bad", ["https://x.io/a b.png", "", 3])
def test_customer_avatar_must_be_a_url_string(build: Any, bad: Any) -> None:
    rejected(build, "customer_avatar", customer_avatar=bad)


@BOTH
def test_customer_name_must_be_a_string(build: Any) -> None:
    rejected(build, "customer_name", customer_name=12)


def _email(length: int) -> str:
    return "a" * (length - len("@example.com")) + "@example.com"


def _avatar(length: int) -> str:
    return "https://cdn.example.com/" + "a" * (length - len("https://cdn.example.com/"))


LIMITS = [
    ("event_name", lambda n: "e" * n, 255),
    ("customer_external_id", lambda n: "u" * n, 255),
    ("click_id", lambda n: "c" * n, 255),
    ("customer_name", lambda n: "N" * n, 512),
    ("customer_email", _email, 512),
    ("customer_avatar", _avatar, 2048),
]


@BOTH
@pytest.mark.parametrize(("field", "make", "limit"), LIMITS, ids=[name for name, _, _ in LIMITS])
def test_length_limits(build: Any, field: str, make: Any, limit: int) -> None:
    """The limit itself is accepted, one more character is refused."""
    assert len(make(limit)) == limit
    assert make(limit) in body(build(**{field: make(limit)})).values()
    rejected(build, field, **{field: make(limit + 1)})


def test_invoice_id_length_limit() -> None:
    assert body(sale(invoice_id="i" * 255))["invoiceId"] == "i" * 255
    rejected(sale, "invoice_id", invoice_id="i" * 256)


CONTROL = ["\x00", "\n", "\r", "\t", "\x1b", "\x7f", "\x85", "\u2028", "\u2029"]


@pytest.mark.parametrize("char", CONTROL, ids=[f"U+{ord(c):04X}" for c in CONTROL])
@pytest.mark.parametrize("field", ["customer_external_id", "click_id", "invoice_id", "event_name"])
def test_control_characters_are_refused_in_identifiers(field: str, char: str) -> None:
    """They would corrupt logs, headers and the service's keys."""
    rejected(sale, field, **{field: f"user{char}42"})


@pytest.mark.parametrize("field", ["customer_external_id", "event_name", "customer_name"])
def test_lone_surrogates_are_refused(field: str) -> None:
    """Not encodable as UTF-8: the database and the wire could not carry it."""
    rejected(lead, field, **{field: "user\ud800"})


def test_unicode_text_is_kept_as_given() -> None:
    event = lead(customer_external_id="ユーザー_42", customer_name="Zoë 😀", event_name="注册")
    assert body(event)["customerExternalId"] == "ユーザー_42"
    assert body(event)["customerName"] == "Zoë 😀"
    assert "ユーザー" in event.payload  # stored readable, not \\u-escaped
