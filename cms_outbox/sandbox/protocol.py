"""The CMS wire protocol as the sandbox understands it (DESIGN.md section 1).

Deliberately independent of ``cms_outbox.events``: the sandbox re-implements the
rules so that a bug in the client's validation cannot hide in a shared helper.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from typing import Any

__all__ = [
    "ERROR_TYPES",
    "Problem",
    "error_body",
    "error_type_for",
    "success_body",
    "utc_now_iso",
    "validate",
]

# The type word the sandbox puts in an error body for each status it can answer.
ERROR_TYPES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    409: "duplicate",
    413: "payload_too_large",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    502: "bad_gateway",
    503: "unavailable",
    504: "gateway_timeout",
}

_STR_FIELDS = ("clickId", "customerName", "customerEmail", "customerAvatar")
_REQUIRED_STR = {
    "lead": ("eventName", "customerExternalId"),
    "sale": ("eventName", "customerExternalId", "invoiceId"),
}
_ALLOWED = {
    "lead": frozenset(
        (*_STR_FIELDS, "eventName", "customerExternalId", "timestamp", "mode"),
    ),
    "sale": frozenset(
        (*_STR_FIELDS, "eventName", "customerExternalId", "timestamp")
        + ("invoiceId", "amount", "currency")
    ),
}
# ISO 8601 date or date-time, optional fraction and zone; ranges are checked below.
# [0-9], not \d: \d also matches non-ASCII digits.
_ISO_8601 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:[.,]([0-9]+))?)?"
    r"(Z|z|[+-][0-9]{2}(?::?[0-9]{2})?)?)?"
)
_CURRENCY = re.compile(r"[A-Z]{3}")


class Problem(Exception):
    """A request the service rejects: HTTP status, type word, message, field."""

    def __init__(self, status: int, type_: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.field = field

    def details(self) -> dict[str, Any]:
        return {} if self.field is None else {"field": self.field}


def error_type_for(status: int) -> str:
    return ERROR_TYPES.get(status, "error")


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def success_body(kind: str, payload: dict[str, Any]) -> bytes:
    """The 200 body: a superset of the API reference's and the SDK's shapes.

    ``status`` is a bool and ``data`` a string because the official SDK parses the
    answer with ``TrackResponse(status: StrictBool, data: StrictStr)``.
    """
    body = {
        "success": True,
        "status": True,
        "message": "Event tracked successfully",
        "timestamp": utc_now_iso(),
        "data": f"{kind}:{payload['eventName']}:{payload['customerExternalId']}",
    }
    return json.dumps(body).encode()


def error_body(
    status: int, message: str, type_: str | None = None, details: dict[str, Any] | None = None
) -> bytes:
    body = {
        "success": False,
        "error": message,
        "type": type_ or error_type_for(status),
        "statusCode": status,
        "details": details or {},
    }
    return json.dumps(body).encode()


def parse_body(raw: bytes) -> dict[str, Any]:
    """Decode a JSON object.

    :raises Problem: 400 ``bad_request`` for invalid JSON or a non-object.
    """
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise Problem(400, "bad_request", "request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise Problem(400, "bad_request", "request body must be a JSON object")
    return value


def _is_iso_8601(value: str) -> bool:
    match = _ISO_8601.fullmatch(value)
    if match is None:
        return False
    year, month, day, hour, minute, second = (int(g) if g else 0 for g in match.groups()[:6])
    try:
        datetime(year, month, day, hour, minute, second)
    except ValueError:
        return False
    zone = match.group(8)
    if zone and zone not in ("Z", "z"):
        digits = zone[1:].replace(":", "")
        if int(digits[:2]) > 23 or (len(digits) > 2 and int(digits[2:]) > 59):
            return False
    return True


def _invalid(field: str, reason: str) -> Problem:
    return Problem(422, "validation_error", f"{field}: {reason}", field)


def validate(kind: str, body: dict[str, Any]) -> None:
    """Check a lead/sale body against the protocol.

    :raises Problem: 422 ``validation_error`` naming the first offending field.
    """
    allowed = _ALLOWED[kind]
    for field in sorted(body):
        if field not in allowed:
            raise _invalid(field, f"unknown field for a {kind}")
    for field in sorted(body):
        if body[field] is None:
            raise _invalid(field, "must not be null (omit absent fields)")
    for field in _REQUIRED_STR[kind]:
        if field not in body:
            raise _invalid(field, "is required")
        if not isinstance(body[field], str) or not body[field]:
            raise _invalid(field, "must be a non-empty string")
    for field in _STR_FIELDS:
        if field in body and not isinstance(body[field], str):
            raise _invalid(field, "must be a string")
    if "timestamp" in body:
        stamp = body["timestamp"]
        if not isinstance(stamp, str) or not _is_iso_8601(stamp):
            raise _invalid("timestamp", "must be an ISO 8601 date-time string")
    if kind == "lead" and "mode" in body:
        if body["mode"] != "deferred":
            raise _invalid("mode", 'the only accepted value is "deferred"')
        if "clickId" not in body:
            raise _invalid("clickId", "is required with mode=deferred")
    if kind == "sale":
        if "amount" not in body:
            raise _invalid("amount", "is required")
        amount = body["amount"]
        if (
            not isinstance(amount, (int, float))
            or isinstance(amount, bool)
            or (isinstance(amount, float) and not math.isfinite(amount))
            or amount < 0
        ):
            raise _invalid("amount", "must be a number >= 0")
        if "currency" not in body:
            raise _invalid("currency", "is required")
        currency = body["currency"]
        if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
            raise _invalid("currency", "must be exactly 3 upper-case letters (ISO 4217)")
