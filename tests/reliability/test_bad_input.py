"""Bad input: whatever a caller passes, ``track_lead``/``track_sale`` either store a payload
the service accepts or raise ``ValidationError`` naming one of the call's arguments, and
then write nothing.

Random types, huge and unicode strings, control characters and lone surrogates, bad
timestamps, currencies and amounts, as keyword calls (the SDK's style). A stored payload is
checked with the sandbox's own rules, which are independent of the client's.
"""

from __future__ import annotations

import inspect
import itertools
import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cms_outbox import CMSClient, ValidationError
from cms_outbox.sandbox.protocol import validate

EXAMPLES = 300

# Text that stresses storage and the wire: any code point (control characters and lone
# surrogates included), long runs of wide characters, blanks, look-alikes.
HUGE = st.builds(
    lambda char, count: char * count,
    st.sampled_from(["a", "é", "漢", "😀", "\x00", " ", "\u2028", "\ufeff", "\U0010ffff"]),
    st.integers(0, 5000),
)
TEXT = st.one_of(
    st.text(max_size=30),
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=300),
    HUGE,
    st.sampled_from(["", " ", "\t", "\u00a0", "null", "None", "0", "user@", "@x", "a@b"]),
)
JUNK = st.one_of(
    st.integers(),
    st.floats(),
    st.booleans(),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.decimals(allow_nan=True),
    st.datetimes(),
)
ANY = st.one_of(TEXT, JUNK)
OPTIONAL = st.one_of(st.none(), ANY)
TIMESTAMPS = st.one_of(
    st.none(),
    st.datetimes(),
    st.datetimes(timezones=st.just(timezone.utc)),
    st.datetimes(timezones=st.timezones()),
    st.sampled_from(
        [
            "2026-03-14T09:26:53Z",
            "2026-03-14T09:26:53.589+05:30",
            "2026-03-14",
            "20260314T092653Z",
            "2026-W11-6",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-03-14T25:00:00Z",
            "2026-03-14T09:26:53+25:00",
            "1969-12-31T23:59:59Z",
            "1970-01-01T00:00:00+14:00",
            "9998-12-31T23:59:59-14:00",
            "9999-12-31T23:59:59Z",
            "0001-01-01T00:00:00",
            "yesterday",
            " 2026-03-14T09:26:53Z ",
            "2026-03-14T09:26:53.123456789Z",
        ]
    ),
    ANY,
)
AMOUNTS = st.one_of(
    st.integers(-(10**17), 10**17),
    st.sampled_from([0, 1, 4999, 10**15, 10**15 + 1, -1, True, False, 49.99, 4999.0]),
    st.floats(),
    st.decimals(allow_nan=True),
    st.builds(Decimal, st.integers()),
    OPTIONAL,
)
CURRENCIES = st.one_of(
    st.sampled_from(["USD", "usd", "Eur", "US", "USDD", "ÄÖÜ", "ＵＳＤ", "U$D", "123", " US"]),
    st.text(max_size=4),
    OPTIONAL,
)
MODES = st.one_of(st.none(), st.just("deferred"), st.sampled_from(["Deferred", "deferred "]), ANY)
EMAILS = st.one_of(st.none(), st.emails(), ANY)
FRESH = "<a new invoice id>"  # replaced by a never-used id when the call is made
INVOICES = st.one_of(st.sampled_from([f"inv-{n}" for n in range(20)]), ANY)  # repeats too


def maybe_valid(valid: st.SearchStrategy[Any], wild: st.SearchStrategy[Any]) -> Any:
    """Four times in five a plausible value, so that many calls get far enough to be stored
    (``one_of`` would flatten ``wild``'s branches and drown the valid ones)."""
    return st.integers(0, 4).flatmap(lambda n: wild if n == 0 else valid)


# Printable text of any script: no control, separator-line or surrogate code points.
PRINTABLE = st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp"))


def valid_text(max_size: int) -> st.SearchStrategy[str]:
    return st.text(PRINTABLE, min_size=1, max_size=max_size).filter(str.strip)


