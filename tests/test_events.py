"""Validation and wire payloads of single events (``cms_outbox.events``): pure, no database.

Every rule must reject bad input with a ``ValidationError`` naming the caller's argument,
and every accepted event must serialise to exactly the camelCase body the service takes.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cms_outbox import ValidationError
from cms_outbox.events import Event, build_lead, build_sale

NOW = datetime(2026, 3, 14, 9, 26, 53, 589000, tzinfo=timezone.utc)
NOW_ISO = "2026-03-14T09:26:53.589Z"
PLUS_TWO = timezone(timedelta(hours=2))
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}")
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")

LEAD_ARGS = (
    "event_name", "customer_external_id", "click_id", "customer_name", "customer_email",
    "customer_avatar", "timestamp", "mode",
)  # fmt: skip
SALE_ARGS = (
    "event_name", "customer_external_id", "invoice_id", "amount", "currency", "click_id",
    "customer_name", "customer_email", "customer_avatar", "timestamp",
)  # fmt: skip
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


# -- properties: arbitrary input never escapes as anything but ValidationError ---------------

WEIRD_CHARS = st.sampled_from(
    ["\x00", "\n", "\x1f", "\x7f", "\x9f", "\u2028", "\ud800", "\udfff",
     "@", " ", "é", "😀", "Z", ":", "-"]
)  # fmt: skip
WEIRD_TEXT = st.text(st.one_of(st.characters(), WEIRD_CHARS), max_size=40)
HUGE_TEXT = st.builds(
    lambda chunk, times: chunk * times, st.text(min_size=1, max_size=4), st.integers(60, 800)
)
OTHER_JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.binary(max_size=8), st.dates(),
    st.datetimes(), st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)  # fmt: skip
MAX_OFFSET = timedelta(hours=23)
OFFSETS = st.builds(timezone, st.timedeltas(min_value=-MAX_OFFSET, max_value=MAX_OFFSET))
# Years 1970-9998, per the events module's range; any fixed UTC offset or naive (meaning UTC).
GOOD_MOMENT = st.datetimes(
    datetime(1970, 1, 2), datetime(9998, 12, 30), timezones=st.one_of(st.none(), OFFSETS)
)
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cc"]), min_size=1, max_size=30)
# Plausible text around one lone surrogate: valid-looking, yet not encodable as UTF-8.
SURROGATE_TEXT = st.builds("{}{}{}".format, TEXT, st.characters(categories=["Cs"]), TEXT)
JUNK = st.one_of(WEIRD_TEXT, HUGE_TEXT, SURROGATE_TEXT, OTHER_JUNK)
OPTIONAL_TEXT = st.none() | TEXT
EMAIL = st.none() | st.just("jane@example.com")
AVATAR = st.none() | st.just("https://cdn.example.com/a.png")
MOMENT = st.none() | GOOD_MOMENT | GOOD_MOMENT.map(datetime.isoformat)
LEAD_FIELDS = {
    "event_name": TEXT, "customer_external_id": TEXT, "click_id": OPTIONAL_TEXT,
    "customer_name": OPTIONAL_TEXT, "customer_email": EMAIL, "customer_avatar": AVATAR,
    "timestamp": MOMENT, "mode": st.none() | st.just("deferred"),
}  # fmt: skip
SALE_FIELDS = {
    "event_name": TEXT, "customer_external_id": TEXT, "invoice_id": TEXT,
    "amount": st.integers(0, 10**12), "currency": st.sampled_from(["USD", "eur", "Inr"]),
    "click_id": OPTIONAL_TEXT, "customer_name": OPTIONAL_TEXT, "customer_email": EMAIL,
    "customer_avatar": AVATAR, "timestamp": MOMENT,
}  # fmt: skip


@st.composite
def perturbed(draw: Any, fields: dict[str, st.SearchStrategy[Any]]) -> dict[str, Any]:
    """Plausible arguments with up to two replaced by junk, so every rule gets its turn."""
    arguments = {name: draw(strategy) for name, strategy in fields.items()}
    for name in draw(st.lists(st.sampled_from(sorted(fields)), max_size=2, unique=True)):
        arguments[name] = draw(JUNK)
    return arguments


PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_accepted(event: Event, arguments: dict[str, Any], allowed_keys: set[str]) -> None:
    """An accepted event carries the caller's values, UTF-8-encodable, with no nulls."""
    event.payload.encode("utf-8")  # what the database and the wire will do with it
    payload = json.loads(event.payload)
    # Written by hand, it is exactly the text the json module would write.
    assert event.payload == json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    assert set(payload) <= allowed_keys
    assert None not in payload.values()
    assert payload["eventName"] == arguments["event_name"]
    assert payload["customerExternalId"] == arguments["customer_external_id"]
    assert ISO_UTC.fullmatch(payload["timestamp"])
    assert payload.get("clickId") == arguments["click_id"]


