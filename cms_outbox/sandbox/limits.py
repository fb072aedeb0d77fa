"""The sandbox's own rate limit, spoken the way real services speak it.

Independent of any client's setting: a quota of ``requests`` per ``window`` seconds,
counted in fixed windows (aligned to the epoch, as GitHub's are) or a sliding window,
and advertised in the IETF draft's ``RateLimit-Policy``/``RateLimit`` fields, the de
facto ``X-RateLimit-Limit/-Remaining/-Reset`` (epoch seconds), or not at all. Every
429 carries ``Retry-After``. A refused request does not count.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

__all__ = ["ACCOUNTING", "HEADERS", "Limiter", "Limits", "limits_from_json"]

ACCOUNTING = ("fixed", "sliding")
HEADERS = ("ietf", "x", "none")
Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Limits:
    """The sandbox's rate limit; ``requests=0`` switches it off.

    :param requests: requests allowed per window (0: unlimited, no headers).
    :param window: seconds (a short one, such as 6, keeps tests quick).
    :param accounting: ``"fixed"`` windows or a ``"sliding"`` one.
    :param headers: ``"ietf"``, ``"x"`` or ``"none"``.
    """

    requests: int = 0
    window: float = 60.0
    accounting: str = "sliding"
    headers: str = "ietf"

    def __post_init__(self) -> None:
        if type(self.requests) is not int or self.requests < 0:
            raise ValueError(f"requests must be an int >= 0, got {self.requests!r}")
        if (
            isinstance(self.window, bool)
            or not isinstance(self.window, (int, float))
            or not math.isfinite(self.window)
            or self.window <= 0
        ):
            raise ValueError(f"window must be a number of seconds > 0, got {self.window!r}")
        if self.accounting not in ACCOUNTING:
            raise ValueError(f"accounting must be one of {', '.join(ACCOUNTING)}")
        if self.headers not in HEADERS:
            raise ValueError(f"headers must be one of {', '.join(HEADERS)}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = frozenset(field.name for field in dataclasses.fields(Limits))


def limits_from_json(current: Limits, changes: object) -> Limits:
    """Apply a JSON object of limit fields to ``current``.

    :raises ValueError: not an object, an unknown field or an invalid value.
    """
    if not isinstance(changes, dict):
        raise ValueError("limits must be a JSON object")
    unknown = sorted(set(changes) - FIELDS)
    if unknown:
        raise ValueError(f"unknown limit field(s): {', '.join(unknown)}")
    return dataclasses.replace(current, **changes)


class Limiter:
    """Counts requests against ``Limits``; not thread-safe (the ledger's lock guards it)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._counted: deque[float] = deque()  # times of the requests that counted

    def reset(self) -> None:
        self._counted.clear()

    def admit(self, now: float) -> tuple[bool, Headers]:
        """Count a request at ``now`` (epoch seconds) if the quota allows it.

        :returns: whether it may proceed, and the headers to answer with (with a
            ``Retry-After`` when it may not).
        """
        limits = self.limits
        if not limits.requests:
            return True, ()
        used, reset_in = self._window(now)
        allowed = used < limits.requests
        if allowed:
            self._counted.append(now)
            used, reset_in = self._window(now)
        headers = self._advertise(limits.requests - used, reset_in, now)
        if not allowed:
            headers += (("Retry-After", str(self._retry_after(now))),)
        return allowed, headers

    def _window(self, now: float) -> tuple[int, float]:
        """Requests counted in the window in force and the seconds until it resets."""
        limits, counted = self.limits, self._counted
        while counted and counted[0] <= now - limits.window:
            counted.popleft()
        if limits.accounting == "fixed":
            start = math.floor(now / limits.window) * limits.window
            used = sum(1 for moment in counted if moment >= start)
            return used, start + limits.window - now
        # Sliding: the whole quota is back once the newest request leaves the window.
        return len(counted), (counted[-1] + limits.window - now) if counted else limits.window

    def _retry_after(self, now: float) -> int:
        limits = self.limits
        if limits.accounting == "fixed":
            wait = math.floor(now / limits.window) * limits.window + limits.window - now
        else:
            wait = self._counted[0] + limits.window - now  # when the oldest leaves
        return max(1, math.ceil(wait))

    def _advertise(self, remaining: int, reset_in: float, now: float) -> Headers:
        limits = self.limits
        window = f"{limits.window:g}"
        if limits.headers == "ietf":
            return (
                ("RateLimit-Policy", f'"default";q={limits.requests};w={window}'),
                ("RateLimit", f'"default";r={remaining};t={math.ceil(reset_in)}'),
            )
        if limits.headers == "x":
            return (
                ("X-RateLimit-Limit", str(limits.requests)),
                ("X-RateLimit-Remaining", str(remaining)),
                ("X-RateLimit-Reset", str(math.ceil(now + reset_in))),
            )
        return ()
