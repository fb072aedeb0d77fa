"""Heartbeats: one row per running flusher, so that status can say when none is running.

Checks first, so that a rerun after a kill succeeds (on MySQL every DDL statement
commits by itself).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TABLE = "cms_outbox_flushers"


def _has_table() -> bool:
    return sa.inspect(op.get_bind()).has_table(TABLE)


def upgrade() -> None:
    if not _has_table():
        op.create_table(
            TABLE,
            sa.Column("owner", sa.String(64), primary_key=True),
            sa.Column("kind", sa.String(16), nullable=False),
            sa.Column("host", sa.String(255), nullable=False),
            sa.Column("pid", sa.Integer, nullable=False),
            sa.Column("version", sa.String(32), nullable=False),
            sa.Column("started_at", sa.Double, nullable=False),
            sa.Column("beat_at", sa.Double, nullable=False),
        )


def downgrade() -> None:
    if _has_table():
        op.drop_table(TABLE)
