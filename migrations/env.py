"""Alembic environment: runs on the connection ``cms_outbox.migrate`` hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from cms_outbox.migrate import VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    version_table=VERSION_TABLE,  # our own history, beside the application's alembic_version
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    if connection.dialect.name == "postgresql":
        # Several daemons may start at once: one migrates, the others wait and find it done.
        connection.execute(text("SELECT pg_advisory_xact_lock(7305117250)"))
    context.run_migrations()
