"""Remember when an operator last retried or purged: health flags what went wrong since.

``acknowledged_at`` on the control row is the moment of the last operator ``retry`` or
``purge``; ``cms-outbox health`` calls dead and blocked events new when they went dead
(or were enqueued behind a dead setup) after it. NULL: never, every one is new.

Checks first, so that a rerun after a kill succeeds (on MySQL every DDL statement
commits by itself).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TABLE = "cms_outbox_control"
COLUMN = "acknowledged_at"


def _has_column() -> bool:
    return COLUMN in {c["name"] for c in sa.inspect(op.get_bind()).get_columns(TABLE)}


def upgrade() -> None:
    if not _has_column():
        op.add_column(TABLE, sa.Column(COLUMN, sa.Double, nullable=True))


def downgrade() -> None:
    if _has_column():
        with op.batch_alter_table(TABLE) as batch:
            batch.drop_column(COLUMN)
