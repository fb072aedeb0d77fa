"""Insert an event through Django's own cursor, inside the current ``atomic()`` block.

No SQLAlchemy connection takes part: the event is one more statement of the
application's transaction, so it commits or rolls back with the user's rows.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Callable

from django.db import DatabaseError, IntegrityError, transaction
from sqlalchemy import bindparam
from sqlalchemy.dialects import mysql, postgresql, sqlite

from ..errors import StorageError, ValidationError
from ..events import Event
from ..inserting import COLUMNS, latest_setup, row_values
from ..queries import BLOCKED, DEAD
from ..results import EventState
from ..schema import NOTIFY_CHANNEL, events
from ..store import Stored

__all__ = ["insert_event"]

_INSERT = (
    f"INSERT INTO {events.name} ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"
)
_ON_CONFLICT = " ON CONFLICT (invoice_id) WHERE invoice_id IS NOT NULL DO NOTHING"
_COLUMNS = ", ".join(column.name for column in events.columns)
_STORED_SALE = f"SELECT {_COLUMNS} FROM {events.name} WHERE invoice_id = %s"
_STATE = COLUMNS.index("state")
# Django's cursors take "%s" placeholders on every backend (its SQLite one rewrites them).
_DIALECTS = {"sqlite": sqlite.dialect, "postgresql": postgresql.dialect, "mysql": mysql.dialect}


@cache
def _latest_setup(vendor: str) -> tuple[str, tuple[Any, ...], int]:
    """``inserting.latest_setup`` compiled for Django's ``vendor``: its SQL, its positional
    parameters, and where among them the customer goes."""
    compiled = latest_setup(bindparam("customer")).compile(
        dialect=_DIALECTS[vendor](paramstyle="format")
    )
    names = compiled.positiontup or []
    return str(compiled), tuple(compiled.params[name] for name in names), names.index("customer")


def insert_event(
    connection: Any, event: Event, stored_sale: Callable[[Event], dict[str, Any]]
) -> Stored:
    """Store ``event`` in ``connection``'s open ``atomic()`` block.

    :param stored_sale: reads the sale stored with ``event``'s invoice id on a connection
        of its own, when it was committed after this transaction's snapshot.

    :returns: the state it was stored in (pending, or blocked: a follow-up whose governing
        setup is dead), or the sale already stored with its ``invoice_id`` (nothing was
        written).
    :raises ValidationError: ``connection`` is in autocommit mode: the event would commit
        on its own, not with the application's work.
    :raises StorageError: the database failed.
    """
    if not connection.in_atomic_block:
        raise ValidationError(
            "connection",
            "Django's connection is not inside transaction.atomic(): the event would commit "
            "on its own, apart from your changes. Call track_* inside the atomic() block, or "
            "leave out connection= to store the event in a transaction of its own",
        )
    vendor = connection.vendor
    values = list(row_values(event))
    try:
        with connection.cursor() as cursor:
            if event.click_id is None:
                # A follow-up (no click id) whose customer's governing setup is dead is
                # stored blocked, as on every other path (a setup committing concurrently
                # is caught by the lease).
                sql, constants, customer_at = _latest_setup(vendor)
                params = list(constants)
                params[customer_at] = event.customer_external_id
                cursor.execute(sql, params)
                setup = cursor.fetchone()
                if setup is not None and setup[0] == DEAD:
                    values[_STATE] = BLOCKED
            if vendor in ("postgresql", "sqlite"):
                cursor.execute(_INSERT + _ON_CONFLICT, values)
                stored = cursor.rowcount == 1
                if stored and vendor == "postgresql":  # delivered to listeners at commit
                    cursor.execute(f"NOTIFY {NOTIFY_CHANNEL}")
            else:
                try:
                    with transaction.atomic(using=connection.alias):  # a savepoint
                        cursor.execute(_INSERT, values)
                    stored = True
                except IntegrityError:  # the invoice id is taken
                    stored = False
            if stored:
                return Stored(EventState(values[_STATE]))
            # A plain read: a locking one would hold the stored sale (on MySQL) to the end
            # of the transaction, for the flusher's record of it to wait for.
            cursor.execute(_STORED_SALE, [event.invoice_id])
            row = cursor.fetchone()
            names = [column[0] for column in cursor.description]
    except DatabaseError as exc:
        raise StorageError(
            f"storing the event in Django's transaction failed ({type(exc).__name__}; "
            "the driver's error is chained)"
        ) from exc
    if row is None:  # committed after this transaction's snapshot (REPEATABLE READ)
        return Stored.found(stored_sale(event))
    return Stored.found(dict(zip(names, row)))
