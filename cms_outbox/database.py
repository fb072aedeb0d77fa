"""Engines: SQLite made durable and concurrent, other backends as SQLAlchemy builds them."""

from __future__ import annotations

import os
import re
import sqlite3
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from . import sqlite_path
from .errors import ConfigurationError

__all__ = [
    "BUSY_TIMEOUT",
    "READ_ONLY",
    "create",
    "display_url",
    "is_sqlite",
    "parse",
    "prepare_sqlite",
]

# Long enough that contending writers queue up instead of seeing "database is locked".
BUSY_TIMEOUT = 30.0
# Execution option of a connection that only reads: on SQLite it begins a deferred
# transaction, so a read never waits behind a writer (e.g. an application's open
# transactional-outbox transaction) the way BEGIN IMMEDIATE would.
READ_ONLY = "cms_outbox_read_only"


def create(
    url: str,
    *,
    durability: str = "full",
    create: bool = True,
    create_directories: bool = False,
    writable: bool = True,
) -> Engine:
    """Create an engine for ``url``; a new SQLite file is created with mode 0600.

    :param create: create a missing SQLite file (a reader passes False).
    :param create_directories: create a SQLite file's missing parent directories too.
    :param writable: refuse a read-only SQLite file now, not at the first write.
    :raises ConfigurationError: for a URL SQLAlchemy cannot use.
    :raises StorageError: a SQLite path that cannot work (see ``sqlite_path.prepare``).
    """
    parsed = parse(url)
    options: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if not database or database == ":memory:" or database.startswith("file:"):
            raise ConfigurationError(
                "the outbox needs a SQLite file (sqlite:///path.db), not an in-memory database: "
                "events must survive the process"
            )
        sqlite_path.prepare(
            database, create=create, create_directories=create_directories, writable=writable
        )
        options["connect_args"] = {"timeout": BUSY_TIMEOUT, "check_same_thread": False}
    else:
        options["pool_pre_ping"] = True
    try:
        engine = create_engine(parsed, **options)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise ConfigurationError(
            f"cannot use database URL {parsed!r}: {_unusable(parsed, exc)}"
        ) from exc
    if is_sqlite(engine):
        prepare_sqlite(engine, durability=durability)
    return engine


def parse(url: str) -> URL:
    """``url`` parsed, or a ``ConfigurationError`` that quotes it with its password masked.

    :raises ConfigurationError: not of the form ``dialect+driver://user:password@host:port/db``.
    """
    try:
        return make_url(url)
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
        reason = "the port is not a number" if isinstance(exc, ValueError) else "not a URL"
        masked = _PASSWORD.sub(r"\1***@", url)
        raise ConfigurationError(
            f"invalid database URL {masked!r} ({reason}): expected "
            "dialect+driver://user:password@host:port/database, e.g. "
            "sqlite:////var/lib/app/outbox.db or postgresql+psycopg://user@host/app"
        ) from None


# The password of a URL SQLAlchemy cannot parse: ``scheme://user:password@``.
_PASSWORD = re.compile(r"(//[^:/@]*:)[^@]*@")

# The drivers this package installs through its extras, for a dialect whose driver is missing.
_EXTRAS = {"postgresql": ("postgres", "postgresql+psycopg"), "mysql": ("mysql", "mysql+pymysql")}


def _unusable(parsed: URL, exc: Exception) -> str:
    backend = parsed.get_backend_name()
    if isinstance(exc, NoSuchModuleError):
        return (
            f"no SQLAlchemy dialect {parsed.drivername!r}: use sqlite:///, "
            "postgresql+psycopg:// or mysql+pymysql://"
        )
    if isinstance(exc, ImportError) and backend in _EXTRAS:
        extra, scheme = _EXTRAS[backend]
        return (
            f"its driver is not installed ({exc}): pip install 'cms-outbox[{extra}]' "
            f"and use a {scheme}:// URL"
        )
    if isinstance(exc, ImportError):
        return f"its driver is not installed ({exc})"
    return str(exc)


def display_url(url: str | URL) -> str:
    """The URL for logs and output: password masked, a SQLite path made absolute.

    A relative SQLite path is relative to the working directory (which ``gunicorn
    --chdir`` or a unit's ``WorkingDirectory=`` changes): output says where the file is.
    """
    parsed = parse(url) if isinstance(url, str) else url
    path = parsed.database
    if parsed.get_backend_name() == "sqlite" and path and not _in_memory(path):
        parsed = parsed.set(database=os.path.abspath(path))
    return parsed.render_as_string(hide_password=True)


def _in_memory(path: str) -> bool:
    return path == ":memory:" or path.startswith("file:")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def prepare_sqlite(engine: Engine, *, durability: str) -> None:
    """WAL, fsync per commit (``full``) and ``BEGIN IMMEDIATE`` for every writing transaction.

    The driver's own transaction handling is switched off so that SQLAlchemy's
    ``begin`` emits ``BEGIN IMMEDIATE``: a read-then-write transaction then never
    fails on lock upgrade, it waits under the busy timeout instead.
    """
    synchronous = "FULL" if durability == "full" else "NORMAL"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute(f"PRAGMA synchronous = {synchronous}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
