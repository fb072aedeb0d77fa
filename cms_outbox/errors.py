"""The exception tree: everything cms_outbox raises on purpose.

::

    OutboxError                         everything we raise on purpose
    ├── ValidationError(ValueError)     .field names the input; nothing was written
    │   └── InvoiceConflict             invoice_id stored for a different sale
    ├── ConfigurationError(ValueError)  a setting that cannot work
    ├── StorageError                    database failure; the driver error is __cause__
    │   ├── SchemaError                 database not at our Alembic head, or newer
    │   └── DirectoryNotFound           a SQLite outbox's directory does not exist
    ├── EventNotFound(LookupError)      unknown event_id, quoted in the message
    └── ClientClosed(RuntimeError)      misuse: called after close()

A rejected or failed delivery is not an exception: it is an outcome recorded in
the event's ``TrackResult`` and in the attempts table.
"""

from __future__ import annotations

__all__ = [
    "ClientClosed",
    "ConfigurationError",
    "DirectoryNotFound",
    "EventNotFound",
    "InvoiceConflict",
    "OutboxError",
    "SchemaError",
    "StorageError",
    "ValidationError",
]


class OutboxError(Exception):
    """Base class of every exception cms_outbox raises on purpose."""


class ValidationError(OutboxError, ValueError):
    """Raised by ``track_lead``/``track_sale`` for bad input; nothing was written."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class InvoiceConflict(ValidationError):
    """Raised by ``track_sale`` for an ``invoice_id`` stored with another customer, amount or
    currency: a sale is counted once per invoice, so the second one is a bug to see, not
    to hide. Nothing was written; ``stored_event_id`` is the sale already stored."""

    def __init__(self, invoice_id: str, differences: str, stored_event_id: str) -> None:
        super().__init__(
            "invoice_id",
            f"{invoice_id!r} is already stored for another sale ({differences}; stored event "
            f"{stored_event_id}): use a new invoice_id for a new sale",
        )
        self.invoice_id = invoice_id
        self.stored_event_id = stored_event_id


class ConfigurationError(OutboxError, ValueError):
    """Raised at construction for a setting that cannot work (e.g. http:// to a remote host)."""


class StorageError(OutboxError):
    """Raised when the database fails; the driver's exception is ``__cause__``."""


class SchemaError(StorageError):
    """Raised when the outbox tables are not at this version's Alembic head."""


class DirectoryNotFound(StorageError):
    """Raised when a SQLite outbox's directory does not exist and creating it was not asked
    for (``create_directories=True``): a mistyped path must not become a new, empty outbox."""


class EventNotFound(OutboxError, LookupError):
    """Raised for an ``event_id`` that is not in the outbox."""


class ClientClosed(OutboxError, RuntimeError):
    """Raised when a ``CMSClient`` is used after ``close()``."""
