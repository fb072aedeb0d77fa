"""Create the events and attempts tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cms_outbox.revision_steps import create_index, create_table

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SequenceId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:  # every step checked: resumable where DDL commits itself (MySQL)
    create_table(
        "cms_outbox_events",
        sa.Column("id", SequenceId, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("customer_external_id", sa.String(255), nullable=False),
        sa.Column("click_id", sa.String(255)),
        sa.Column("mode", sa.String(16)),
        sa.Column("invoice_id", sa.String(255)),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.Double, nullable=False),
        sa.Column("lease_owner", sa.String(64)),
        sa.Column("lease_expires_at", sa.Double),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("last_attempt_at", sa.Double),
        sa.Column("delivered_at", sa.Double),
        sa.Column("last_status_code", sa.Integer),
        sa.Column("last_error", sa.Text),
        sa.Column("last_response", sa.Text),
        sa.UniqueConstraint("event_id", name="uq_cms_outbox_events_event_id"),
        sa.UniqueConstraint("invoice_id", name="uq_cms_outbox_events_invoice_id"),
    )
    create_index("ix_cms_outbox_events_state_id", "cms_outbox_events", ["state", "id"])
    create_index(
        "ix_cms_outbox_events_customer_id", "cms_outbox_events", ["customer_external_id", "id"]
    )
    create_table(
        "cms_outbox_attempts",
        sa.Column("id", SequenceId, primary_key=True, autoincrement=True),
        sa.Column("event_seq", sa.BigInteger, nullable=False),
        sa.Column("started_at", sa.Double, nullable=False),
        sa.Column("duration", sa.Double, nullable=False),
        sa.Column("status_code", sa.Integer),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("response", sa.Text),
    )
    create_index("ix_cms_outbox_attempts_event_seq", "cms_outbox_attempts", ["event_seq"])


def downgrade() -> None:
    op.drop_table("cms_outbox_attempts")
    op.drop_table("cms_outbox_events")
