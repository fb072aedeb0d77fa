"""The busy flusher's every-round statements, compiled once and run on SQLite's own cursor.

On SQLite, SQLAlchemy's work around each execution (cache key, parameter processing,
result wrapping) costs several times the statement itself, all of it holding the GIL
the sending threads need: about 150 µs for a lookup SQLite answers in 10. Each Core
statement here is compiled once for SQLite (once per length of its IN lists), so its
SQL stays defined in one place, ``leasing``; elsewhere it simply runs through Core.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any, Union

from sqlalchemy import Connection, Insert, Select, Update
from sqlalchemy.dialects import sqlite

__all__ = ["execute_many", "fetch_all", "for_sqlite"]

_DIALECT = sqlite.dialect()
Statement = Union[Select[Any], Update, Insert]


class _Compiled:
    """One statement's SQL for SQLite and how to build its positional parameters."""

    __slots__ = ("sources", "sql")

    def __init__(self, statement: Statement, params: Mapping[str, Any]) -> None:
        compiled = statement.compile(dialect=_DIALECT)
        # Expanded with markers in place of the caller's values: what remains are constants.
        markers: dict[str, Any] = {}
        for key, value in params.items():
            if isinstance(value, (list, tuple)):
                markers[key] = [_Marker(key, i) for i in range(len(value))]
            else:
                markers[key] = _Marker(key, None)
        expanded = compiled.construct_expanded_state(markers)
        self.sql = expanded.statement
        # Per parameter: (constant, None, None, None), or (None, key, index in its list or
        # None, the type's conversion where it has one: a Double's float()).
        self.sources: list[tuple[Any, str | None, int | None, Any]] = []
        for value in expanded.positional_parameters:
            if isinstance(value, _Marker):
                convert = compiled.binds[value.key].type.bind_processor(_DIALECT)
                self.sources.append((None, value.key, value.index, convert))
            else:
                self.sources.append((value, None, None, None))

    def order(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        values = []
        for constant, key, index, convert in self.sources:
            if key is None:
                values.append(constant)
                continue
            value = params[key] if index is None else params[key][index]
            values.append(value if convert is None else convert(value))
        return tuple(values)


class _Marker:
    """Stands for the caller's parameter ``key`` (item ``index`` of it, for a list)."""

    __slots__ = ("index", "key")

    def __init__(self, key: str, index: int | None) -> None:
        self.key = key
        self.index = index


_CACHE_SIZE = 500
_cache: dict[tuple[Statement, tuple[tuple[str, int], ...]], _Compiled] = {}


def _compiled(statement: Statement, params: Mapping[str, Any]) -> _Compiled:
    shape = tuple(
        (key, len(value) if isinstance(value, (list, tuple)) else -1)
        for key, value in sorted(params.items())
    )
    key = (statement, shape)
    found = _cache.get(key)
    if found is None:
        if len(_cache) >= _CACHE_SIZE:  # a few statements times the batch sizes seen
            _cache.clear()
        found = _cache[key] = _Compiled(statement, params)
    return found


def for_sqlite(statement: Statement, params: Mapping[str, Any]) -> tuple[str, tuple[Any, ...]]:
    """The SQL SQLite runs for ``statement`` and its positional parameters."""
    compiled = _compiled(statement, params)
    return compiled.sql, compiled.order(params)


def fetch_all(conn: Connection, statement: Statement, params: Mapping[str, Any]) -> list[Any]:
    """``conn.execute(statement, params).all()``: rows as tuples on SQLite."""
    if conn.dialect.name != "sqlite":
        return list(conn.execute(statement, params).all())
    return _driver(conn).execute(*for_sqlite(statement, params)).fetchall()


def execute_many(conn: Connection, statement: Statement, rows: Sequence[Mapping[str, Any]]) -> None:
    """``conn.execute(statement, rows)`` (every row with the same keys), as executemany."""
    if not rows:
        return
    if conn.dialect.name != "sqlite":
        conn.execute(statement, list(rows))
        return
    compiled = _compiled(statement, rows[0])
    _driver(conn).executemany(compiled.sql, [compiled.order(row) for row in rows])


def _driver(conn: Connection) -> sqlite3.Connection:
    driver = conn.connection.driver_connection
    assert isinstance(driver, sqlite3.Connection)
    return driver
