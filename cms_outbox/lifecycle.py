"""The process-wide registry of open clients: closed at interpreter exit, mended after fork.

One set of hooks for every client of the process, installed with the first one. Clients
are held weakly: a client that is garbage-collected needs no closing here.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from typing import Protocol

from .fork_gate import GATE

__all__ = ["Managed", "register"]

logger = logging.getLogger(__name__)

# Seconds fork() waits for reads under way to leave SQLite (writes were waited for first).
_GATE_TIMEOUT = 10.0


class Managed(Protocol):
    """What the registry needs of a client."""

    def close(self) -> None: ...

    def _before_fork(self) -> None: ...

    def _after_fork_in_parent(self) -> None: ...

    def _after_fork_in_child(self) -> None: ...


_clients: weakref.WeakSet[Managed] = weakref.WeakSet()
_lock = threading.Lock()
_installed = False


def register(client: Managed) -> None:
    """Close ``client`` at interpreter exit; give a forked child a working copy of it."""
    global _installed
    with _lock:
        _clients.add(client)
        if _installed:
            return
        _installed = True
    # threading's exit hooks run before concurrent.futures stops accepting work (and
    # before atexit's), so the final flush can still use the worker pool.
    register_at_exit = getattr(threading, "_register_atexit", atexit.register)
    register_at_exit(_close_all)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(
            before=_before_fork,
            after_in_parent=_after_fork_in_parent,
            after_in_child=_after_fork_in_child,
        )


def _open_clients() -> list[Managed]:
    with _lock:
        return list(_clients)


def _close_all() -> None:
    for client in _open_clients():
        try:
            client.close()
        except Exception as exc:  # at exit a traceback helps no one; say what failed
            logger.warning("closing %r at exit failed: %s", client, exc)
            logger.debug("closing %r at exit failed", client, exc_info=True)


def _before_fork() -> None:
    # The clients first: their passes and writes must pass the gate on their way out.
    for client in _open_clients():
        client._before_fork()
    if not GATE.close(_GATE_TIMEOUT):
        logger.warning("forking while a read is still inside SQLite: the child may hang")


def _after_fork_in_parent() -> None:
    GATE.reopen()
    for client in _open_clients():
        client._after_fork_in_parent()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at the fork
    GATE.after_fork_in_child()
    for client in list(_clients):
        client._after_fork_in_child()
