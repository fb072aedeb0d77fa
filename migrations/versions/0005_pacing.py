"""Pacing that follows the service: the shared budget keeps the limit and the 429 pause.

The control row's ``rate_factor`` (a 429 halved the rate) gives way to the service's
quota as last heard (``quota_requests`` per ``quota_window`` seconds, and its
``limit_source``), what it still allows before ``reset_at`` (``remaining``), the pause
every flusher keeps after a 429 (``paused_until``) and what learning from 429s needs
(``counted_since``, ``counted``, ``changed_at``, ``probed_from``).

Each step checks first, so that a rerun after a kill at any statement succeeds (on
MySQL every DDL statement commits by itself).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa

from cms_outbox.revision_steps import add_column, drop_column

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TABLE = "cms_outbox_control"
COLUMNS = (
    ("quota_requests", sa.Double, "60"),
    ("quota_window", sa.Double, "60"),
    ("limit_source", sa.String(16), "'assumed'"),
    ("remaining", sa.Integer, None),
    ("reset_at", sa.Double, "0"),
    ("paused_until", sa.Double, "0"),
    ("counted_since", sa.Double, "0"),
    ("counted", sa.Integer, "0"),
    ("changed_at", sa.Double, "0"),
    ("probed_from", sa.Double, "0"),
)


def upgrade() -> None:
    for name, kind, default in COLUMNS:
        server_default = None if default is None else sa.text(default)
        add_column(TABLE, sa.Column(name, kind, nullable=default is None,
                                    server_default=server_default))  # fmt: skip
    drop_column(TABLE, "rate_factor")


def downgrade() -> None:
    add_column(
        TABLE, sa.Column("rate_factor", sa.Double, nullable=False, server_default=sa.text("1"))
    )
    for name, _, _ in reversed(COLUMNS):
        drop_column(TABLE, name)
