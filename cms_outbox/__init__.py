"""cms_outbox: CutMeShort conversion tracking that survives outages, crashes and retries."""

from __future__ import annotations

from .__version__ import __version__
from .client import CMSClient
from .errors import (
    ClientClosed,
    ConfigurationError,
    EventNotFound,
    InvoiceConflict,
    OutboxError,
    SchemaError,
    StorageError,
    ValidationError,
)
from .results import EventState, FlushReport, TrackResult

__all__ = [
    "CMSClient",
    "ClientClosed",
    "ConfigurationError",
    "EventNotFound",
    "EventState",
    "FlushReport",
    "InvoiceConflict",
    "OutboxError",
    "SchemaError",
    "StorageError",
    "TrackResult",
    "ValidationError",
    "__version__",
]
