"""Leaner indexes: only sales index their invoice id; the FIFO index covers the state.

- The unique constraint on ``invoice_id`` becomes a unique index over the rows that
  have one: a lead no longer costs an index entry. SQLite cannot drop a constraint, so
  there the events table is rebuilt (rows, ids and the other indexes are copied).
- The per-customer FIFO check ("no earlier row of this customer unfinished") looked up
  every earlier row of the customer, delivered ones included, so leasing slowed down as
  delivered history grew. Indexed by (customer, state, id) it is three index seeks.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cms_outbox.revision_steps import create_index, drop_index, drop_unique_constraint

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLE = "cms_outbox_events"
INVOICE = "uq_cms_outbox_events_invoice_id"
HAS_INVOICE = sa.text("invoice_id IS NOT NULL")
OLD_FIFO = "ix_cms_outbox_events_customer_id"
FIFO = "ix_cms_outbox_events_customer_state_id"


def upgrade() -> None:  # every step checked: resumable where DDL commits itself (MySQL)
    if op.get_bind().dialect.name != "mysql":  # MySQL has no partial index: it stays as is
        drop_unique_constraint(INVOICE, TABLE)
        create_index(
            INVOICE, TABLE, ["invoice_id"], unique=True,
            sqlite_where=HAS_INVOICE, postgresql_where=HAS_INVOICE,
        )  # fmt: skip
    create_index(FIFO, TABLE, ["customer_external_id", "state", "id"])
    drop_index(OLD_FIFO, TABLE)


def downgrade() -> None:
    op.drop_index(FIFO, table_name=TABLE)
    op.create_index(OLD_FIFO, TABLE, ["customer_external_id", "id"])
    op.drop_index(INVOICE, table_name=TABLE)
    with op.batch_alter_table(TABLE) as batch:
        batch.create_unique_constraint(INVOICE, ["invoice_id"])