@PROPERTY
@given(perturbed(LEAD_FIELDS))
def test_any_lead_input_gives_a_payload_or_names_an_argument(arguments: dict[str, Any]) -> None:
    try:
        event = build_lead(**arguments, now=NOW)
    except ValidationError as error:
        assert error.field in LEAD_ARGS
        return
    check_accepted(event, arguments, LEAD_KEYS)
    assert json.loads(event.payload).get("mode") == arguments["mode"]


@PROPERTY
@given(perturbed(SALE_FIELDS))
def test_any_sale_input_gives_a_payload_or_names_an_argument(arguments: dict[str, Any]) -> None:
    try:
        event = build_sale(**arguments, now=NOW)
    except ValidationError as error:
        assert error.field in SALE_ARGS
        return
    check_accepted(event, arguments, SALE_KEYS)
    payload = json.loads(event.payload)
    assert type(payload["amount"]) is int and payload["amount"] == arguments["amount"] >= 0
    assert payload["currency"] == arguments["currency"].upper()
    assert payload["invoiceId"] == arguments["invoice_id"] == event.invoice_id


@PROPERTY
@given(st.datetimes(datetime(1970, 1, 2), datetime(9998, 12, 30), timezones=st.just(timezone.utc)))
def test_a_utc_moment_is_written_as_any_other_offset_of_it_would_be(moment: datetime) -> None:
    """The clock's own now() (aware, UTC) takes a shortcut; it writes the same text."""
    elsewhere = moment.astimezone(PLUS_TWO)
    assert body(lead(timestamp=moment))["timestamp"] == body(lead(timestamp=elsewhere))["timestamp"]
    assert body(lead(timestamp=moment.replace(microsecond=0)))["timestamp"].endswith(".000Z")


UTC_MOMENTS = st.datetimes(
    datetime(1970, 1, 2), datetime(9998, 12, 30), timezones=st.just(timezone.utc)
)


# Moments around NOW, a second or two apart, and anywhere in the range.
NEAR_NOW = st.builds(
    lambda s, ms: NOW + timedelta(seconds=s, milliseconds=ms),
    st.integers(-2, 2),
    st.integers(0, 999),
)


@PROPERTY
@given(st.lists(st.one_of(UTC_MOMENTS, NEAR_NOW), min_size=2, max_size=8))
def test_the_enqueue_moment_is_written_right_whatever_moment_came_before(
    moments: list[datetime],
) -> None:
    """The clock's now() has its second's text kept from one event to the next: never stale."""
    for moment in moments:
        stamped = body(build_lead("signup", "user_42", now=moment))["timestamp"]
        assert stamped == body(lead(timestamp=moment.astimezone(PLUS_TWO)))["timestamp"]


@PROPERTY
@given(GOOD_MOMENT)
def test_any_datetime_round_trips_as_utc(moment: datetime) -> None:
    """Whatever the offset, the payload names the same instant, in UTC, to the millisecond."""
    sent = body(lead(timestamp=moment))["timestamp"]
    assert ISO_UTC.fullmatch(sent)
    aware = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    parsed = datetime.fromisoformat(sent.replace("Z", "+00:00"))
    assert timedelta(0) <= aware - parsed < timedelta(milliseconds=1)
