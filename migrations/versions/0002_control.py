"""Add the control row: shared token bucket and delivery pauses.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cms_outbox.revision_steps import create_table, insert_missing

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:  # every step checked: resumable where DDL commits itself (MySQL)
    create_table(
        "cms_outbox_control",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("tokens", sa.Double, nullable=False),
        sa.Column("tokens_at", sa.Double, nullable=False),
        sa.Column("rate_factor", sa.Double, nullable=False),
        sa.Column("outage_since", sa.Double),
        sa.Column("auth_paused_since", sa.Double),
        sa.Column("pause_error", sa.Text),
    )
    # Created here, once, so that flushers never race to insert it.
    insert_missing(
        "cms_outbox_control",
        "name",
        [{"name": "default", "tokens": 0.0, "tokens_at": 0.0, "rate_factor": 1.0}],
    )


def downgrade() -> None:
    op.drop_table("cms_outbox_control")
