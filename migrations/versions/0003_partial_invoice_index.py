"""Index only the sales' invoice ids: a lead has none and no longer costs an index entry.

The unique constraint on ``invoice_id`` becomes a unique index over the rows that have
one. SQLite cannot drop a constraint, so there the events table is rebuilt (rows, ids
and the other indexes are copied).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLE = "cms_outbox_events"
NAME = "uq_cms_outbox_events_invoice_id"
HAS_INVOICE = sa.text("invoice_id IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table(TABLE) as batch:
        batch.drop_constraint(NAME, type_="unique")
    op.create_index(
        NAME, TABLE, ["invoice_id"], unique=True,
        sqlite_where=HAS_INVOICE, postgresql_where=HAS_INVOICE,
    )  # fmt: skip


def downgrade() -> None:
    op.drop_index(NAME, table_name=TABLE)
    with op.batch_alter_table(TABLE) as batch:
        batch.create_unique_constraint(NAME, ["invoice_id"])
