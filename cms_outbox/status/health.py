"""Is the outbox healthy: the verdict of ``cms-outbox health``, from an ``OutboxStatus``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..queries import BLOCKED, DEAD
from .counts import OutboxStatus
from .formatting import format_age, isoformat

__all__ = ["Health", "check_health"]


@dataclass(frozen=True)
class Health:
    """The verdict of ``cms-outbox health``: ``reasons`` is empty when healthy."""

    healthy: bool
    reasons: tuple[str, ...]
    status: OutboxStatus

    @property
    def summary(self) -> str:
        """One line for a probe's log."""
        if not self.healthy:
            return "unhealthy: " + "; ".join(self.reasons)
        status = self.status
        age = status.oldest_pending_age
        oldest = "" if age is None else f", oldest {format_age(age)}"
        return (
            f"ok: {status.to_send} to send{oldest}, {status.counts[BLOCKED]} blocked, "
            f"{status.counts[DEAD]} dead"
        )

    def to_json(self) -> dict[str, Any]:
        return {"healthy": self.healthy, "reasons": list(self.reasons), "summary": self.summary}


def check_health(
    status: OutboxStatus, *, max_pending_age: float | None, max_dead: int | None
) -> Health:
    """Unhealthy when the oldest pending event is older than ``max_pending_age``, when
    there are more than ``max_dead`` dead events, or while an auth pause is in effect."""
    reasons = []
    age = status.oldest_pending_age
    if max_pending_age is not None and age is not None and age > max_pending_age:
        reasons.append(
            f"the oldest pending event is {format_age(age)} old "
            f"(limit {format_age(max_pending_age)})"
        )
    dead = status.counts[DEAD]
    if max_dead is not None and dead > max_dead:
        reasons.append(f"{dead} dead events (limit {max_dead})")
    if status.pause is not None and status.pause.reason == "auth":
        reasons.append(
            f"delivery paused since {isoformat(status.pause.since)}: the service rejected "
            f"the token ({status.pause.error})"
        )
    return Health(healthy=not reasons, reasons=tuple(reasons), status=status)
