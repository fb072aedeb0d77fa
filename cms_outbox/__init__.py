"""cms_outbox: CutMeShort conversion tracking that survives outages, crashes and retries."""

from __future__ import annotations

import importlib
import typing

from .__version__ import __version__
from .client import CMSClient
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

if typing.TYPE_CHECKING:
    from .daemon import Daemon
    from .status import Stats

_LAZY = {"Daemon": "daemon", "Stats": "status"}  # a short script needs neither


def __getattr__(name: str) -> typing.Any:
    """Load the daemon and the reporting package on first use (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
