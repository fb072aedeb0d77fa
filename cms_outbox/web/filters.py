"""The events page's filter: parsed from a query string, validated, and turned back into one.

The query string *is* the filter, so every filtered view has a URL to share. Bad
input raises ``ValidationError`` naming the field; the page shows it and lists nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from urllib.parse import urlencode

from ..errors import ValidationError
from ..queries import STATES
from ..queries.selection import Selection

__all__ = ["EventFilter", "parse_time"]

# The fields a filter takes, in the order of the form and of the URLs built from it.
FIELDS = tuple(field.name for field in fields(Selection))
_TIME_FORMATS = ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d")


@dataclass(frozen=True)
class EventFilter(Selection):
    """A ``Selection`` as the events page's form and URLs carry it."""

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> EventFilter:
        """The filter in ``params`` (a query string's values); blank fields are unset.

        :raises ValidationError: a value that is not a state, a number or a UTC time.
        """
        raw = {name: (params.get(name) or "").strip() or None for name in FIELDS}
        state = raw["state"]
        if state is not None and state not in STATES:
            raise ValidationError("state", f"state must be one of {', '.join(STATES)}")
        since = parse_time("since", raw["since"])
        until = parse_time("until", raw["until"])
        if since is not None and until is not None and until <= since:
            raise ValidationError("until", "until must be later than since")
        return cls(
            state=state,
            customer=raw["customer"],
            event_name=raw["event_name"],
            invoice=raw["invoice"],
            status_code=_integer("status_code", raw["status_code"], 100, 599),
            min_attempts=_integer("min_attempts", raw["min_attempts"], 0, 1_000_000),
            since=since,
            until=until,
        )

    def values(self) -> dict[str, str]:
        """The filter as form values (times as ``YYYY-MM-DDTHH:MM`` UTC), unset ones left out."""
        values: dict[str, str] = {}
        for name in FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            values[name] = format_time(value) if name in ("since", "until") else str(value)
        return values

    def query_string(self, **extra: object) -> str:
        """This filter's URL query, plus ``extra`` parameters (None ones left out)."""
        params = {**self.values(), **{k: str(v) for k, v in extra.items() if v is not None}}
        return urlencode(params)


def parse_time(name: str, text: str | None) -> float | None:
    """A UTC time from a form (``2026-12-01T21:30``, seconds optional, or a date)."""
    if text is None:
        return None
    value = text.removesuffix("Z")
    for pattern in _TIME_FORMATS:
        try:
            moment = datetime.strptime(value, pattern)
        except ValueError:
            continue
        return moment.replace(tzinfo=timezone.utc).timestamp()
    raise ValidationError(name, f"{name} must be a UTC time like 2026-12-01T21:30")


def format_time(moment: float) -> str:
    text = datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return text.removesuffix(":00")


def _integer(name: str, text: str | None, low: int, high: int) -> int | None:
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ValidationError(name, f"{name} must be a whole number from {low} to {high}")
    return value
