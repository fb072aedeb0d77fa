"""The sandbox's lifecycle (start, stop, down, up), its Python API, and ``run``."""

from __future__ import annotations

import dataclasses
import errno
import logging
import signal
import socket
import threading
import time
from types import FrameType, TracebackType
from typing import Any, Callable, Union

from cms_outbox.sandbox.faults import Faults
from cms_outbox.sandbox.handler import SandboxServer
from cms_outbox.sandbox.limits import Limits
from cms_outbox.sandbox.state import Accepted, Ledger, RequestRecord

__all__ = ["Sandbox", "run"]

logger = logging.getLogger(__name__)


class Sandbox:
    """A local CMS-compatible API server with fault injection.

    ``POST /track/lead`` and ``POST /track/sale`` behave as DESIGN.md section 1
    describes; ``/_admin/*`` endpoints (no auth) expose the state to other processes.
    Everything is thread-safe.

    :param token: the bearer token requests must carry.
    :param host: interface to listen on.
    :param port: ``0`` picks a free port at ``start()``; it then stays the same
        across ``down()``/``up()`` and restarts.
    :param rate_limit: requests per minute (a sliding 60 s window, advertised in the
        IETF draft's headers); ``None``/``0`` = off. ``limits`` says more.
    :param limits: the rate limit in full: quota, window, accounting, headers; it can
        change while running (``set_limits``, ``POST /_admin/limits``).
    :param latency: baseline ``Faults.latency``; ``clear_faults()``/``reset()`` return
        the faults to ``Faults(latency=latency)``.
    :param seed: seed of the RNG behind ``Faults.error_rate`` (reseeded by ``reset()``).
    :param clock: epoch seconds for the rate limit's windows (tests pass their own).
    """

    def __init__(
        self,
        token: str = "test-token",
        host: str = "127.0.0.1",
        port: int = 0,
        rate_limit: int | None = None,
        latency: float = 0.0,
        *,
        limits: Limits | None = None,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if rate_limit is not None and (isinstance(rate_limit, bool) or rate_limit < 0):
            raise ValueError(f"rate_limit must be None or an int >= 0, got {rate_limit!r}")
        if limits is None:
            limits = Limits(rate_limit or 0)
        self.token = token
        self.host = host
        self._port = port
        self._ledger = Ledger(token, limits, Faults(latency=latency), seed, clock)
        self._lifecycle = threading.RLock()
        self._server: SandboxServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._opened = 0  # connections accepted since start (keep-alive shows as few)
        self._closing = False
        self._running = False
        self._down = False
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._up_timer: threading.Timer | None = None
        self._listened = False  # a port of our own, which our last socket may still hold

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> Sandbox:
        """Listen and serve in a daemon thread; returns once connections are accepted."""
        with self._lifecycle:
            if self._running:
                return self
            self._listen()
            self._running = True
            self._down = False
            self._stopped.clear()
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections and cut stalls short. Idempotent."""
        with self._lifecycle:
            self._cancel_timer()
            if self._running and not self._down:
                self._unlisten(keep=None)
            self._wake.set()
            self._running = False
            self._down = False
            self._stopped.set()

    def down(self, seconds: float | None = None) -> None:
        """Refuse new connections (listening socket closed) and close open ones.

        :param seconds: come back up by itself after this many seconds.
        """
        self._go_down(seconds, keep=None)

    def up(self) -> None:
        """Listen again on the same port after ``down()``; no-op when already up."""
        with self._lifecycle:
            self._cancel_timer()
            if not self._running or not self._down:
                return
            self._listen()
            self._down = False

    @property
    def is_down(self) -> bool:
        return self._down

    @property
    def is_running(self) -> bool:
        return self._running

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._port}"

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "down" if self._down else "running" if self._running else "stopped"
        return f"<Sandbox {self.url} {state}>"

    # -- state ---------------------------------------------------------------------

    @property
    def accepted(self) -> list[Accepted]:
        """Accepted events, in acceptance order (a copy)."""
        return self._ledger.accepted

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request received on a non-admin path, in arrival order (a copy)."""
        return self._ledger.requests

    @property
    def connections(self) -> int:
        """TCP connections accepted since the sandbox was built (``reset()`` zeroes it):
        a client that keeps its connections alive opens few, whatever it sends."""
        with self._ledger.lock:
            return self._opened

    def accepted_count(self, idempotency_key: str) -> int:
        """How many times the event with this Idempotency-Key was accepted."""
        return self._ledger.accepted_count(idempotency_key)

    def reset(self) -> None:
        """Forget requests, acceptances, associations, the rate window and the count of
        connections; clear faults."""
        self._ledger.reset()
        with self._ledger.lock:
            self._opened = 0

    @property
    def faults(self) -> Faults:
        return self._ledger.faults

    def set_faults(self, **changes: Any) -> Faults:
        """Update some fault fields; returns the new ``Faults``.

        :raises TypeError: unknown field.
        :raises ValueError: invalid value.
        """
        return self._ledger.update_faults(lambda current: dataclasses.replace(current, **changes))

    def clear_faults(self) -> None:
        self._ledger.clear_faults()

    @property
    def limits(self) -> Limits:
        return self._ledger.limits

    def set_limits(self, **changes: Any) -> Limits:
        """Change some rate-limit fields while running; returns the new ``Limits``.

        :raises TypeError: unknown field.
        :raises ValueError: invalid value.
        """
        return self._ledger.update_limits(lambda current: dataclasses.replace(current, **changes))

    def wait_for(self, predicate: Callable[[Sandbox], object], timeout: float = 10.0) -> bool:
        """Poll ``predicate(self)`` until it is true (``True``) or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    # -- internals -----------------------------------------------------------------

    def _listen(self) -> None:
        deadline = time.monotonic() + 5.0
        while True:
            try:
                server = SandboxServer((self.host, self._port), self)
                break
            except OSError as exc:
                # After down(), our own port can be briefly busy; a port someone else
                # holds (the first listen) or port 0 is never retried.
                if not self._listened or self._port == 0 or exc.errno != errno.EADDRINUSE:
                    raise
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)
        self._port = int(server.server_address[1])
        self._listened = True
        with self._ledger.lock:
            self._closing = False
        self._wake = threading.Event()
        thread = threading.Thread(
            target=server.serve,
            name=f"cms-sandbox-{self._port}",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread

    def _unlisten(self, keep: socket.socket | None) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        self._wake.set()
        with self._ledger.lock:
            self._closing = True
            connections = [conn for conn in self._connections if conn is not keep]
        if server is not None:
            server.stop_serving()
        if thread is not None:
            thread.join(timeout=5.0)
        if server is not None:
            server.server_close()
        for conn in connections:
            _shutdown(conn)

    def _go_down(self, seconds: float | None, keep: socket.socket | None) -> None:
        with self._lifecycle:
            if not self._running:
                return
            self._cancel_timer()
            if not self._down:
                self._unlisten(keep)
                self._down = True
            if seconds is not None:
                timer = threading.Timer(seconds, self.up)
                timer.daemon = True
                self._up_timer = timer
                timer.start()

    def _cancel_timer(self) -> None:
        if self._up_timer is not None and self._up_timer is not threading.current_thread():
            self._up_timer.cancel()
        self._up_timer = None

    def _register(self, conn: socket.socket) -> None:
        with self._ledger.lock:
            closing = self._closing
            if not closing:
                self._connections.add(conn)
                self._opened += 1
        if closing:
            _shutdown(conn)  # accepted in the instant before down()/stop()

    def _unregister(self, conn: socket.socket) -> None:
        with self._ledger.lock:
            self._connections.discard(conn)

    def _sleep(self, seconds: float) -> bool:
        """Sleep; ``False`` when cut short because the sandbox stopped or went down."""
        return not self._wake.wait(seconds)


def _shutdown(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)  # wakes the handler blocked in recv()
    except OSError:
        pass


ENDPOINTS = "POST /track/lead and /track/sale, admin at /_admin/"
Ready = Union[threading.Event, Callable[[Sandbox], object], None]


def run(
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str = "test-token",
    rate_limit: int | None = None,
    latency: float = 0.0,
    ready: Ready = None,
    *,
    limits: Limits | None = None,
) -> None:
    """Serve a sandbox until KeyboardInterrupt, SIGTERM or ``Sandbox.stop()``.

    :param ready: called with the started ``Sandbox`` (or, for a
        ``threading.Event``, set) once it accepts connections. A callable says where it
        listens itself (``cms-outbox sandbox`` prints it); otherwise one INFO line does.
    """
    sandbox = Sandbox(
        token=token, host=host, port=port, rate_limit=rate_limit, latency=latency, limits=limits
    )
    terminated: list[int] = []
    previous: Any = None
    in_main = threading.current_thread() is threading.main_thread()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        # Only a flag (no lock: the handler may interrupt the main thread holding one);
        # the loop below notices it within one wait.
        terminated.append(signum)

    sandbox.start()
    try:
        if in_main:
            previous = signal.signal(signal.SIGTERM, on_sigterm)
        if callable(ready):
            ready(sandbox)
        else:
            logger.info("CMS sandbox listening on %s (%s)", sandbox.url, ENDPOINTS)
            if ready is not None:
                ready.set()
        while not terminated and not sandbox._stopped.wait(0.2):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
        if in_main and previous is not None:
            signal.signal(signal.SIGTERM, previous)
        logger.debug("CMS sandbox on %s stopped", sandbox.url)
