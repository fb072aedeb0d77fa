"""``OutboxReader``: a read-only view of one outbox, for the commands that only look.

``status``, ``health``, ``events`` and ``show`` need an engine and the reports, nothing
more: no flusher wiring, no migration, no token, no enqueue connection. The reader
checks that the tables are at this version's schema (it never migrates) and every read
runs in a read transaction that never waits for a writer.
"""

from __future__ import annotations

from sqlalchemy import Engine

from . import database, migrate
from .status import (
    EventDetail,
    EventSummary,
    OutboxStatus,
    event_detail,
    list_events,
    resolve_event_id,
)
from .status import outbox_status as _outbox_status

__all__ = ["OutboxReader"]


class OutboxReader:
    """Reads one outbox; ``close()`` disposes of the engine it created (idempotent).

    :raises ConfigurationError: a database URL that cannot work.
    :raises SchemaError: the tables are not at this version's schema (nothing is created).
    :raises StorageError: the database failed.
    """

    def __init__(self, database_url: str) -> None:
        self.engine: Engine = database.create(database_url, create=False, writable=False)
        try:
            migrate.ensure_schema(self.engine, auto_migrate=False)
        except BaseException:
            self.engine.dispose()
            raise

    def __enter__(self) -> OutboxReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.engine.dispose()

    def status(self, now: float | None = None) -> OutboxStatus:
        """Counts by state, oldest pending event, last delivery and error, the pause."""
        return _outbox_status(self.engine, now)

    def events(
        self,
        *,
        state: str | None = None,
        customer: str | None = None,
        kind: str | None = None,
        limit: int = 50,
        oldest_first: bool = False,
    ) -> list[EventSummary]:
        """Stored events, newest first (or oldest first), filtered."""
        return list_events(
            self.engine, state=state, customer=customer, kind=kind, limit=limit,
            oldest_first=oldest_first,
        )  # fmt: skip

    def event(self, event_id: str) -> EventDetail:
        """One event with its payload and attempt history; ``event_id`` may be a unique prefix.

        :raises EventNotFound: no such event in the outbox.
        :raises ValidationError: the prefix of several event ids (listed in the message).
        """
        return event_detail(self.engine, self.resolve(event_id))

    def resolve(self, event_id: str) -> str:
        """The stored event id that is ``event_id`` or the only one that starts with it.

        :raises EventNotFound: no such event in the outbox.
        :raises ValidationError: the prefix of several event ids (listed in the message).
        """
        return resolve_event_id(self.engine, event_id)
