"""The one-line stderr logging of ``cms-outbox`` and of a ``Daemon`` nobody configured."""

from __future__ import annotations

import logging
import sys

__all__ = ["log_outbox_to_stderr", "log_to_stderr", "logging_configured"]

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUIET = ("alembic", "apscheduler")  # their per-migration and per-pass INFO lines


def log_to_stderr(verbose: bool = False) -> None:
    """Log to stderr: INFO (DEBUG with ``verbose``); Alembic and APScheduler chatter muted.

    Does nothing to a root logger that already has handlers (``logging.basicConfig``).
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr, format=FORMAT
    )
    if not verbose:
        for name in QUIET:
            logging.getLogger(name).setLevel(logging.WARNING)


def log_outbox_to_stderr() -> None:
    """Give the ``cms_outbox`` logger alone a stderr handler at INFO, in the same format.

    For a library inside an application: its own loggers, the root logger and other
    libraries' levels stay as they are, so nothing of the application prints twice.
    """
    package = logging.getLogger(__name__.partition(".")[0])
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    package.addHandler(handler)
    if package.level == logging.NOTSET:
        package.setLevel(logging.INFO)


def logging_configured(name: str) -> bool:
    """Whether the application gave logger ``name`` or any of its parents a handler."""
    return logging.getLogger(name).hasHandlers()
