"""Is the outbox healthy: the verdict of ``cms-outbox health``, from an ``OutboxStatus``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from ..queries import BLOCKED, DEAD
from .counts import OutboxStatus
from .formatting import format_age, isoformat

__all__ = ["ANY", "NEW", "Health", "Limit", "check_health"]


# A limit on dead or blocked events: "new" (none since the last retry or purge), "any"
# (not checked) or a number allowed in all.
Limit = Union[int, str]
NEW = "new"
ANY = "any"


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
        line = (
            f"ok: {status.to_send} to send{oldest}, {status.counts[BLOCKED]} blocked, "
            f"{status.counts[DEAD]} dead"
        )
        if status.counts[BLOCKED] or status.counts[DEAD]:
            line += f" ({_new(status)})"
        return line

    def to_json(self) -> dict[str, Any]:
        return {"healthy": self.healthy, "reasons": list(self.reasons), "summary": self.summary}


def check_health(
    status: OutboxStatus,
    *,
    max_pending_age: float | None,
    max_dead: Limit = NEW,
    max_blocked: Limit = NEW,
) -> Health:
    """Unhealthy when the oldest pending event is older than ``max_pending_age``, when
    dead or blocked events exceed their limit, or while an auth pause is in effect.

    A dead or blocked event is conversion data lost until someone acts, so by default
    (``NEW``) one that went wrong since the last operator retry or purge is unhealthy; a
    number allows that many in all, ``ANY`` does not check.
    """
    reasons = []
    age = status.oldest_pending_age
    if max_pending_age is not None and age is not None and age > max_pending_age:
        reasons.append(
            f"the oldest pending event is {format_age(age)} old "
            f"(limit {format_age(max_pending_age)})"
        )
    for state, limit, new in (
        (DEAD, max_dead, status.new_dead),
        (BLOCKED, max_blocked, status.new_blocked),
    ):
        reason = _over_limit(status, state, limit, new)
        if reason:
            reasons.append(reason)
    if status.pause is not None and status.pause.reason == "auth":
        reasons.append(
            f"delivery paused since {isoformat(status.pause.since)}: the service rejected "
            f"the token ({status.pause.error})"
        )
    return Health(healthy=not reasons, reasons=tuple(reasons), status=status)


def _over_limit(status: OutboxStatus, state: str, limit: Limit, new: int) -> str | None:
    total = status.counts[state]
    remedy = _REMEDIES[state]
    if limit == ANY:
        return None
    if limit == NEW:
        if not new:
            return None
        if status.acknowledged_at is None:
            return f"{new} {state} events, never retried or purged: {remedy}"
        since = isoformat(status.acknowledged_at)
        return f"{new} new {state} events since the last retry or purge ({since}): {remedy}"
    if isinstance(limit, int) and total > limit:
        return f"{total} {state} events (limit {limit}): {remedy}"
    return None


_REMEDIES = {
    DEAD: "see `cms-outbox events --state dead`, then retry or purge them",
    BLOCKED: "they wait for a dead deferred setup: see `cms-outbox events --state blocked`, "
    "then retry the setup",
}


def _new(status: OutboxStatus) -> str:
    if status.acknowledged_at is None:
        return "never retried or purged"
    return f"none new since the last retry or purge, {isoformat(status.acknowledged_at)}"
