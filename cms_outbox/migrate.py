"""Alembic glue: our own version table, upgrade to head, and the head check."""

from __future__ import annotations

import importlib
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from .database import READ_ONLY
from .driver_errors import storage_error
from .errors import SchemaError

__all__ = ["VERSION_TABLE", "current_revision", "ensure_schema", "head_revision", "upgrade"]

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
    config = Config()
    config.set_main_option("script_location", _script_location())
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this version of cms_outbox knows."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None when the outbox was never migrated."""
    try:
        with engine.connect() as connection:
            connection.execution_options(**{READ_ONLY: True})  # never wait behind a writer
            context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
            return context.get_current_revision()
    except SQLAlchemyError as exc:
        raise storage_error("reading the outbox schema version", exc) from exc


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the outbox tables to ``revision`` (default: head) in one transaction.

    :raises StorageError: when the database refuses.
    """
    try:
        with engine.begin() as connection:
            command.upgrade(_config(connection), revision)
    except SQLAlchemyError as exc:
        raise storage_error("migrating the outbox tables", exc) from exc


def ensure_schema(engine: Engine, *, auto_migrate: bool) -> None:
    """Migrate to head (``auto_migrate``) or check that the database is already there.

    :raises SchemaError: the database is behind and ``auto_migrate`` is off, or it was
        migrated by a newer cms_outbox than this one.
    """
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    known = {script.revision for script in ScriptDirectory.from_config(_config()).walk_revisions()}
    if current is not None and current not in known:
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
