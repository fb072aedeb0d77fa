"""What a service's answer says about its rate limit: the headers, read leniently.

Pure and forgiving: a header that is missing, malformed or partial is ignored, never an
error, because a misbehaving proxy must not stop delivery.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Advert", "Quota", "parse_advert"]

# X-RateLimit-Reset above this is an epoch time, below it a number of seconds.
EPOCH_THRESHOLD = 1e9


@dataclass(frozen=True)
class Quota:
    """``requests`` per ``window`` seconds."""

    requests: float
    window: float

    @property
    def per_second(self) -> float:
        return self.requests / self.window

    @property
    def per_minute(self) -> float:
        return self.per_second * 60.0


@dataclass(frozen=True)
class Advert:
    """What one answer's rate-limit headers said; each part None when absent or malformed."""

    quota: Quota | None = None
    limit: int | None = None  # X-RateLimit-Limit without a window
    remaining: int | None = None
    reset_at: float | None = None  # epoch seconds when ``remaining`` is renewed

    @property
    def empty(self) -> bool:
        return self.quota is None and self.limit is None and self.remaining is None


def parse_advert(headers: Mapping[str, str], now: float) -> Advert:
    """Read the rate-limit headers of one answer (names lower-case); ignore what is malformed.

    IETF draft: ``RateLimit-Policy: "default";q=60;w=60`` and ``RateLimit: "default";r=12;t=17``
    (several policies: the slowest governs). De facto: ``X-RateLimit-Limit``,
    ``-Remaining`` and ``-Reset`` (epoch seconds, or seconds when small).
    """
    policies = _items(headers.get("ratelimit-policy", ""))
    quotas = {
        name: Quota(float(params["q"]), float(params["w"]))
        for name, params in policies.items()
        if _positive(params.get("q")) and _positive(params.get("w"))
    }
    quota = min(quotas.values(), key=lambda q: q.per_second) if quotas else None
    governing = next((name for name, q in quotas.items() if q == quota), None)
    remaining: int | None = None
    reset_at: float | None = None
    states = _items(headers.get("ratelimit", ""))
    state = states.get(governing or "") or next(iter(states.values()), None)
    if state is not None and _count(state.get("r")) is not None and _seconds(state.get("t")):
        remaining = _count(state.get("r"))
        reset_at = now + float(state["t"])
    limit = _count(headers.get("x-ratelimit-limit"))
    if remaining is None:
        remaining = _count(headers.get("x-ratelimit-remaining"))
        reset = _seconds(headers.get("x-ratelimit-reset"))
        if remaining is not None and reset is not None:
            reset_at = reset if reset > EPOCH_THRESHOLD else now + reset
        else:
            remaining = None
    return Advert(quota, limit if limit else None, remaining, reset_at)


def _items(field: str) -> dict[str, dict[str, str]]:
    """A structured-field list ``name;k=v;k=v, name;...`` as {name: {k: v}}; junk skipped."""
    items: dict[str, dict[str, str]] = {}
    for member in field.split(","):
        name, *params = (part.strip() for part in member.split(";"))
        name = name.strip('"')
        if not name:
            continue
        values = {}
        for param in params:
            key, sep, value = param.partition("=")
            if sep:
                values[key.strip().lower()] = value.strip().strip('"')
        items.setdefault(name, values)
    return items


def _count(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


def _seconds(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _positive(value: str | None) -> bool:
    seconds = _seconds(value)
    return seconds is not None and seconds > 0
