"""The HTTP transport (``cms_outbox.transport``) against a recording server on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cms_outbox import ConfigurationError, __version__
from cms_outbox.transport import Transport


class Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    seen: list[dict[str, Any]]
    status = 200

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append(
            {"path": self.path, "headers": dict(self.headers), "body": body,
             "peer": self.client_address}
        )  # fmt: skip
        answer = json.dumps({"success": True}).encode()
        self.send_response(self.status)
        if self.status == 307:
            self.send_header("Location", "/elsewhere")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    handler = type("Handler", (Recorder,), {"seen": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def url(httpd: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}"


def test_each_post_carries_the_documented_headers_and_exact_body(
    server: ThreadingHTTPServer,
) -> None:
    transport = Transport(url(server), "secret-token")
    payload = '{"eventName":"café","customerExternalId":"ü"}'
    first = transport.send("lead", "key-1", payload)
    second = transport.send("sale", "key-2", payload)
    transport.close()
    seen = server.RequestHandlerClass.seen  # type: ignore[attr-defined]
    assert (first.status_code, second.status_code) == (200, 200)
    assert json.loads(first.body or "") == {"success": True}
    assert [request["path"] for request in seen] == ["/track/lead", "/track/sale"]
    for request, key in zip(seen, ["key-1", "key-2"]):
        headers = request["headers"]
        assert headers["Authorization"] == "Bearer secret-token"
        assert headers["Content-Type"] == "application/json"
        assert headers["Accept"] == "application/json"
        assert headers["User-Agent"] == f"cms-outbox/{__version__}"
        assert headers["Idempotency-Key"] == key
        assert request["body"] == payload.encode("utf-8")
        assert headers["Content-Length"] == str(len(payload.encode("utf-8")))
    assert seen[0]["peer"] == seen[1]["peer"]  # one kept-alive connection


def test_a_redirect_is_answered_not_followed(server: ThreadingHTTPServer) -> None:
    server.RequestHandlerClass.status = 307  # type: ignore[attr-defined]
    reply = Transport(url(server), "t").send("lead", "key", "{}")
    assert reply.status_code == 307
    assert len(server.RequestHandlerClass.seen) == 1  # type: ignore[attr-defined]


def test_a_reply_starts_on_the_injected_clock(server: ThreadingHTTPServer) -> None:
    """Backoffs and pauses are counted from the reply's start: on the flusher's clock."""
    reply = Transport(url(server), "t", clock=lambda: 1_000_000.0).send("lead", "key", "{}")
    assert reply.status_code == 200
    assert reply.started_at == 1_000_000.0 and reply.finished_at >= reply.started_at


def test_a_host_requests_cannot_use_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="not a usable URL"):
        Transport("https://\u2603.example", "t")
