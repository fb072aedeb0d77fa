"""How fast the flushers may send: the answer behind ``status``'s pacing line and metrics."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..formatting import json_fields
from ..pacing import in_force
from ..queries import budget_of

__all__ = ["Pacing", "pacing_of"]


@dataclass(frozen=True)
class Pacing:
    """The pacing in force for every flusher of the outbox, from the shared budget.

    :param source: ``"assumed"`` (the documented 60/min), ``"configured"`` (an explicit
        ``rate_limit``), ``"advertised"`` (the service's headers) or ``"learned"``
        (from 429s).
    :param remaining: requests the service said it still allows before
        ``window_resets_at`` (None when it did not say, or that window is over).
    :param paused_until: every flusher waits until then after a 429 (None: no pause).
    :param pause_seconds: what is left of that pause at the reading (0: none).
    """

    requests: float
    window: float
    per_minute: float
    source: str
    remaining: int | None
    window_resets_at: float | None
    paused_until: float | None
    pause_seconds: float

    def to_json(self) -> dict[str, Any]:
        value = json_fields(self, times=("window_resets_at", "paused_until"))
        value["window_seconds"] = value.pop("window")
        value["per_minute"] = round(self.per_minute, 3)
        value["pause_seconds"] = round(self.pause_seconds, 3)
        return value


def pacing_of(row: Mapping[str, Any] | None, now: float) -> Pacing | None:
    """The pacing a control row records, as of ``now``; None before a paced flusher ran."""
    if row is None or not row["tokens_at"]:
        return None
    budget = budget_of(row)
    quota, source = in_force(budget, budget.limit)
    current = budget.remaining is not None and now < budget.reset_at
    return Pacing(
        requests=quota.requests,
        window=quota.window,
        per_minute=quota.per_minute,
        source=source.value,
        remaining=budget.remaining if current else None,
        window_resets_at=budget.reset_at if current else None,
        paused_until=budget.paused_until if budget.paused_until > now else None,
        pause_seconds=max(0.0, budget.paused_until - now),
    )
