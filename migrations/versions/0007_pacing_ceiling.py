"""The control row records the explicit rate limit of the flusher that paced last.

``status`` shows the pacing in force and where it came from; with an explicit
``rate_limit`` in force ("configured") it must know that number, which only the
flushers' settings held.

A rerun after a kill succeeds: the column is added only when missing.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TABLE = "cms_outbox_control"


def _has_ceiling() -> bool:
    columns = sa.inspect(op.get_bind()).get_columns(TABLE)
    return "ceiling" in {column["name"] for column in columns}


def upgrade() -> None:
    if not _has_ceiling():
        op.add_column(
            TABLE, sa.Column("ceiling", sa.Double, nullable=False, server_default=sa.text("0"))
        )


def downgrade() -> None:
    if _has_ceiling():
        with op.batch_alter_table(TABLE) as batch:
            batch.drop_column("ceiling")
