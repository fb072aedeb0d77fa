"""The flusher's own writes beside the events: the shared pacing budget, the published
pause, and heartbeats.

Statements only, each inside the write transaction the ``Store`` opens for it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from . import queries
from .pacing import Budget
from .queries import CONTROL_ROW
from .schema import control, flushers

__all__ = ["beat", "forget_flusher", "locked_budget", "set_pause", "store_budget"]


def locked_budget(conn: Connection) -> Budget:
    """The shared budget, locked until the transaction ends."""
    # Write first: on an application's SQLite engine in the driver's legacy transaction
    # mode a leading SELECT would run outside the transaction and the update could race.
    conn.execute(update(control).where(control.c.name == CONTROL_ROW).values(name=control.c.name))
    row = conn.execute(
        select(*queries.BUDGET_COLUMNS).where(control.c.name == CONTROL_ROW).with_for_update()
    ).one()
    return queries.budget_of(row._mapping)


def store_budget(conn: Connection, budget: Budget) -> None:
    values = {
        "tokens": budget.tokens, "tokens_at": budget.tokens_at,
        "quota_requests": budget.quota.requests, "quota_window": budget.quota.window,
        "limit_source": budget.source.value, "remaining": budget.remaining,
        "reset_at": budget.reset_at, "paused_until": budget.paused_until,
        "counted_since": budget.counted_since, "counted": budget.counted,
        "changed_at": budget.changed_at, "probed_from": budget.probed_from,
        "ceiling": budget.ceiling,
    }  # fmt: skip
    conn.execute(update(control).where(control.c.name == CONTROL_ROW).values(**values))


def beat(conn: Connection, row: dict[str, Any]) -> None:
    # Only the beat changes for an owner: setting the key too rewrites its index page,
    # a second WAL page per beat on an idle outbox.
    changed = conn.execute(
        update(flushers).where(flushers.c.owner == row["owner"]).values(beat_at=row["beat_at"])
    ).rowcount
    if not changed:
        conn.execute(insert(flushers).values(**row))


def forget_flusher(conn: Connection, owner: str) -> None:
    conn.execute(delete(flushers).where(flushers.c.owner == owner))


def set_pause(
    conn: Connection, outage_since: float | None, auth_paused_since: float | None,
    error: str | None,
) -> None:  # fmt: skip
    conn.execute(
        update(control)
        .where(control.c.name == CONTROL_ROW)
        .values(outage_since=outage_since, auth_paused_since=auth_paused_since,
                pause_error=error)
    )  # fmt: skip
