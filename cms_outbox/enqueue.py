"""Storing a new event: the request path's one write, committed on return or in the
application's own transaction.

On SQLite the event goes through the group commit (``group_commit``) on a DB-API
connection of its own, behind a file lock that queues it with every other writer of the
outbox; elsewhere it is a Core insert in a transaction of its own, run again when the
server broke it for a deadlock; in an application's transaction (a SQLAlchemy
``Connection`` or ``Session``, or Django's connection) it is inserted there and never
retried. A sale whose ``invoice_id`` is stored already writes nothing and answers with
the stored row.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import SQLAlchemyError

from . import inserting, queries
from .driver_errors import retrying, storage_error, storage_errors
from .errors import StorageError
from .events import Event
from .group_commit import GroupCommit
from .results import EventState
from .schema import events
from .write_lock import WriteLock

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["AppConnection", "Enqueue", "Stored", "sqlite_file"]

# A Session only ever comes from an application that imported the ORM itself: the outbox
# does not import it (a third of SQLAlchemy's import time, for a short script's start).
# Django's connection (``django.db.connection``) is accepted too.
AppConnection = Union[Connection, "Session", Any]


@dataclass(frozen=True)
class Stored:
    """What ``Store.insert`` did: the event is stored in ``state``; or, with ``existing``, a
    sale with its ``invoice_id`` was stored already (that row; nothing was written)."""

    state: EventState
    existing: dict[str, Any] | None = None

    @classmethod
    def found(cls, row: dict[str, Any]) -> Stored:
        return cls(EventState(row["state"]), row)


STORED_PENDING = Stored(EventState.PENDING)  # immutable: one for every event stored pending


def sqlite_file(engine: Engine) -> str | None:
    """The path of ``engine``'s SQLite file (None: another backend, or no plain file)."""
    if engine.dialect.name != "sqlite":
        return None
    path = engine.url.database or ""
    return path if path and path != ":memory:" and not path.startswith("file:") else None


class Enqueue:
    """Stores new events on one outbox."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.group: GroupCommit | None = None
        # The enqueue's lock (an open file) of its own: it queues with the writes of this
        # process's flusher as with every other process's.
        path = sqlite_file(engine)
        self.lock = WriteLock(path) if path is not None else None
        if engine.dialect.name == "sqlite":
            self.group = GroupCommit(self._connection, write_lock=self.lock)
            inserting.sqlite_insert_follow_up()  # compiled now, not in a caller's request

    def insert(self, event: Event, connection: AppConnection | None = None) -> Stored:
        """Store ``event``, committed on return (or with ``connection``'s transaction).

        :raises StorageError: the database failed; nothing was written.
        """
        if connection is not None:
            if _is_django(connection):  # Django's own cursor, in its atomic() block
                from .django.transaction import insert_event

                return insert_event(connection, event, self._existing_sale)
            with storage_errors("storing the event in the application's transaction"):
                conn = connection if isinstance(connection, Connection) else connection.connection()
                return self._insert_core(conn, event)
        if self.group is not None:
            return self._insert_sqlite(self.group, event)

        def insert() -> Stored:  # at the default isolation level, as the application's
            with self.engine.begin() as conn:
                return self._insert_core(conn, event)

        return retrying("storing the event", insert)

    def close(self) -> None:
        """Close the enqueue connection and its lock file."""
        if self.group is not None:
            self.group.close()
        if self.lock is not None:
            self.lock.close()

    def after_fork_in_child(self) -> None:
        """Forget the parent's connection and lock file without closing its lock."""
        if self.group is not None:
            self.group.after_fork_in_child()
        if self.lock is not None:
            self.lock.after_fork_in_child()

    def _insert_sqlite(self, group: GroupCommit, event: Event) -> Stored:
        sql, returning = inserting.sqlite_insert(event)
        try:
            returned = group.insert(sql, inserting.row_values(event), returning=returning)
        except (sqlite3.Error, SQLAlchemyError) as exc:
            raise storage_error("storing the event", exc) from exc
        if returned is None:
            return Stored.found(self._existing_sale(event))
        return Stored(EventState(returned[0])) if returned else STORED_PENDING

    def _connection(self) -> sqlite3.Connection:
        # A DB-API connection of its own, detached from the pool: a pool checkout and its
        # reset-on-return would cost more than the insert itself.
        raw = self.engine.raw_connection()  # configured by the engine's connect hooks
        conn = raw.dbapi_connection
        raw.detach()
        assert isinstance(conn, sqlite3.Connection)
        return conn

    def _insert_core(self, conn: Connection, event: Event) -> Stored:
        state = inserting.insert_event(conn, event)
        if state is None:
            return Stored.found(self._existing_row(conn, event))
        return Stored(EventState(state))

    def _existing_sale(self, event: Event) -> dict[str, Any]:
        """The stored sale of ``event``'s invoice id, read on a connection of its own: it
        sees the latest committed row."""
        with queries.reading(self.engine, "reading the stored sale") as conn:
            row = _stored_sale(conn, event)
        if row is None:
            raise StorageError(f"storing event {event.event_id} failed: it was not inserted")
        return row

    def _existing_row(self, conn: Connection, event: Event) -> dict[str, Any]:
        # A plain read, where a locking one would hold a shared lock on the stored sale (on
        # MySQL) to the end of the application's transaction, for the flusher's record of
        # that sale to wait for. It sees this transaction's own rows; one committed after
        # its snapshot (MySQL's REPEATABLE READ) is read on a connection of its own.
        row = _stored_sale(conn, event)
        return row if row is not None else self._existing_sale(event)


def _stored_sale(conn: Connection, event: Event) -> dict[str, Any] | None:
    row = conn.execute(select(events).where(events.c.invoice_id == event.invoice_id)).first()
    return None if row is None else dict(row._mapping)


def _is_django(connection: object) -> bool:
    """A Django ``DatabaseWrapper``, or ``django.db.connection`` (a proxy to one)."""
    return type(connection).__module__.startswith(("django.db.backends.", "django.utils."))
