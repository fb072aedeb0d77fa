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

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Table,
    Update,
    bindparam,
    delete,
    select,
    text,
)
from sqlalchemy.exc import SQLAlchemyError

from .errors import StorageError
from .fork_gate import guarding

__all__ = [
    "LOCK_TIMEOUT",
    "delete_by_key",
    "migration_lock",
    "update_by_key",
    "update_unlocked",
    "write_transaction",
]

# Seconds a process waits for another's migration before giving up.
LOCK_TIMEOUT = 300
_PG_LOCK_KEY = 7305117250


@contextmanager
def write_transaction(engine: Engine, *, lock_wait: int | None = None) -> Iterator[Connection]:
    """``engine.begin()``, at READ COMMITTED on MySQL (the pool resets it on return).

    :param lock_wait: seconds each statement waits for a row lock before the server
        cancels it (MySQL's error 1205, PostgreSQL's lock_not_available), for this
        transaction alone: the connection may be an application's, from its own pool.
    """
    with guarding(engine), engine.connect() as conn:
        mysql = conn.dialect.name == "mysql"
        if mysql:
            conn.execution_options(isolation_level="READ COMMITTED")
        try:
            with conn.begin():
                if lock_wait is not None:
                    _limit_lock_wait(conn, lock_wait)
                yield conn
        finally:
            if mysql and lock_wait is not None:
                _restore_lock_wait(conn)


def _limit_lock_wait(conn: Connection, seconds: int) -> None:
    if conn.dialect.name == "postgresql":  # LOCAL: undone when the transaction ends
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{seconds}s'")
    elif conn.dialect.name == "mysql":  # a session setting: put back afterwards
        conn.exec_driver_sql(
            "SET @cms_outbox_lock_wait = @@SESSION.innodb_lock_wait_timeout, "
            f"SESSION innodb_lock_wait_timeout = {seconds}"
        )


def _restore_lock_wait(conn: Connection) -> None:
    """Put the session's own lock wait back; a connection where that fails (it broke) is
    discarded, never returned to the pool with the outbox's setting."""
    if conn.invalidated:
        return
    try:
        conn.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = @cms_outbox_lock_wait")
    except SQLAlchemyError:
        conn.invalidate()


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


def delete_by_key(
    conn: Connection,
    table: Table,
    column: ColumnElement[Any],
    values: Sequence[Any],
    condition: ColumnElement[bool] | None = None,
) -> None:
    """Delete the rows of ``table`` whose ``column`` is in ``values`` (and that match
    ``condition``).

    On MySQL by primary key, one statement per key, the keys found first by a plain read
    (unless ``column`` is the key): for ``IN (...)`` InnoDB may scan the whole table
    instead (a small table, or a list past ``in_predicate_conversion_threshold``), and
    the scan waits for the lock on every row it meets, an application's new row included.
    """
    if not values:
        return
    extra = () if condition is None else (condition,)
    matching = (column.in_(list(values)), *extra)
    if conn.dialect.name != "mysql":
        conn.execute(delete(table).where(*matching))
        return
    key = table.c.id
    ids = values if column is key else conn.execute(select(key).where(*matching)).scalars().all()
    if ids:
        one = delete(table).where(key == bindparam("key"), *extra)
        conn.execute(one, [{"key": id_} for id_ in ids])


def update_unlocked(
    conn: Connection,
    table: Table,
    statement: Update,
    condition: ColumnElement[bool],
    params: dict[str, Any],
) -> int:
    """Run ``statement`` on the rows matching ``condition`` that no other transaction holds
    a lock on; returns how many changed.

    The rows are locked first with ``FOR UPDATE SKIP LOCKED`` (SQLite has one writer and
    no row locks), then updated by primary key: a row an application's open transaction
    locked is left as it is, for a later statement, instead of waited for.
    """
    if conn.dialect.name == "sqlite":
        return int(conn.execute(statement.where(condition), params).rowcount)
    key = table.c.id
    found = select(key).where(condition).order_by(key).with_for_update(skip_locked=True)
    ids = list(conn.execute(found, params).scalars())
    if not ids:
        return 0
    return int(conn.execute(statement.where(key.in_(ids)), params).rowcount)


@contextmanager
def migration_lock(conn: Connection) -> Iterator[None]:
    """Hold the database's migration lock (taken outside any transaction).

    Several processes may start migrating one database at once (a first deploy with
    many workers): one migrates, the others wait, then find the work done. The lock
    belongs to the connection and outlives the migration's commit: on MySQL each DDL
    statement commits as it goes, and the version stamp must be committed before the
    next process reads it. SQLite's ``BEGIN IMMEDIATE`` already serialises migrations.
    """
    dialect = conn.dialect.name
    if dialect == "postgresql":
        take, give = "SELECT pg_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)"
    elif dialect == "mysql":  # one name per database: others on the server are independent
        take = "SELECT GET_LOCK(CONCAT('cms_outbox_migrate:', DATABASE()), :timeout)"
        give = "SELECT RELEASE_LOCK(CONCAT('cms_outbox_migrate:', DATABASE()))"
    else:
        yield
        return
    params = {"key": _PG_LOCK_KEY, "timeout": LOCK_TIMEOUT}
    got = conn.execute(text(take), params).scalar()
    conn.commit()
    if dialect == "mysql" and got != 1:
        raise StorageError(f"another process held the migration lock for {LOCK_TIMEOUT} s")
    try:
        yield
    finally:
        if not conn.invalidated:  # a lost connection took its lock with it
            if conn.in_transaction():
                conn.rollback()
            conn.execute(text(give), params)
            conn.commit()
