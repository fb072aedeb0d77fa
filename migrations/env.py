"""Alembic environment: runs on the connection ``cms_outbox.migrate`` hands over.

``migrate.upgrade`` holds the database's migration lock around this transaction, so
several processes starting at once migrate one after the other and the later ones find
the work done (see ``cms_outbox.dialect.migration_lock``).
"""

from __future__ import annotations

from alembic import context

from cms_outbox.migrate import VERSION_TABLE

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
    context.run_migrations()
