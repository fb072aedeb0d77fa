"""The HTTP side of the sandbox: a threaded HTTP/1.1 server and its request handler.

The handler knows the sandbox only as a ``Host`` (its ledger, its connections, its
sleep and its way down), so imports go one way: ``server`` -> ``handler`` -> ``state``.
"""

from __future__ import annotations

import json
import logging
import selectors
import socket
import socketserver
import struct
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import urlsplit

from cms_outbox.__version__ import __version__
from cms_outbox.sandbox.faults import faults_from_json
from cms_outbox.sandbox.limits import limits_from_json
from cms_outbox.sandbox.state import Ledger, Reply, error_reply

__all__ = ["Host", "SandboxHandler", "SandboxServer"]

logger = logging.getLogger(__name__)

TRACK_PATHS = {"/track/lead": "lead", "/track/sale": "sale"}
MAX_BODY = 1024 * 1024  # bytes; the service's events are a few hundred bytes
# Admin endpoints (no auth, not recorded in Sandbox.requests) and their methods.
ADMIN_ROUTES: dict[str, tuple[str, ...]] = {
    "/_admin/health": ("GET",),
    "/_admin/accepted": ("GET",),
    "/_admin/requests": ("GET",),
    "/_admin/faults": ("GET", "POST"),
    "/_admin/limits": ("GET", "POST"),
    "/_admin/reset": ("POST",),
    "/_admin/down": ("POST",),
}


class Host(Protocol):
    """What the handler needs of the sandbox it serves (``server.Sandbox`` is one)."""

    _ledger: Ledger

    @property
    def url(self) -> str: ...

    def _register(self, conn: socket.socket) -> None: ...

    def _unregister(self, conn: socket.socket) -> None: ...

    def _sleep(self, seconds: float) -> bool: ...

    def _go_down(self, seconds: float | None, keep: socket.socket | None) -> None: ...


class SandboxServer(ThreadingHTTPServer):
    daemon_threads = True  # a stalled handler must never keep the process alive
    allow_reuse_address = True  # up() rebinds the same port while old sockets linger
    request_queue_size = 1024  # a few hundred concurrent connections must not be refused
    timeout = 0  # handle_request() must not block: serve() has seen the socket ready

    def __init__(self, address: tuple[str, int], sandbox: Host) -> None:
        self.sandbox = sandbox
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        # Before binding: a bind that fails calls server_close(), which closes these too.
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        super().__init__(address, SandboxHandler)

    def serve(self) -> None:
        """Accept connections until ``stop_serving()``.

        Unlike ``serve_forever()``, which notices ``shutdown()`` only at its next poll,
        this wakes at once, so stop() and down() take milliseconds.
        """
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wakeup_r, selectors.EVENT_READ)
            while True:
                ready = selector.select()
                if any(key.fileobj is self._wakeup_r for key, _ in ready):
                    return
                self.handle_request()

    def stop_serving(self) -> None:
        self._wakeup_w.send(b"\0")

    def server_close(self) -> None:
        super().server_close()
        self._wakeup_r.close()
        self._wakeup_w.close()

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a DNS lookup that can take
        # seconds on a badly configured host; the name is never used here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out or vanish are part of the job; keep stderr quiet.
        logger.debug("sandbox: error while serving %s", client_address, exc_info=True)


class SandboxHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"cms-outbox-sandbox/{__version__}"
    disable_nagle_algorithm = True
    # Buffered writes: status line, headers and body leave in one send() at flush,
    # which both halves the syscalls and avoids the Nagle/delayed-ACK 40 ms stall.
    wbufsize = -1
    server: SandboxServer

    def version_string(self) -> str:
        return self.server_version  # without the stdlib's "Python/3.x" suffix

    def setup(self) -> None:
        super().setup()
        self.server.sandbox._register(self.connection)  # counted in Sandbox.connections

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.sandbox._unregister(self.connection)

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        finally:
            # The stdlib flushes only after a do_* method; its own error answers
            # (414, 501, malformed request line) would sit in our write buffer.
            try:
                self.wfile.flush()
            except OSError:
                self.close_connection = True

    def handle_expect_100(self) -> bool:
        accepted = super().handle_expect_100()
        self.wfile.flush()  # the client waits for "100 Continue" before sending the body
        return accepted

    def log_message(self, format: str, *args: Any) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("sandbox: %s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_OPTIONS(self) -> None:
        self._dispatch()

    # -- plumbing ------------------------------------------------------------------

    def _read_body(self) -> bytes | None:
        """The request body, or ``None`` when it cannot be framed (then we must close)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                line = self.rfile.readline(65537)
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    return None
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline(3)
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            size = int(length)
        except ValueError:
            return None
        if size < 0 or size > MAX_BODY:
            return None
        return self.rfile.read(size)

    def _send(self, reply: Reply, *, close: bool = False) -> bool:
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers:
                self.send_header(name, value)
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body)
            self.wfile.flush()
            return True
        except OSError:
            self.close_connection = True
            return False

    def _drop(self) -> None:
        """Close without an answer; SO_LINGER 0 makes it an RST, as a crashed peer would."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()  # the fd really closes with rfile/wfile in finish()
        except OSError:
            pass

    # -- routing -------------------------------------------------------------------

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        raw = self._read_body()
        unreadable = error_reply(400, "request body cannot be read (bad framing or too large)")
        if path.startswith("/_admin/"):
            if raw is None:
                self._send(unreadable, close=True)
            else:
                self._admin(path, raw)
            return
        sandbox = self.server.sandbox
        kind = TRACK_PATHS.get(path)
        key = self.headers.get("Idempotency-Key")
        customer = _customer_of(raw) if kind and raw else None
        slot = sandbox._ledger.arrive(path, kind, key, customer)
        if raw is None:
            # The connection cannot be kept in sync with an unframed body: answer, close.
            sandbox._ledger.settle(slot, unreadable.status, unreadable.error_type)
            self._send(unreadable, close=True)
            return
        if kind is None:
            reply = error_reply(404, f"no route for {path}")
        elif self.command != "POST":
            reply = error_reply(
                405, f"method {self.command} not allowed", headers=(("Allow", "POST"),)
            )
        else:
            answer = self._track(kind, key, raw)
            if answer is None:
                sandbox._ledger.settle(slot, None, None)
                self._drop()
                return
            reply = answer
        sandbox._ledger.settle(slot, reply.status, reply.error_type)
        self._send(reply)

    def _track(self, kind: str, key: str | None, raw: bytes) -> Reply | None:
        sandbox = self.server.sandbox
        faults = sandbox._ledger.faults
        if faults.reset:
            return None
        if faults.stall is not None and not sandbox._sleep(faults.stall):
            return None
        if faults.latency > 0 and not sandbox._sleep(faults.latency):
            return None
        if faults.redirect is not None:
            moved = error_reply(307, f"moved to {faults.redirect}", "redirect")
            return Reply(307, moved.body, (("Location", faults.redirect),), moved.error_type)
        return sandbox._ledger.decide(kind, self.headers.get("Authorization"), key, raw)

    def _admin(self, path: str, raw: bytes) -> None:
        sandbox = self.server.sandbox
        ledger = sandbox._ledger
        method = self.command
        allowed = ADMIN_ROUTES.get(path)
        if allowed is None:
            self._send(error_reply(404, f"no route for {path}"))
            return
        if method not in allowed:
            allow = (("Allow", ", ".join(allowed)),)
            self._send(error_reply(405, f"method {method} not allowed", headers=allow))
            return
        body: Any = None
        if method == "POST" and raw.strip():
            try:
                body = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                self._send(error_reply(400, "request body is not valid JSON"))
                return
        if path == "/_admin/health":
            self._send_json({"ok": True, "version": __version__, "url": sandbox.url})
        elif path == "/_admin/accepted":
            self._send_json({"accepted": [item.to_json() for item in ledger.accepted]})
        elif path == "/_admin/requests":
            self._send_json({"requests": [item.to_json() for item in ledger.requests]})
        elif path == "/_admin/faults":
            if method == "POST":
                try:
                    ledger.update_faults(lambda current: faults_from_json(current, body))
                except (TypeError, ValueError) as exc:
                    self._send(error_reply(400, str(exc)))
                    return
            self._send_json({"faults": ledger.faults.to_json()})
        elif path == "/_admin/limits":
            if method == "POST":
                try:
                    ledger.update_limits(lambda current: limits_from_json(current, body))
                except (TypeError, ValueError) as exc:
                    self._send(error_reply(400, str(exc)))
                    return
            self._send_json({"limits": ledger.limits.to_json()})
        elif path == "/_admin/reset":
            ledger.reset()
            self._send_json({"ok": True})
        else:
            self._admin_down(body)

    def _admin_down(self, body: Any) -> None:
        seconds = body.get("seconds") if isinstance(body, dict) else None
        valid = seconds is None or (
            isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds > 0
        )
        if body is not None and (not isinstance(body, dict) or set(body) - {"seconds"}):
            valid = False
        if not valid:
            self._send(error_reply(400, 'expected {"seconds": <number > 0>} or no body'))
            return
        # Go down first (keeping this connection) so that once the caller has the
        # answer, new connections are already refused.
        self.server.sandbox._go_down(seconds, keep=self.connection)
        self._send_json({"ok": True, "down": True, "seconds": seconds}, close=True)

    def _send_json(self, value: dict[str, Any], *, close: bool = False) -> None:
        self._send(Reply(200, json.dumps(value).encode()), close=close)


def _customer_of(raw: bytes) -> str | None:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if isinstance(value, dict) and isinstance(value.get("customerExternalId"), str):
        return str(value["customerExternalId"])
    return None
