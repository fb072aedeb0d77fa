"""The SQLite outbox file, checked before SQLite opens it: each failure named with its path.

SQLite says "unable to open database file" for a missing directory, a directory given as
the file and an unreadable file alike, and accepts a read-only file until the first write.
These checks say which it is. One rule for missing directories, the same for ``CMSClient``
and every command: a missing directory is an error (``DirectoryNotFound``) unless creation
is asked for (``create_directories=True``, ``--create-directories``), so that a mistyped
volume path never becomes a throwaway outbox.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse

from .errors import DirectoryNotFound, SchemaError, StorageError

__all__ = ["prepare"]

BUSY_TIMEOUT = 30.0  # seconds, as the engines wait for a lock


def prepare(path: str, *, create: bool, create_directories: bool, writable: bool) -> None:
    """Make sure ``path`` is a SQLite file this process can use; create it if allowed.

    :param create: create a missing file (mode 0600); without it a missing file is a
        ``SchemaError`` (nothing to read).
    :param create_directories: also create missing parent directories.
    :param writable: the caller writes: a read-only file or directory is refused now
        rather than at the first write.
    :raises DirectoryNotFound: the parent directory is missing and may not be created.
    :raises StorageError: a directory instead of a file, unreadable, read-only, or not a
        SQLite database.
    """
    full = os.path.abspath(path)
    directory = os.path.dirname(full)
    if os.path.isdir(full):
        raise StorageError(
            f"the outbox path {full} is a directory, not a SQLite file: name a file in it, "
            f"e.g. {os.path.join(full, 'cms_outbox.db')}"
        )
    if not os.path.exists(full):
        _directory(directory, full, create=create and create_directories, reader=not create)
        if not create:
            raise SchemaError(
                f"no outbox database at {full}: check --database-url or CMS_OUTBOX_URL, "
                "or create it with `cms-outbox migrate`"
            )
        _create_file(full)
        return
    if not os.access(full, os.R_OK):
        raise StorageError(f"the outbox {full} cannot be read by this process (permissions)")
    if writable and not (os.access(full, os.W_OK) and os.access(directory, os.W_OK)):
        raise StorageError(
            f"the outbox {full} is read-only for this process: a client that stores or "
            "delivers events must write the file and its directory (SQLite keeps its -wal "
            "and -shm files beside it)"
        )
    _check_is_sqlite(full)


def _check_is_sqlite(full: str) -> None:
    # Asked of SQLite, never by reading the file ourselves: closing any descriptor of the
    # file drops every POSIX lock this process holds on it, the WAL's shared lock of the
    # connections already open included. Another process then takes itself for the last
    # user, checkpoints and deletes the WAL, and the writes still to come here are lost.
    # SQLite shares one descriptor per file among a process's connections for that reason.
    uri = f"file:{urllib.parse.quote(full)}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT)
        try:
            conn.execute("PRAGMA schema_version").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        if "not a database" not in str(exc):
            return  # anything else (a lock held long) is left for the engine to report
        raise StorageError(
            f"the outbox {full} is not a SQLite database: check --database-url or "
            "CMS_OUTBOX_URL (is it another file?)"
        ) from exc


def _directory(directory: str, full: str, *, create: bool, reader: bool) -> None:
    if os.path.isdir(directory):
        return
    existing = directory
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise StorageError(f"the outbox {full} cannot exist: {existing} is a file, not a directory")
    missing = directory
    while os.path.dirname(missing) != existing:
        missing = os.path.dirname(missing)
    if not create:
        ask = (
            "nothing creates an outbox here: `cms-outbox migrate --create-directories` does"
            if reader
            else "or ask for it to be created (CMSClient(create_directories=True), or "
            "--create-directories on `cms-outbox migrate` and `cms-outbox run`)"
        )
        raise DirectoryNotFound(
            f"the directory of the outbox {full} does not exist ({missing} is missing): check "
            f"the path (a mistyped volume?), {ask}"
        )
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create the directory {directory}: {exc.strerror}") from exc


def _create_file(full: str) -> None:
    # SQLite creates the -wal and -shm files with the database file's permissions.
    try:
        os.close(os.open(full, os.O_CREAT | os.O_RDWR, 0o600))
    except OSError as exc:
        raise StorageError(f"cannot create the outbox {full}: {exc.strerror}") from exc
