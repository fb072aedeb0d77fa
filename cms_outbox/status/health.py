"""Is the outbox healthy: the verdict of ``cms-outbox health``, from an ``OutboxStatus``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from ..formatting import format_age, isoformat
from ..heartbeat import STALE_AFTER
from ..queries import BLOCKED, DEAD
from .counts import OutboxStatus

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
    no_flusher: bool = False  # events wait and no flusher beats

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
        return {
            "healthy": self.healthy,
            "reasons": list(self.reasons),
            "summary": self.summary,
            "flusher_running": bool(self.status.live_flushers),
        }


def check_health(
    status: OutboxStatus,
    *,
    max_pending_age: float | None,
    max_dead: Limit = NEW,
    max_blocked: Limit = NEW,
) -> Health:
    """Unhealthy when the oldest pending event is older than ``max_pending_age``, when
    dead or blocked events exceed their limit, while an auth pause is in effect, or when
    events have waited longer than ``heartbeat.STALE_AFTER`` and no flusher is running
    (``no_flusher``; an outbox with nothing to send needs no flusher).

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
    # Events that waited longer than a flusher takes to show up, and none beats: nobody
    # delivers this outbox. (A freshly enqueued event before the daemon starts is not yet.)
    waited = age is not None and age > STALE_AFTER
    no_flusher = status.to_send > 0 and waited and not status.live_flushers
    if no_flusher:
        reasons.append(
            f"no flusher is running, with {_events(status.to_send)} to send (none beat "
            f"in the last {format_age(STALE_AFTER)}): start `cms-outbox run`"
        )
    return Health(healthy=not reasons, reasons=tuple(reasons), status=status, no_flusher=no_flusher)


def _over_limit(status: OutboxStatus, state: str, limit: Limit, new: int) -> str | None:
    total = status.counts[state]
    remedy = _REMEDIES[state]
    if limit == ANY:
        return None
    if limit == NEW:
        if not new:
            return None
        if status.acknowledged_at is None:
            return f"{_events(new, state)}, never retried or purged: {remedy}"
        since = isoformat(status.acknowledged_at)
        return f"{_events(new, f'new {state}')} since the last retry or purge ({since}): {remedy}"
    if isinstance(limit, int) and total > limit:
        return f"{_events(total, state)} (limit {limit}): {remedy}"
    return None


def _events(count: int, kind: str = "") -> str:
    """``1 dead event``, ``3 dead events``."""
    words = f"{count} {kind} event" if kind else f"{count} event"
    return words if count == 1 else words + "s"


_REMEDIES = {
    DEAD: "see `cms-outbox events --state dead`, then retry or purge them",
    BLOCKED: "they wait for a dead deferred setup: see `cms-outbox events --state blocked`, "
    "then retry the setup",
}


def _new(status: OutboxStatus) -> str:
    if status.acknowledged_at is None:
        return "never retried or purged"
    return f"none new since the last retry or purge, {isoformat(status.acknowledged_at)}"
