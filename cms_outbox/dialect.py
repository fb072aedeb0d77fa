"""Backend quirks the store works around, kept in one place.

MySQL/MariaDB (InnoDB) runs transactions at REPEATABLE READ by default. There an UPDATE
locks every index record it scans, matching or not, together with the gaps between
them, so two flushers reclaiming or releasing through the state index lock each
other's leased rows and deadlock (error 1213). At READ COMMITTED an UPDATE keeps locks
only on the rows it changes, skips rows another transaction holds when their latest
committed version does not match, and every statement reads the latest committed rows.
The store's write transactions run there; PostgreSQL's default already behaves so, and
SQLite has one writer at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Connection, Engine, Select, Table, Update, select

__all__ = ["write_transaction", "latest_committed", "update_by_key"]

S = TypeVar("S", bound=Select)  # type: ignore[type-arg]


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """``engine.begin()``, at READ COMMITTED on MySQL (the pool resets it on return)."""
    with engine.connect() as conn:
        if conn.dialect.name == "mysql":
            conn.execution_options(isolation_level="READ COMMITTED")
        with conn.begin():
            yield conn


def latest_committed(statement: S, conn: Connection) -> S:
    """``statement`` reading the latest committed rows, not the transaction's snapshot.

    On MySQL at REPEATABLE READ a plain SELECT sees the snapshot taken at the
    transaction's first read, so a row another transaction committed since (the sale
    whose invoice id just made our INSERT a duplicate) is invisible; a locking read is not.
    """
    if conn.dialect.name == "mysql":
        return statement.with_for_update(read=True)
    return statement


def update_by_key(
    conn: Connection,
    table: Table,
    statement: Update,
    condition: ColumnElement[bool],
    params: dict[str, Any],
) -> int:
    """Run ``statement`` on the rows matching ``condition``; returns how many changed.

    On MySQL the rows are first found by a plain read, then updated by primary key in
    ascending order with ``condition`` checked again: the UPDATE locks exactly the rows
    it changes, never a range another flusher's leased rows sit in.
    """
    if conn.dialect.name != "mysql":
        return int(conn.execute(statement.where(condition), params).rowcount)
    key = table.c.id
    ids = sorted(conn.execute(select(key).where(condition), params).scalars())
    if not ids:
        return 0
    return int(conn.execute(statement.where(condition, key.in_(ids)), params).rowcount)
