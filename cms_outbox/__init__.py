"""cms_outbox: CutMeShort conversion tracking that survives outages, crashes and retries."""

from __future__ import annotations

from .__version__ import __version__
from .client import CMSClient
from .daemon import Daemon
from .errors import (
    ClientClosed,
    ConfigurationError,
    DirectoryNotFound,
    EventNotFound,
    InvoiceConflict,
    OutboxError,
    SchemaError,
    StorageError,
    ValidationError,
)
from .results import EventState, FlushReport, TrackResult
from .status import Stats

__all__ = [
    "CMSClient",
    "ClientClosed",
    "ConfigurationError",
    "Daemon",
    "DirectoryNotFound",
    "EventNotFound",
    "EventState",
    "FlushReport",
    "InvoiceConflict",
    "OutboxError",
    "SchemaError",
    "Stats",
    "StorageError",
    "TrackResult",
    "ValidationError",
    "__version__",
]
