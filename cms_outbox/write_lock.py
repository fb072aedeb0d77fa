"""A queue for SQLite's single write lock, shared by every writer of an outbox file.

A writer that finds SQLite's lock taken sleeps in the busy handler (1, 2, 5, 10 ...
ms) and retries blind: it may sleep long after the lock was freed while newcomers
take it first, which is where the enqueue tail came from. Taking an ``flock`` on a
sidecar file (``<database>-lock``) before ``BEGIN IMMEDIATE`` makes waiters block in
the kernel and wake the moment the holder lets go. SQLite's own lock still decides:
a writer that does not take the file lock (an application's transaction) is waited
for under the busy timeout as before.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading

__all__ = ["WriteLock", "sidecar_path"]

logger = logging.getLogger(__name__)
_reported: set[str] = set()  # lock files that could not be opened, warned about once
# Bumped in every forked child: a lock last used before the fork is the parent's. (Cheaper
# than asking for the pid, a system call, on every enqueue.)
_forks = 0


def _forked() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_forked)


def sidecar_path(database: str) -> str:
    return os.path.abspath(database) + "-lock"


class WriteLock:
    """Held around a write transaction: one holder at a time across threads and processes.

    Each instance has its own open file, so two instances exclude each other even in
    one process; the threads sharing an instance queue on a thread lock first. If the
    file cannot be opened, writers go on without it (a warning, once per file).
    """

    def __init__(self, database: str) -> None:
        self.path = sidecar_path(database)
        self._forks = -1
        self._fd: int | None = None
        self._unavailable = False
        self._threads = threading.Lock()

    def __enter__(self) -> None:
        if self._forks != _forks:
            self._forget()
        self._threads.acquire()
        try:
            fd = self._fd if self._fd is not None else self._open()
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:  # e.g. a signal handler's SystemExit right after the flock
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)  # a no-op unless it was taken
            self._threads.release()
            raise

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def before_fork(self, timeout: float) -> bool:
        """Wait for this process's write under way and keep new ones from starting: a
        child forked mid-write inherits SQLite's view of a lock that no process holds."""
        if self._forks != _forks:
            self._forget()
        return self._threads.acquire(timeout=timeout)

    def after_fork_in_parent(self) -> None:
        self._threads.release()

    def after_fork_in_child(self) -> None:
        self._forget()

    def close(self) -> None:
        with self._threads:
            fd, self._fd = self._fd, None
            if fd is not None and self._forks == _forks:
                os.close(fd)

    def _forget(self) -> None:
        # A forked child shares the parent's open file, and so its lock: it needs its
        # own (and a fresh thread lock, which another thread may have held at the fork).
        # Closing the inherited copy leaves the parent's lock alone; only LOCK_UN frees it.
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._unavailable = False
        self._threads = threading.Lock()
        self._forks = _forks

    def _open(self) -> int | None:
        if self._unavailable:
            return None
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            # Only the fair hand-off is lost: SQLite's busy timeout still serialises writers.
            if self.path not in _reported:
                _reported.add(self.path)
                logger.warning("writers queue without the lock file %s: %s", self.path, exc)
            self._unavailable = True
        return self._fd
