"""The HTTP transport (``cms_outbox.transport``) against a recording server and the sandbox,
on loopback."""

from __future__ import annotations

import json
import select
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cms_outbox import CMSClient, ConfigurationError, __version__
from cms_outbox.sandbox import Sandbox
from cms_outbox.transport import Transport
from tests.conftest import TOKEN, FakeClock, returns


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


# -- against the sandbox: timeouts, keep-alive, redirects and proxies ---------------------

LEAD = json.dumps({"eventName": "signup", "customerExternalId": "user_1", "clickId": "c_1"})
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


@pytest.fixture
def service() -> Iterator[Sandbox]:
    with Sandbox(token=TOKEN) as sandbox:
        yield sandbox


def lead(n: int) -> str:
    return json.dumps({"eventName": "signup", "customerExternalId": f"user_{n}", "clickId": "c"})


def test_an_answer_held_past_the_read_timeout_comes_back_as_a_timeout(service: Sandbox) -> None:
    """The service holds its answer far longer than the read timeout: the send gives up by
    itself, with the request still held at the service, and the next one gets through on a
    fresh connection (the timed-out one is never reused)."""
    service.set_faults(stall=300.0)
    transport = Transport(service.url, TOKEN, read_timeout=0.2)
    reply = returns(lambda: transport.send("lead", "key-1", LEAD))
    assert (reply.status_code, reply.body) == (None, None)
    assert reply.error == "ReadTimeout: no answer within the timeout"
    [held] = service.requests
    assert held.status is None  # still held by the service: the client did not wait it out
    service.clear_faults()
    assert transport.send("lead", "key-1", LEAD).status_code == 200
    assert service.connections == 2
    transport.close()


def test_one_sender_sends_every_request_on_one_kept_alive_connection(service: Sandbox) -> None:
    transport = Transport(service.url, TOKEN)
    replies = [transport.send("lead", f"key-{n}", lead(n)) for n in range(10)]
    transport.close()
    assert [reply.status_code for reply in replies] == [200] * 10
    assert (len(service.accepted), service.connections) == (10, 1)


def test_each_worker_keeps_its_connection_across_requests_and_passes(
    service: Sandbox, sqlite_url: str
) -> None:
    """Counted where it shows: at the server. Two flushes of 24 events each by 4 workers
    open at most one connection per worker, not one per request or per pass."""
    workers = 4
    with CMSClient(
        token=TOKEN, host=service.url, database_url=sqlite_url, flush="off", rate_limit=None,
        workers=workers,
    ) as client:  # fmt: skip
        for round_ in range(2):
            for n in range(24):
                client.track_lead("signup", f"user_{round_}_{n}", click_id="c")
            assert client.flush().delivered == 24
    assert len(service.accepted) == 48
    assert 1 <= service.connections <= workers


def test_a_redirect_is_an_answer_and_the_token_goes_nowhere_else(
    service: Sandbox, sqlite_url: str
) -> None:
    with Sandbox(token=TOKEN) as elsewhere:
        service.set_faults(redirect=f"{elsewhere.url}/track/lead")
        reply = Transport(service.url, TOKEN).send("lead", "key", LEAD)
        assert reply.status_code == 307
        service.set_faults(redirect="/track/sale")  # on the same host: not followed either
        assert Transport(service.url, TOKEN).send("lead", "key", LEAD).status_code == 307
        with CMSClient(
            token=TOKEN, host=service.url, database_url=sqlite_url, flush="off", rate_limit=None,
            clock=FakeClock(),  # stands still: the retry never comes due within the flush
        ) as client:  # fmt: skip
            event = client.track_lead("signup", "user_1", click_id="c_1")
            assert client.flush().retried == 1  # not delivered: retried later, not dead
            assert client.result(event.event_id).state.value == "pending"
        assert (elsewhere.requests, elsewhere.connections) == ([], 0)
    assert [request.path for request in service.requests] == ["/track/lead"] * 3


def test_proxy_settings_in_the_environment_are_not_used(
    service: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that carries a token talks to its host only, whatever the environment says."""
    with Sandbox(token=TOKEN) as proxy:
        for name in PROXY_VARIABLES:
            monkeypatch.setenv(name, proxy.url)
            monkeypatch.setenv(name.lower(), proxy.url)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        transport = Transport(service.url, TOKEN)
        assert transport.send("lead", "key", LEAD).status_code == 200
        transport.close()
        assert (proxy.requests, proxy.connections) == ([], 0)
    assert len(service.accepted) == 1


def test_a_connect_that_hangs_times_out_at_the_connect_timeout_and_is_retried(
    service: Sandbox, sqlite_url: str
) -> None:
    """Loopback only: the service's port is taken over by a socket whose accept queue is
    full (backlog 0, one connection waiting in it), so Linux drops every further SYN and
    a connect hangs. The flusher gives up at its connect timeout, records a retryable
    attempt, and delivers once the service listens there again."""
    port = int(service.url.rsplit(":", 1)[1])
    service.down()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(0)  # room for one connection waiting to be accepted
    filler = socket.create_connection(("127.0.0.1", port), timeout=60)
    ready, _, _ = select.select([listener], [], [], 60)  # it waits in the accept queue
    assert ready == [listener]
    try:
        with CMSClient(
            token=TOKEN, host=service.url, database_url=sqlite_url, flush="off", rate_limit=None,
            connect_timeout=0.5, read_timeout=5.0,
        ) as client:  # fmt: skip
            event = client.track_lead("signup", "user_1", click_id="c_1")
            report = returns(client.flush)
            assert (report.delivered, report.pending, report.paused) == (0, 1, "outage")
            row = client.store.get(event.event_id)
            assert row is not None and row["state"] == "pending"
            [attempt] = client.store.attempts_of(row["id"])
            assert attempt["error"] == "ConnectTimeout: no answer within the timeout"
            assert attempt["status_code"] is None and attempt["outcome"] == "outage"
            assert attempt["duration"] >= 0.5  # it waited its connect timeout out
            assert service.requests == []

            filler.close()
            listener.close()
            service.up()
            report = client.flush()  # an explicit flush probes at once
            assert (report.delivered, report.pending) == (1, 0)
            assert [a.idempotency_key for a in service.accepted] == [event.event_id]
    finally:
        filler.close()
        listener.close()
