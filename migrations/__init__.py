"""Alembic revisions of the outbox tables, shipped as ``cms_outbox.migrations``."""
