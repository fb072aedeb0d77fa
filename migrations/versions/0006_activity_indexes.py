"""Index events by enqueue time and attempts by start time, for the dashboard.

The dashboard's activity chart counts attempts per minute over the last hour and day
and enqueues over the same span, and its events page filters by a time range. Without
these indexes each of those reads every row; with them, only the span asked for. The
attempts index carries the outcome so the chart never reads the attempt rows.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_cms_outbox_events_created_at": ("cms_outbox_events", ["created_at"]),
    "ix_cms_outbox_attempts_started_at": ("cms_outbox_attempts", ["started_at", "outcome"]),
}


def _has_index(name: str, table: str) -> bool:
    # Rerun after a kill (MySQL commits each DDL statement by itself): create only once.
    return name in {ix["name"] for ix in sa.inspect(op.get_bind()).get_indexes(table)}


def upgrade() -> None:
    for name, (table, columns) in INDEXES.items():
        if not _has_index(name, table):
            op.create_index(name, table, columns)


def downgrade() -> None:
    for name, (table, _) in INDEXES.items():
        if _has_index(name, table):
            op.drop_index(name, table_name=table)