IDENTIFIER = valid_text(60)
VALID_TIMESTAMP = st.one_of(
    st.none(),
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9998, 12, 30)),
    st.datetimes(
        min_value=datetime(1970, 1, 2), max_value=datetime(9998, 12, 30), timezones=st.timezones()
    ),
)
LEAD = st.fixed_dictionaries(
    {
        "event_name": maybe_valid(valid_text(80), ANY),
        "customer_external_id": maybe_valid(IDENTIFIER, ANY),
    },
    optional={
        "click_id": maybe_valid(st.one_of(st.none(), IDENTIFIER), ANY),
        "customer_name": maybe_valid(st.one_of(st.none(), st.text(PRINTABLE, max_size=80)), ANY),
        "customer_email": maybe_valid(st.one_of(st.none(), st.emails()), ANY),
        "customer_avatar": maybe_valid(st.just("https://x.example/a.png"), OPTIONAL),
        "timestamp": maybe_valid(VALID_TIMESTAMP, TIMESTAMPS),
        "mode": maybe_valid(st.sampled_from([None, None, "deferred"]), MODES),
    },
)
SALE = st.fixed_dictionaries(
    {
        "event_name": maybe_valid(valid_text(80), ANY),
        "customer_external_id": maybe_valid(IDENTIFIER, ANY),
        "invoice_id": maybe_valid(st.just(FRESH), INVOICES),
        "amount": maybe_valid(st.integers(0, 10**15), AMOUNTS),
        "currency": maybe_valid(st.text("USDEReurGBPgbpJY", min_size=3, max_size=3), CURRENCIES),
    },
    optional={
        "click_id": maybe_valid(st.one_of(st.none(), IDENTIFIER), ANY),
        "customer_name": maybe_valid(st.one_of(st.none(), st.text(PRINTABLE, max_size=80)), ANY),
        "customer_email": maybe_valid(st.one_of(st.none(), st.emails()), ANY),
        "customer_avatar": maybe_valid(st.just("https://x.example/a.png"), OPTIONAL),
        "timestamp": maybe_valid(VALID_TIMESTAMP, TIMESTAMPS),
    },
)


class Outbox:
    """One enqueue-only client on a SQLite file, shared by the examples of a test."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.client = CMSClient(database_url=f"sqlite:///{path}", flush="off", durability="normal")
        self.invoices: dict[str, str] = {}  # invoice_id -> event_id of the stored sale
        self.fresh = itertools.count()

    def rows(self) -> int:
        with closing(sqlite3.connect(self.path)) as conn:
            return int(conn.execute("SELECT count(*) FROM cms_outbox_events").fetchone()[0])

    def payload(self, event_id: str) -> tuple[str, dict[str, Any]]:
        with closing(sqlite3.connect(self.path)) as conn:
            kind, payload = conn.execute(
                "SELECT kind, payload FROM cms_outbox_events WHERE event_id = ?", (event_id,)
            ).fetchone()
        return str(kind), json.loads(payload)


@pytest.fixture(scope="module")
def outbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outbox]:
    box = Outbox(tmp_path_factory.mktemp("bad-input") / "outbox.db")
    yield box
    box.client.close()


def check(outbox: Outbox, kind: str, arguments: dict[str, Any]) -> None:
    method = getattr(outbox.client, f"track_{kind}")
    names = set(inspect.signature(method).parameters)
    if arguments.get("invoice_id") == FRESH:
        arguments = {**arguments, "invoice_id": f"fresh-{next(outbox.fresh)}"}
    before = outbox.rows()
    try:
        result = method(**arguments)
    except ValidationError as exc:
        assert exc.field in names, f"{exc.field!r} is not an argument of track_{kind}"
        assert exc.field in str(exc)
        assert outbox.rows() == before, "a rejected call wrote a row"
        event(f"rejected: {exc.field}")
        return
    invoice = str(arguments.get("invoice_id"))  # a sale stored: it was a valid string
    if kind == "sale" and invoice in outbox.invoices:
        # A repeated invoice returns the stored sale and stores nothing.
        assert result.event_id == outbox.invoices[invoice]
        assert outbox.rows() == before
        event("repeated invoice")
        return
    assert result.success and outbox.rows() == before + 1
    if kind == "sale":
        outbox.invoices[invoice] = result.event_id
    stored_kind, payload = outbox.payload(result.event_id)
    assert stored_kind == kind
    validate(kind, payload)  # the sandbox's rules: the service would take it
    camel = {"event_name": "eventName", "customer_external_id": "customerExternalId",
             "click_id": "clickId", "customer_name": "customerName", "invoice_id": "invoiceId",
             "customer_email": "customerEmail", "customer_avatar": "customerAvatar",
             "amount": "amount", "mode": "mode"}  # fmt: skip
    for name, key in camel.items():
        # Exactly the fields the caller gave, as given: never added, dropped or rewritten.
        assert payload.get(key) == arguments.get(name), name
    if kind == "sale":
        assert payload["currency"] == arguments["currency"].upper()
    assert payload["timestamp"].endswith("Z")
    assert set(payload) <= {*camel.values(), "currency", "timestamp"}
    event("stored")


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples on every run and machine
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(arguments=LEAD)
def test_any_lead_call_stores_a_valid_payload_or_names_an_argument_and_writes_nothing(
    outbox: Outbox, arguments: dict[str, Any]
) -> None:
    check(outbox, "lead", arguments)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples on every run and machine
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(arguments=SALE)
def test_any_sale_call_stores_a_valid_payload_or_names_an_argument_and_writes_nothing(
    outbox: Outbox, arguments: dict[str, Any]
) -> None:
    check(outbox, "sale", arguments)
