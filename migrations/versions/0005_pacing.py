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
from alembic import op

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


def _columns() -> set[str]:
    return {column["name"] for column in sa.inspect(op.get_bind()).get_columns(TABLE)}


def upgrade() -> None:
    for name, kind, default in COLUMNS:
        if name not in _columns():
            nullable = default is None
            server_default = None if default is None else sa.text(default)
            op.add_column(
                TABLE, sa.Column(name, kind, nullable=nullable, server_default=server_default)
            )
    if "rate_factor" in _columns():
        with op.batch_alter_table(TABLE) as batch:
            batch.drop_column("rate_factor")


def downgrade() -> None:
    if "rate_factor" not in _columns():
        with op.batch_alter_table(TABLE) as batch:
            batch.add_column(
                sa.Column("rate_factor", sa.Double, nullable=False, server_default=sa.text("1"))
            )
    present = _columns()
    with op.batch_alter_table(TABLE) as batch:
        for name, _, _ in reversed(COLUMNS):
            if name in present:
                batch.drop_column(name)
