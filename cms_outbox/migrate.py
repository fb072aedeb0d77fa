"""Alembic glue: our own version table, upgrade to head, and the head check.

Starting a client must stay cheap for a short script: the head check is one query, and
Alembic (a tenth of a second to import) is imported only when a migration must run.
"""

from __future__ import annotations

import functools
import importlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import SQLAlchemyError

from .database import READ_ONLY, display_url
from .dialect import migration_lock
from .driver_errors import storage_error
from .errors import SchemaError

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "VERSION_TABLE",
    "current_revision",
    "ensure_schema",
    "head_revision",
    "known_revisions",
    "upgrade",
]

# Separate from the application's "alembic_version" so both histories live in one database.
VERSION_TABLE = "cms_outbox_alembic_version"


def _script_location() -> str:
    # The repository's top-level migrations/ folder, shipped inside the package; a
    # source checkout imported without installing has it beside the package instead.
    try:
        migrations = importlib.import_module("cms_outbox.migrations")
    except ModuleNotFoundError:
        return str(Path(__file__).resolve().parent.parent / "migrations")
    return str(Path(str(migrations.__file__)).parent)


def _config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", _script_location())
    config.attributes["connection"] = connection
    return config


_REVISION = re.compile(r"^revision(?:\s*:[^=]+)?\s*=\s*[\"']([^\"']+)[\"']", re.M)
_DOWN = re.compile(r"^down_revision(?:\s*:[^=]+)?\s*=\s*(?:None|[\"']([^\"']+)[\"'])", re.M)


@functools.lru_cache(maxsize=1)
def _revisions() -> tuple[str, frozenset[str]]:
    """The head and every known revision, read from the revision files (not via Alembic)."""
    known: set[str] = set()
    parents: set[str] = set()
    for path in (Path(_script_location()) / "versions").glob("*.py"):
        source = path.read_text(encoding="utf-8")
        revision = _REVISION.search(source)
        if revision is None:
            continue
        known.add(revision.group(1))
        down = _DOWN.search(source)
        if down is not None and down.group(1):
            parents.add(down.group(1))
    (head,) = known - parents  # one line of history
    return head, frozenset(known)


def head_revision() -> str:
    """The newest revision this version of cms_outbox knows."""
    return _revisions()[0]


def known_revisions() -> frozenset[str]:
    """Every revision this version of cms_outbox knows."""
    return _revisions()[1]


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None when the outbox was never migrated."""
    query = text(f"SELECT version_num FROM {VERSION_TABLE}")
    try:
        with engine.connect() as connection:
            connection.execution_options(**{READ_ONLY: True})  # never wait behind a writer
            try:
                return connection.execute(query).scalar_one_or_none()
            except SQLAlchemyError:
                connection.rollback()
                if not inspect(connection).has_table(VERSION_TABLE):
                    return None
            # Created between the two looks: another process is migrating (on MySQL each
            # DDL statement commits at once). Its version, or none yet.
            return connection.execute(query).scalar_one_or_none()
    except SQLAlchemyError as exc:
        outbox = display_url(engine.url)
        raise storage_error(f"reading the schema version of the outbox {outbox}", exc) from exc


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the outbox tables to ``revision`` (default: head), under the migration lock.

    One transaction where DDL is transactional (SQLite, PostgreSQL); on MySQL each
    statement commits, and a rerun after a kill finishes what was left (every step of a
    revision checks first, see ``cms_outbox.revision_steps``).

    :raises StorageError: when the database refuses.
    """
    from alembic import command

    try:
        with engine.connect() as connection, migration_lock(connection), connection.begin():
            command.upgrade(_config(connection), revision)
    except SQLAlchemyError as exc:
        outbox = display_url(engine.url)
        raise storage_error(f"migrating the outbox tables of {outbox}", exc) from exc


def ensure_schema(engine: Engine, *, auto_migrate: bool) -> None:
    """Migrate to head (``auto_migrate``) or check that the database is already there.

    :raises SchemaError: the database is behind and ``auto_migrate`` is off, or it was
        migrated by a newer cms_outbox than this one.
    """
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is not None and current not in known_revisions():
        raise SchemaError(
            f"the outbox database is at revision {current!r}, newer than this cms_outbox "
            f"(head {head!r}): upgrade cms_outbox"
        )
    if not auto_migrate:
        raise SchemaError(
            f"the outbox database is at revision {current or 'none'}, not {head!r}: "
            "run `cms-outbox migrate` or pass auto_migrate=True"
        )
    upgrade(engine)
