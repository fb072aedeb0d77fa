"""Heartbeats: every flusher, an in-process client's or a daemon's, says it is alive.

A flusher records its host, pid, start, last beat and version in ``cms_outbox_flushers``
at its first pass and then at most every ``EVERY`` seconds, and removes its row when it
stops. An idle outbox must write next to nothing (every SQLite commit appends a page to
the WAL), so a beat is one small row once a minute; ``status`` calls a flusher live while
its last beat is younger than ``STALE_AFTER``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Callable

from .__version__ import __version__
from .errors import OutboxError

if TYPE_CHECKING:
    from .store import Store

__all__ = ["EVERY", "STALE_AFTER", "Heartbeat"]

logger = logging.getLogger(__name__)

EVERY = 60.0  # seconds between beats: ten small writes in ten idle minutes
STALE_AFTER = 3 * EVERY  # no beat for this long: the flusher is gone


class Heartbeat:
    """Beats for one flusher; ``beat()`` is cheap to call on every pass."""

    def __init__(
        self,
        store: Store,
        owner: Callable[[], str],
        *,
        kind: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """:param owner: the flusher's lease owner token (a forked child gets a new one)."""
        self._store = store
        self._owner = owner
        self._kind = kind
        self._clock = clock
        self._pid = -1
        self._started = 0.0
        self._last = float("-inf")
        self._recorded: str | None = None

    def beat(self) -> None:
        """Record a beat if the last is ``EVERY`` seconds old (or this process never beat)."""
        now = self._clock()
        if os.getpid() != self._pid:  # first beat, or a forked child: a flusher of its own
            self._pid, self._started, self._last = os.getpid(), now, float("-inf")
        if now - self._last < EVERY:
            return
        owner = self._owner()
        try:
            self._store.beat(
                {"owner": owner, "kind": self._kind, "host": socket.gethostname()[:255],
                 "pid": self._pid, "version": __version__, "started_at": self._started,
                 "beat_at": now}
            )  # fmt: skip
        except OutboxError as exc:  # the pass reports the database's state; do not add noise
            logger.debug("heartbeat not recorded: %s", exc)
            return
        self._last, self._recorded = now, owner

    def stop(self) -> None:
        """Remove this flusher's row (a crash leaves it to go stale instead)."""
        owner, self._recorded = self._recorded, None
        if owner is None or os.getpid() != self._pid:
            return
        try:
            self._store.forget_flusher(owner)
        except OutboxError as exc:
            logger.debug("heartbeat row not removed: %s", exc)
