"""Any input gives a valid payload or a ValidationError naming an argument; moments go as UTC."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cms_outbox import ValidationError
from cms_outbox.events import Event, build_lead, build_sale
from tests.event_builders import LEAD_KEYS, NOW, PLUS_TWO, SALE_KEYS, body, lead

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")

LEAD_ARGS = (
    "event_name", "customer_external_id", "click_id", "customer_name", "customer_email",
    "customer_avatar", "timestamp", "mode",
)  # fmt: skip
SALE_ARGS = (
    "event_name", "customer_external_id", "invoice_id", "amount", "currency", "click_id",
    "customer_name", "customer_email", "customer_avatar", "timestamp",
)  # fmt: skip


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
