"""Validation and the wire payload of one event; pure, the clock is passed in.

Every rule raises ``ValidationError`` naming the caller's argument, before
anything touches the database.
"""

from __future__ import annotations

import json
import math
import os
import re
from datetime import datetime, timezone
from json.encoder import encode_basestring
from typing import Any, NamedTuple

from .errors import ValidationError

__all__ = [
    "Event", "build_lead", "build_sale", "format_timestamp", "sale_differences", "seconds",
]  # fmt: skip

MAX_ID = 255
MAX_EVENT_NAME = 255
MAX_TEXT = 512
MAX_URL = 2048
MAX_AMOUNT = 10**15  # cents; far above any real invoice, far below float precision trouble
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# A lone surrogate cannot be encoded as UTF-8: neither the database nor the wire could carry it.
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_CURRENCY = re.compile(r"[A-Za-z]{3}")
_WHITESPACE = re.compile(r"\s")


class Event(NamedTuple):
    """A validated event, ready to be stored: its identity, routing keys and wire JSON.

    A named tuple: built on every enqueue, at a quarter of a frozen dataclass's cost.
    """

    event_id: str
    kind: str
    customer_external_id: str
    click_id: str | None
    mode: str | None
    invoice_id: str | None
    payload: str
    created_at: float


# Each builder writes the payload's JSON text as it validates, field by field: the text
# ``json.dumps(payload, ensure_ascii=False, separators=(",", ":"))`` would write for the
# camelCase payload (absent fields omitted), at a third of its cost. Strings are escaped
# by ``json``'s own function; keys are plain.
_quote = encode_basestring


def build_lead(
    event_name: Any,
    customer_external_id: Any,
    click_id: Any = None,
    customer_name: Any = None,
    customer_email: Any = None,
    customer_avatar: Any = None,
    timestamp: Any = None,
    mode: Any = None,
    *,
    now: datetime,
) -> Event:
    """Validate a lead and build its camelCase payload (absent fields omitted)."""
    created_at = now.timestamp()
    body = "{"
    if click_id is not None:
        click_id = _identifier("click_id", click_id)
        body = '{"clickId":' + _quote(click_id) + ","
    name = _text("event_name", event_name, MAX_EVENT_NAME, required=True)
    customer = _identifier("customer_external_id", customer_external_id)
    if mode is not None:
        if mode != "deferred":
            raise ValidationError("mode", f'only "deferred" is allowed, got {mode!r}')
        if click_id is None:
            raise ValidationError("click_id", 'a mode="deferred" lead needs the click_id to store')
    body += '"eventName":' + _quote(name) + ',"customerExternalId":' + _quote(customer)
    body += _stamp_and_describe(
        timestamp, customer_name, customer_email, customer_avatar, now, created_at
    )
    if mode is not None:
        body += ',"mode":"deferred"'
    return Event(new_event_id(), "lead", customer, click_id, mode, None, body + "}", created_at)


def build_sale(
    event_name: Any,
    customer_external_id: Any,
    invoice_id: Any,
    amount: Any,
    currency: Any,
    click_id: Any = None,
    customer_name: Any = None,
    customer_email: Any = None,
    customer_avatar: Any = None,
    timestamp: Any = None,
    *,
    now: datetime,
) -> Event:
    """Validate a sale and build its camelCase payload (absent fields omitted)."""
    created_at = now.timestamp()
    body = "{"
    if click_id is not None:
        click_id = _identifier("click_id", click_id)
        body = '{"clickId":' + _quote(click_id) + ","
    name = _text("event_name", event_name, MAX_EVENT_NAME, required=True)
    customer = _identifier("customer_external_id", customer_external_id)
    invoice = _identifier("invoice_id", invoice_id)
    cents = _amount(amount)
    body += '"eventName":' + _quote(name) + ',"customerExternalId":' + _quote(customer)
    body += ',"invoiceId":' + _quote(invoice) + ',"amount":' + str(cents)
    body += ',"currency":' + _quote(_currency(currency))
    body += _stamp_and_describe(
        timestamp, customer_name, customer_email, customer_avatar, now, created_at
    )
    return Event(new_event_id(), "sale", customer, click_id, None, invoice, body + "}", created_at)


# What makes two sales with one invoice id different sales rather than a retry of one.
SALE_IDENTITY = (
    ("customer_external_id", "customerExternalId"),
    ("amount", "amount"),
    ("currency", "currency"),
)


def sale_differences(event: Event, stored_payload: str) -> str | None:
    """How ``event`` differs from the stored sale of its invoice id, or None for a retry."""
    given, stored = json.loads(event.payload), json.loads(stored_payload)
    differences = [
        f"{field} {stored.get(key)!r} stored, {given.get(key)!r} given"
        for field, key in SALE_IDENTITY
        if stored.get(key) != given.get(key)
    ]
    return "; ".join(differences) or None


