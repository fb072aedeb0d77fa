"""A gate that ``fork()`` closes, so that no thread of ours is inside SQLite when it forks.

SQLite keeps process-wide mutexes (its allocator's, its registry of open files). A child
forked while another thread holds one inherits it locked, with no thread left to unlock
it, and hangs at its first connect; its parent then waits for it for ever. Every read
and write transaction of the store on SQLite passes this gate (``guarding``); the fork
hook waits until no thread is inside and keeps new ones out until the fork is done.
Other databases keep no such mutexes in this process: their transactions pass freely.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["GATE", "ForkGate", "guarding"]


class ForkGate:
    """Any number of threads pass at once; ``close()`` waits for them to leave."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        # Reentrant: a signal handler may pass the gate while its thread is updating it.
        self._changed = threading.Condition(threading.RLock())
        self._inside = 0
        self._closed = False
        self._depth = threading.local()  # a thread already inside passes again at once

    @contextmanager
    def passing(self) -> Iterator[None]:
        """Hold the gate open for this thread while it uses the database."""
        depth: int = getattr(self._depth, "n", 0)
        if not depth:
            with self._changed:
                self._changed.wait_for(lambda: not self._closed)
                self._inside += 1
        self._depth.n = depth + 1
        try:
            yield
        finally:
            self._depth.n = depth
            if not depth:
                with self._changed:
                    self._inside -= 1
                    self._changed.notify_all()

    def close(self, timeout: float) -> bool:
        """Keep new threads out and wait up to ``timeout`` seconds for those inside to leave
        (the calling thread's own passage aside); whether they all left."""
        own = 1 if getattr(self._depth, "n", 0) else 0
        with self._changed:
            self._closed = True
            return self._changed.wait_for(lambda: self._inside <= own, timeout)

    def reopen(self) -> None:
        with self._changed:
            self._closed = False
            self._changed.notify_all()

    def after_fork_in_child(self) -> None:
        """The threads that were inside are gone with the parent's: start afresh."""
        self._reset()


GATE = ForkGate()


def guarding(engine: Engine) -> AbstractContextManager[None]:
    """The gate for a transaction on ``engine``: only SQLite's need it."""
    return GATE.passing() if engine.dialect.name == "sqlite" else nullcontext()
