"""Database driver failures as ``StorageError``\\ s in plain words.

A user sees what happened and what to do, never the driver's text: that stays on the
chained ``__cause__`` for debugging (``cms-outbox --verbose`` prints it). Every module
that talks to the database wraps its work in ``storage_errors``.

A transaction the server cancelled to break a deadlock (or a serialization conflict)
left nothing applied: a transaction the outbox opens itself is then run again from the
start, by ``retrying``, a few times before it fails. One cancelled at its lock wait
timeout is not: another transaction has held the lock for that long, and running it again
at once would only wait as long again; it fails, and a flusher tries at its next pass.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Callable, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from . import database
from .errors import StorageError

__all__ = ["TRIES", "describe", "retrying", "storage_error", "storage_errors", "transient"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Times in all a transaction the server broke is run before its failure is raised.
TRIES = 5
# Seconds of the longest pause before the second try (full jitter, doubling per try):
# the two sides of a deadlock must not meet again at once.
RETRY_PAUSE = 0.02
# MySQL/MariaDB error number: deadlock found (not 1205, lock wait timeout exceeded).
_MYSQL_TRANSIENT = frozenset({1213})
# PostgreSQL SQLSTATEs: deadlock_detected, serialization_failure (not 55P03,
# lock_not_available, which lock_timeout raises).
_POSTGRES_TRANSIENT = frozenset({"40P01", "40001"})


@contextmanager
def storage_errors(action: str) -> Iterator[None]:
    """Turn any driver or SQLAlchemy failure inside into a ``StorageError`` about ``action``."""
    try:
        yield
    except (SQLAlchemyError, sqlite3.Error) as exc:
        raise storage_error(action, exc) from exc


def retrying(action: str, run: Callable[[], T]) -> T:
    """``run()`` (one whole transaction of the outbox's own), run again when ``transient``,
    up to ``TRIES`` times; any other failure, or the last, is a ``StorageError`` about
    ``action``."""
    for attempt in range(1, TRIES + 1):
        try:
            return run()
        except (SQLAlchemyError, sqlite3.Error) as exc:
            if attempt == TRIES or not transient(exc):
                raise storage_error(action, exc) from exc
            logger.debug(
                "%s: %s (try %d of %d, running it again)", action, describe(exc), attempt, TRIES
            )
        time.sleep(random.uniform(0.0, RETRY_PAUSE * 2 ** (attempt - 1)))
    raise AssertionError("unreachable")  # pragma: no cover


def transient(exc: BaseException) -> bool:
    """Whether the server cancelled the transaction to break a deadlock or a
    serialization conflict: nothing of it was applied and running it again is safe.

    SQLite never is: its writers queue for one lock under the busy timeout.
    """
    original = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    module = type(original).__module__
    if module.startswith(("pymysql", "MySQLdb")):
        return bool(original.args) and original.args[0] in _MYSQL_TRANSIENT
    if module.startswith("psycopg"):  # psycopg 3 and psycopg2
        state = getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)
        return state in _POSTGRES_TRANSIENT
    return False


def storage_error(action: str, exc: BaseException) -> StorageError:
    """``exc`` as a ``StorageError``: raise it ``from exc`` so the driver's error is chained."""
    return StorageError(f"{action} failed: {describe(exc)}")


def describe(exc: BaseException) -> str:
    """The cause of a driver failure in plain words, with what to do about it."""
    original = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    text = str(original).lower()
    kind = type(original).__name__
    module = type(original).__module__
    if module == "sqlite3" or isinstance(original, sqlite3.Error):
        return _sqlite(text, kind)
    if module.startswith(("psycopg", "pymysql", "MySQLdb")):
        return _server(text, kind)
    if isinstance(original, sa_exc.TimeoutError):
        return "no database connection came free within the connection pool's timeout"
    if isinstance(original, sa_exc.NoResultFound):
        return "a row the outbox needs is missing: run `cms-outbox migrate` on this database"
    return f"the database reported an unexpected error ({kind}; the driver's error is chained)"


def _sqlite(text: str, kind: str) -> str:
    if "locked" in text or "busy" in text:
        return (
            "the SQLite outbox is locked by another writer (an application transaction that "
            "stored an event and has not committed yet, a flusher, or a cms-outbox command "
            "that writes) and the busy timeout of "
            f"{database.BUSY_TIMEOUT:g} s ran out: commit or roll back long transactions "
            "on the outbox database, then try again"
        )
    if "no such table" in text:
        return "the outbox tables are missing: run `cms-outbox migrate` on this database"
    if "readonly" in text or "read-only" in text:
        return "the SQLite file (or its directory) is read-only for this process"
    if "unable to open" in text:
        return (
            "SQLite cannot open the database file: check that its directory exists and that "
            "this process may read and write both"
        )
    if "not a database" in text:
        return "the file is not a SQLite database"
    if "malformed" in text or "corrupt" in text:
        return "the SQLite database file is damaged"
    if "is full" in text:
        return "the disk holding the SQLite database is full"
    if "disk i/o" in text:
        return "the disk failed while SQLite read or wrote the database file"
    if "interrupted" in text:
        return "the statement was interrupted"
    return f"SQLite reported an unexpected error ({kind}; the driver's error is chained)"


def _server(text: str, kind: str) -> str:
    if "connection refused" in text or "could not connect" in text or "can't connect" in text:
        return "cannot connect to the database server: is it running, at that host and port?"
    if "timeout expired" in text:
        return "the database server did not answer within the connect timeout"
    if "could not translate host name" in text or "name or service not known" in text:
        return "the database server's host name does not resolve"
    if "password authentication failed" in text or "access denied" in text:
        return "the database server refused the user name or password"
    if "role" in text and "does not exist" in text:
        return "the database server has no such user (role)"
    if ("does not exist" in text and "database" in text) or "unknown database" in text:
        return "the database named in the URL does not exist on the server"
    if "lock timeout" in text or "lock wait timeout" in text or "locknotavailable" in kind.lower():
        return (
            "another transaction held a lock on outbox rows longer than this statement may "
            "wait for it: commit or roll back long transactions on the outbox tables, then "
            "try again"
        )
    if "deadlock" in text:
        return "the database server broke a deadlock by cancelling this transaction: try again"
    if "canceling statement" in text or "statement timeout" in text:
        return "the database server cancelled the statement at its statement timeout"
    if "does not exist" in text and ("relation" in text or "table" in text):
        return "the outbox tables are missing: run `cms-outbox migrate` on this database"
    if "server closed the connection" in text or "terminating connection" in text:
        return "the database server closed the connection"
    if "gone away" in text or "lost connection" in text:
        return "the connection to the database server was lost"
    if "read-only" in text or "read only" in text:
        return "the database server accepts no writes here (a read-only server or user)"
    return (
        f"the database server reported an unexpected error ({kind}; the driver's error is chained)"
    )