def seconds(field: str, value: Any) -> float:
    """A ``wait=`` or ``timeout=``: a finite number of seconds >= 0, checked before anything
    is written (a string or ``inf`` failed only after the event was stored)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(field, f"must be a number of seconds, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValidationError(field, f"must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


def format_timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with millisecond precision and a ``Z``; naive datetimes are UTC."""
    if moment.tzinfo is timezone.utc and moment.microsecond:  # the clock's now(), at half cost
        return moment.isoformat()[:23] + "Z"  # "YYYY-MM-DDTHH:MM:SS.mmm" of ".mmmuuu+00:00"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    utc = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return utc.isoformat(timespec="milliseconds") + "Z"


_VARIANT = "89ab89ab89ab89ab"  # the RFC 4122 variant digit for each random hex digit


def new_event_id() -> str:
    """A random (version 4) UUID string, as ``str(uuid.uuid4())`` at a third of its cost."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[int(h[16], 16)]}{h[17:20]}-{h[20:]}"


def _stamp_and_describe(
    timestamp: Any,
    customer_name: Any,
    customer_email: Any,
    customer_avatar: Any,
    now: datetime,
    epoch: float,
) -> str:
    """The payload's text from ``"timestamp"`` on (``now``, at ``epoch``, when absent)."""
    if timestamp is None:
        text = ',"timestamp":"' + _now_text(now, epoch) + '"'
    else:
        text = ',"timestamp":"' + format_timestamp(_timestamp(timestamp)) + '"'
    if customer_name is not None:
        text += ',"customerName":' + _quote(_text("customer_name", customer_name, MAX_TEXT))
    if customer_email is not None:
        text += ',"customerEmail":' + _quote(_email(customer_email))
    if customer_avatar is not None:
        text += ',"customerAvatar":' + _quote(_url("customer_avatar", customer_avatar))
    return text


# The clock's last second as "YYYY-MM-DDTHH:MM:SS.", and the milliseconds' endings: events
# enqueued together share their second's text (one tuple, replaced whole: thread-safe).
_second: tuple[int, str] = (-1, "")
_MILLISECONDS = tuple(f"{n:03d}Z" for n in range(1000))


def _now_text(now: datetime, epoch: float) -> str:
    """``format_timestamp(now)``, ``epoch`` being ``now.timestamp()``: the clock's now()
    (aware, UTC) at a fifth of the cost."""
    global _second
    # Below 2**32 a float's rounding (under a microsecond) never crosses a second.
    if now.tzinfo is not timezone.utc or not 0 <= epoch < 2**32:
        return format_timestamp(now)
    whole = int(epoch)
    second, text = _second
    if second != whole:
        text = now.isoformat()[:19] + "."
        _second = (whole, text)
    return text + _MILLISECONDS[now.microsecond // 1000]


def _text(field: str, value: Any, limit: int, *, required: bool = False) -> str:
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise ValidationError(field, "must not be empty")
    if len(value) > limit:
        raise ValidationError(field, f"is {len(value)} characters long; the limit is {limit}")
    if value.isascii() and value.isprintable():  # the common case, without the regexes
        return value
    if _CONTROL.search(value):
        raise ValidationError(field, "must not contain control characters")
    if _SURROGATE.search(value):
        raise ValidationError(field, "must be valid Unicode text (no lone surrogates)")
    return value


def _identifier(field: str, value: Any) -> str:
    return _text(field, value, MAX_ID, required=True)


def _email(value: Any) -> str:
    email = _text("customer_email", value, MAX_TEXT, required=True)
    local, at, domain = email.rpartition("@")
    if not at or not local or not domain or _WHITESPACE.search(email):
        raise ValidationError("customer_email", "must look like name@domain")
    return email


def _url(field: str, value: Any) -> str:
    url = _text(field, value, MAX_URL, required=True)
    if _WHITESPACE.search(url):
        raise ValidationError(field, "must be a URL without whitespace")
    return url


def _amount(value: Any) -> int:
    # bool is an int subclass and a float like 49.99 could pass for cents: accept int only.
    if type(value) is not int:
        raise ValidationError(
            "amount", f"must be an integer number of cents, got {type(value).__name__}"
        )
    if not 0 <= value <= MAX_AMOUNT:
        raise ValidationError("amount", f"must be between 0 and {MAX_AMOUNT} cents, got {value}")
    return value


def _currency(value: Any) -> str:
    # The wire takes exactly 3 upper-case letters; payment providers (Stripe) hand out
    # "usd", which is no ambiguity to refuse (README: "Coming from the official SDK").
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
        raise ValidationError("currency", f"must be a 3-letter code like USD, got {value!r}")
    return value.upper()


def _timestamp(value: Any) -> datetime:
    if isinstance(value, datetime):
        return _in_range(value, value)
    if not isinstance(value, str):
        raise ValidationError(
            "timestamp", f"must be a datetime or an ISO 8601 string, got {type(value).__name__}"
        )
    text = value.strip()
    if text.endswith(("Z", "z")):  # fromisoformat() accepts "Z" only from Python 3.11
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError("timestamp", f"is not ISO 8601: {value!r}") from None
    return _in_range(moment, value)


def _in_range(moment: datetime, original: Any) -> datetime:
    if not 1970 <= moment.year <= 9998:
        raise ValidationError("timestamp", f"is out of range (1970-9998): {original!r}")
    return moment
