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

from cms_outbox.revision_steps import create_index, drop_index

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_cms_outbox_events_created_at": ("cms_outbox_events", ["created_at"]),
    "ix_cms_outbox_attempts_started_at": ("cms_outbox_attempts", ["started_at", "outcome"]),
}


def upgrade() -> None:  # each step checked: resumable where DDL commits itself (MySQL)
    for name, (table, columns) in INDEXES.items():
        create_index(name, table, columns)


def downgrade() -> None:
    for name, (table, _) in INDEXES.items():
        drop_index(name, table)
