"""Schema steps for Alembic revisions that a rerun after a kill at any statement completes.

MySQL and MariaDB commit every DDL statement by itself, so there a revision is not one
transaction: a process killed halfway leaves some steps done and the version table not
yet stamped. Each step here first looks at the database and does only what is missing,
so running the revision again finishes the job on every backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

__all__ = [
    "add_column",
    "create_index",
    "create_table",
    "drop_column",
    "drop_index",
    "drop_table",
    "drop_unique_constraint",
    "has_column",
    "has_index",
    "has_table",
    "insert_missing",
]


def _inspector() -> sa.Inspector:
    return sa.inspect(op.get_bind())  # a fresh one each time: it caches what it read


def has_table(table: str) -> bool:
    return table in _inspector().get_table_names()


def has_column(table: str, column: str) -> bool:
    return has_table(table) and column in {c["name"] for c in _inspector().get_columns(table)}


def has_index(table: str, index: str) -> bool:
    return has_table(table) and index in {i["name"] for i in _inspector().get_indexes(table)}


def create_table(table: str, *columns: Any, **options: Any) -> sa.Table | None:
    """``op.create_table`` unless the table exists; returns the table when it created it."""
    if has_table(table):
        return None
    return op.create_table(table, *columns, **options)


def drop_table(table: str) -> None:
    if has_table(table):
        op.drop_table(table)


def create_index(index: str, table: str, columns: Sequence[str], **options: Any) -> None:
    if not has_index(table, index):
        op.create_index(index, table, list(columns), **options)


def drop_index(index: str, table: str) -> None:
    if has_index(table, index):
        op.drop_index(index, table_name=table)


def drop_unique_constraint(constraint: str, table: str) -> None:
    """Drop a unique constraint (MySQL reports it as a unique index of the same name)."""
    inspector = _inspector()
    if not has_table(table):
        return
    names = {u["name"] for u in inspector.get_unique_constraints(table)}
    if constraint in names:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(constraint, type_="unique")


def add_column(table: str, column: sa.Column[Any]) -> None:
    if not has_column(table, column.name):
        with op.batch_alter_table(table) as batch:
            batch.add_column(column)


def drop_column(table: str, column: str) -> None:
    if has_column(table, column):
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column)


def insert_missing(table: str, key: str, rows: Sequence[dict[str, Any]]) -> None:
    """Insert the ``rows`` whose ``key`` column value is not in ``table`` yet."""
    bind = op.get_bind()
    reflected = sa.Table(table, sa.MetaData(), autoload_with=bind)
    present = set(bind.execute(sa.select(reflected.c[key])).scalars())
    missing = [row for row in rows if row[key] not in present]
    if missing:
        op.bulk_insert(reflected, missing)
