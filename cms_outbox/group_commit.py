"""Group commit for the SQLite enqueue: concurrent callers share one transaction and fsync.

With ``synchronous=FULL`` a commit waits for the disk about as long as everything
else an enqueue does. Threads that arrive while a commit is under way queue up, and
the next of them to lead writes the whole queue in one transaction, so threads that
enqueue together do not each wait for a disk flush. A lone caller pays one lock round trip.
Every caller still returns only once its own row is durable, with its own result.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from threading import get_ident
from typing import Any

__all__ = ["GroupCommit"]


class _Entry:
    """One caller's statement and row and, once written, its result."""

    __slots__ = ("done", "error", "params", "returned", "returning", "sql")

    def __init__(self, sql: str, params: Sequence[Any], returning: bool) -> None:
        self.sql = sql
        self.params = params
        self.returning = returning
        self.done = False
        self.returned: tuple[Any, ...] | None = None
        self.error: BaseException | None = None


class GroupCommit:
    """Runs one INSERT per caller on a single connection, batching concurrent callers."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        *,
        write_lock: AbstractContextManager[Any] | None = None,
    ) -> None:
        """:param connect: opens the connection (autocommit or the driver's legacy mode).
        :param write_lock: held around each write transaction (a ``WriteLock``).
        """
        self._connect = connect
        self._write_lock = write_lock or nullcontext()
        self._conn: sqlite3.Connection | None = None
        self._forget()

    def _forget(self) -> None:
        # Entered as the plain lock (C speed) on the lone caller's path; waited on as
        # the condition only when a write is under way. Reentrant: close() from a signal
        # handler may interrupt this thread while it holds the lock.
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._queue: list[_Entry] = []
        self._leading = False
        self._leader: int | None = None  # the thread writing the batch under way
        self._callers: set[int] = set()  # threads inside ``insert``
        self._waiting = 0

    def insert(
        self, sql: str, params: Sequence[Any], *, returning: bool = False
    ) -> tuple[Any, ...] | None:
        """Run ``sql``, an INSERT of one row whose conflict clause may skip it, committed on
        return: None when it was skipped, else the row its RETURNING clause gave (with
        ``returning``) or an empty tuple.

        :raises sqlite3.Error: (or whatever opening the connection raised) for this row.
        """
        entry = _Entry(sql, params, returning)
        me = get_ident()
        try:
            self._callers.add(me)  # first: from here on a signal handler sees busy_here
            with self._lock:
                self._queue.append(entry)
                if self._leading:
                    self._wait(lambda: entry.done or not self._leading)
                if not entry.done:
                    self._leader = me
                    self._leading = True
            if self._leader == me:
                self._lead()
        finally:
            self._callers.discard(me)
            if self._leader == me:  # interrupted (a signal) before ``_lead`` took over
                self._abandon(entry)
        if entry.error is not None:
            raise entry.error
        return entry.returned

    def before_fork(self, timeout: float) -> bool:
        """Wait for the write under way and keep new ones from starting (around ``fork()``)."""
        with self._lock:
            if not self._wait(lambda: not self._leading, timeout):
                return False
            self._leading = True
            return True

    def after_fork_in_parent(self) -> None:
        with self._lock:
            self._leading = False
            if self._waiting:
                self._cond.notify_all()

    @property
    def busy_here(self) -> bool:
        """This very thread is inside ``insert`` (seen from a signal handler): it may lead
        the write under way, or be about to."""
        return get_ident() in self._callers

    def close(self) -> None:
        """Close the connection once the write under way (if any) is done."""
        with self._lock:
            self._wait(lambda: not self._leading)
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _wait(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        """With the lock held: wait until ``predicate()``, counted so a leader notifies."""
        self._waiting += 1
        try:
            return self._cond.wait_for(predicate, timeout)
        finally:
            self._waiting -= 1

    def after_fork_in_child(self) -> None:
        """In a forked child: drop the parent's connection unclosed, and its queue."""
        self._conn = None
        self._forget()

    def _abandon(self, entry: _Entry) -> None:
        """Give up the lead before writing: the queue goes on without this caller's row."""
        with self._lock:
            if entry in self._queue:
                self._queue.remove(entry)
            self._leading = False
            self._leader = None
            if self._waiting:
                self._cond.notify_all()

    def _lead(self) -> None:
        batch: list[_Entry] = []
        try:
            with self._write_lock:
                # Taken only now: callers who arrived while the lock was waited for
                # (another process was writing) go into this transaction too.
                with self._lock:
                    batch, self._queue = self._queue, []
                self._write(batch)
        except BaseException:  # e.g. KeyboardInterrupt: no caller may wait forever
            with self._lock:
                if not batch:  # interrupted while waiting for the lock: fail the queue
                    batch, self._queue = self._queue, []
            for entry in batch:
                if not entry.done:  # rolled back or never tried
                    entry.error = sqlite3.OperationalError("interrupted before it was stored")
            raise
        finally:
            with self._lock:
                for entry in batch:
                    entry.done = True
                self._leading = False
                self._leader = None
                if self._waiting:
                    self._cond.notify_all()

    def _write(self, batch: list[_Entry]) -> None:
        try:
            conn = self._conn if self._conn is not None else self._connection()
            if len(batch) > 1:  # alone, the INSERT is its own transaction
                conn.execute("BEGIN IMMEDIATE")
            try:
                for entry in batch:
                    cursor = conn.execute(entry.sql, entry.params)
                    if entry.returning:
                        # Every row fetched: the statement must finish for its autocommit.
                        rows = cursor.fetchall()
                        entry.returned = tuple(rows[0]) if rows else None
                    else:
                        entry.returned = () if cursor.rowcount == 1 else None
                conn.commit()  # a no-op for a lone INSERT in autocommit mode
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
                batch[0].done = True
            else:  # nothing of the batch was written: each alone, to its own fate
                for entry in batch:
                    self._write([entry])
            return
        for entry in batch:
            entry.done = True

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn
