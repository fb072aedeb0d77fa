"""Fault injection settings for the sandbox: a frozen value, validated on construction."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Faults", "faults_from_json"]


def _is_number(value: object) -> bool:
    # bool is an int subclass; True must not pass for a one-second latency.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Faults:
    """What the sandbox does wrong on purpose, applied to every ``/track/*`` request.

    :param latency: seconds added before answering each request.
    :param error_rate: probability (0..1) of answering ``error_status`` instead of
        processing the request; drawn from the sandbox's seeded RNG.
    :param error_status: status used by ``error_rate`` (400..599).
    :param force_status: answer this status (400..599) without processing.
    :param force_count: ``None``: every request; ``N``: only the next N requests,
        after which ``force_status`` clears itself.
    :param retry_after: ``Retry-After`` value (seconds or an HTTP date) added to any
        429/503 produced by ``force_status`` or ``error_rate``.
    :param stall: read the request, then wait this many seconds before handling it
        (to trigger client read timeouts); cut short when the sandbox stops or goes down.
    :param reset: read the request, then drop the connection without answering.
    :param redirect: answer ``307 Temporary Redirect`` to this ``Location`` (a URL or a
        path) without processing, as a misconfigured proxy might; a client that carries a
        token must not follow it.
    """

    latency: float = 0.0
    error_rate: float = 0.0
    error_status: int = 500
    force_status: int | None = None
    force_count: int | None = None
    retry_after: str | None = None
    stall: float | None = None
    reset: bool = False
    redirect: str | None = None

    def __post_init__(self) -> None:
        if not _is_number(self.latency) or not math.isfinite(self.latency) or self.latency < 0:
            raise ValueError(f"latency must be a number >= 0, got {self.latency!r}")
        if not _is_number(self.error_rate) or not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"error_rate must be a number in [0, 1], got {self.error_rate!r}")
        _check_status("error_status", self.error_status)
        if self.force_status is not None:
            _check_status("force_status", self.force_status)
        if self.force_count is not None and (
            not isinstance(self.force_count, int)
            or isinstance(self.force_count, bool)
            or self.force_count < 1
        ):
            raise ValueError(f"force_count must be None or an int >= 1, got {self.force_count!r}")
        if self.retry_after is not None:
            if _is_number(self.retry_after):
                # Convenience for Python callers and JSON: 2 means "2".
                object.__setattr__(self, "retry_after", str(self.retry_after))
            elif not isinstance(self.retry_after, str) or not self.retry_after.strip():
                raise ValueError(f"retry_after must be None or a string, got {self.retry_after!r}")
        if self.stall is not None and (
            not _is_number(self.stall) or not math.isfinite(self.stall) or self.stall <= 0
        ):
            raise ValueError(f"stall must be None or a number > 0, got {self.stall!r}")
        if not isinstance(self.reset, bool):
            raise ValueError(f"reset must be a bool, got {self.reset!r}")
        if self.redirect is not None and (
            not isinstance(self.redirect, str) or not self.redirect.strip()
        ):
            raise ValueError(f"redirect must be None or a URL, got {self.redirect!r}")

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (what ``GET /_admin/faults`` shows)."""
        return dataclasses.asdict(self)


def _check_status(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 400 <= value <= 599:
        raise ValueError(f"{name} must be an HTTP error status (400..599), got {value!r}")


FIELDS = frozenset(field.name for field in dataclasses.fields(Faults))


def faults_from_json(current: Faults, changes: object) -> Faults:
    """Apply a JSON object of fault fields to ``current``.

    :raises ValueError: ``changes`` is not an object, names an unknown field or holds
        an invalid value.
    """
    if not isinstance(changes, dict):
        raise ValueError("faults must be a JSON object")
    unknown = sorted(set(changes) - FIELDS)
    if unknown:
        raise ValueError(f"unknown fault field(s): {', '.join(unknown)}")
    return dataclasses.replace(current, **changes)
