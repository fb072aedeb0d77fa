"""Index deferred setups by customer: a follow-up's governing setup is one seek.

Before, every lease ran one statement per customer with a dead deferred setup; now the
lease reads the latest deferred setup of a follow-up's customer before it, which this
(customer, mode, id) index answers with one backward seek.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from cms_outbox.revision_steps import create_index, drop_index

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLE = "cms_outbox_events"
SETUPS = "ix_cms_outbox_events_customer_mode_id"


def upgrade() -> None:  # checked: resumable where DDL commits itself (MySQL)
    create_index(SETUPS, TABLE, ["customer_external_id", "mode", "id"])


def downgrade() -> None:
    drop_index(SETUPS, TABLE)
