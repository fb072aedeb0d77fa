"""The statements that store a new event, on every backend.

On SQLite the hot path is one prepared statement on a DB-API connection of its own,
group-committed (``group_commit``); elsewhere, and inside an application's transaction,
a Core insert. Either way a sale whose ``invoice_id`` is already stored inserts nothing.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, case, insert, literal_column, select, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import IntegrityError

from .events import Event
from .queries import BLOCKED, DEAD, PENDING
from .schema import HAS_INVOICE, NOTIFY_CHANNEL, events

__all__ = [
    "COLUMNS", "NOTIFY", "SQLITE_INSERT", "insert_event", "latest_setup", "row_values",
    "sqlite_insert", "sqlite_insert_follow_up",
]  # fmt: skip

COLUMNS = (
    "event_id", "kind", "customer_external_id", "click_id", "mode", "invoice_id",
    "payload", "state", "attempts", "next_attempt_at", "created_at",
)  # fmt: skip
# The enqueue hot path on SQLite: one prepared statement on a DB-API connection of its
# own, group-committed. SQLAlchemy Core's per-statement overhead alone would double its cost.
# Either statement inserts nothing for a sale whose invoice id is taken.
_SKIP_TAKEN_INVOICE = "ON CONFLICT(invoice_id) WHERE invoice_id IS NOT NULL DO NOTHING"
# An event with a click id is never a follow-up: it is stored pending, by the plain
# INSERT ... VALUES a raw insert would run (the follow-up's form costs a third more), and
# the row count says whether it was inserted.
SQLITE_INSERT = (
    f"INSERT INTO {events.name} ({', '.join(COLUMNS)}) "
    f"VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) {_SKIP_TAKEN_INVOICE}"
)
NOTIFY = text(f"NOTIFY {NOTIFY_CHANNEL}")


def latest_setup(customer: ColumnElement[Any] | str) -> Select[Any]:
    """The state of ``customer``'s governing setup for a new follow-up: its latest
    deferred setup. The one statement of this rule, for every way of storing an event.
    """
    return (
        select(events.c.state)
        .where(events.c.customer_external_id == customer, events.c.mode == "deferred")
        .order_by(events.c.id.desc())
        .limit(1)
    )


@cache  # compiled once, when the first SQLite store is built, not at every import
def sqlite_insert_follow_up() -> str:
    """The hot path's statement for a follow-up (no click id): stored ``blocked`` while its
    governing setup is dead.

    Its first lease would hold it anyway, and the customer's later events would pile up
    pending behind it, scanned by every lease. The setup is read in the INSERT itself, so
    in the same write transaction. (A setup committing concurrently is caught by the lease,
    which checks again.)
    """
    setup = latest_setup(literal_column("?3")).compile(  # ?3: the row's customer
        dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}
    )
    return (
        f"INSERT INTO {events.name} ({', '.join(COLUMNS)}) "
        f"SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, "
        f"CASE WHEN ?4 IS NULL AND ({setup}) = '{DEAD}' THEN '{BLOCKED}' ELSE ?8 END, "
        "?9, ?10, ?11 WHERE true "  # "WHERE true": SQLite's upsert after a SELECT needs one
        f"{_SKIP_TAKEN_INVOICE} RETURNING state"
    )


def insert_event(conn: Connection, event: Event) -> str | None:
    """Insert ``event`` in ``conn``'s transaction: the state it was stored in, or None
    when its invoice id is taken.

    It is stored pending, or blocked: a follow-up whose governing setup is dead.

    PostgreSQL listeners are notified at commit.
    """
    values: dict[str, Any] = dict(zip(COLUMNS, row_values(event)))
    dialect = conn.dialect.name
    if event.click_id is None:
        latest = latest_setup(event.customer_external_id)
        if dialect == "mysql":  # no subquery on the table being inserted into
            held = conn.execute(latest).scalar() == DEAD
            values["state"] = BLOCKED if held else PENDING  # known: no RETURNING either
        else:
            values["state"] = case((latest.scalar_subquery() == DEAD, BLOCKED), else_=PENDING)
    if dialect in ("sqlite", "postgresql"):
        statement = (
            _upsert(dialect)
            .values(values)
            .on_conflict_do_nothing(index_elements=["invoice_id"], index_where=HAS_INVOICE)
            .returning(events.c.state)
        )
        state = conn.execute(statement).scalar()
        if state is not None and dialect == "postgresql":  # delivered to listeners at commit
            conn.execute(NOTIFY)
        return str(state) if state is not None else None
    savepoint = conn.begin_nested()  # a failed INSERT must not abort the caller's work
    try:
        conn.execute(insert(events).values(values))
        savepoint.commit()
    except IntegrityError:  # the invoice id is taken; any other failure is raised
        savepoint.rollback()
        return None
    return str(values["state"])


def _upsert(dialect: str) -> Any:
    """The dialect's INSERT with ``on_conflict_do_nothing``: PostgreSQL's dialect is
    imported only by a process that uses it."""
    if dialect == "sqlite":
        return sqlite.insert(events)
    from sqlalchemy.dialects import postgresql

    return postgresql.insert(events)


def sqlite_insert(event: Event) -> tuple[str, bool]:
    """The SQLite statement that stores ``event``, and whether it returns the state stored
    (a follow-up's, pending or blocked); without, the event is stored pending."""
    if event.click_id is None:
        return sqlite_insert_follow_up(), True
    return SQLITE_INSERT, False


def row_values(event: Event) -> tuple[Any, ...]:
    """The values of ``COLUMNS`` for a new pending ``event``."""
    event_id, kind, customer, click_id, mode, invoice_id, payload, created_at = event
    return (
        event_id, kind, customer, click_id, mode, invoice_id, payload, PENDING, 0, created_at,
        created_at,
    )  # fmt: skip
