"""Alembic environment: runs on the connection ``cms_outbox.migrate`` hands over.

Several processes may start migrating one database at once (a first deploy with many
workers): each takes the database's migration lock first, so one migrates and the
others wait and find the work done. PostgreSQL's lock ends with the transaction;
MySQL's named lock belongs to the connection, whose DDL commits statement by statement,
so it is released explicitly.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from cms_outbox.errors import StorageError
from cms_outbox.migrate import LOCK_TIMEOUT, VERSION_TABLE

connection = context.config.attributes["connection"]
dialect = connection.dialect.name
context.configure(
    connection=connection,
    version_table=VERSION_TABLE,  # our own history, beside the application's alembic_version
    render_as_batch=dialect == "sqlite",
)
with context.begin_transaction():
    if dialect == "sqlite" and not connection.connection.dbapi_connection.in_transaction:
        # An application's engine with the driver's legacy transaction handling would run
        # each DDL statement outside any transaction: a kill could leave half a rebuild.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    if dialect == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(7305117250)"))
    elif dialect == "mysql":
        # One name per database: other databases on the server migrate independently.
        name = "CONCAT('cms_outbox_migrate:', DATABASE())"
        got = connection.execute(text(f"SELECT GET_LOCK({name}, {LOCK_TIMEOUT})")).scalar()
        if got != 1:
            raise StorageError(f"another process held the migration lock for {LOCK_TIMEOUT} s")
    try:
        context.run_migrations()
    finally:
        if dialect == "mysql":
            connection.execute(text(f"SELECT RELEASE_LOCK({name})"))
