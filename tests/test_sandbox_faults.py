"""The sandbox injects faults on demand, and its admin API and lifecycle do what they say."""

from __future__ import annotations

import email.utils
import logging
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests

from cms_outbox.sandbox import Faults, RequestRecord, Sandbox, run
from tests.conftest import returns
from tests.sandbox_requests import LEAD, TOKEN, assert_error, http, post, sb, without

__all__ = ["http", "sb"]  # the fixtures: pytest finds them here


# -- faults --------------------------------------------------------------------------


def test_latency_fault_delays_answers(sb, http):
    sb.set_faults(latency=0.3)
    started = time.monotonic()
    assert post(http, sb, "lead", LEAD).status_code == 200
    assert time.monotonic() - started >= 0.3
    sb.clear_faults()
    assert sb.faults.latency == 0


def test_constructor_latency_is_the_baseline(http):
    with Sandbox(token=TOKEN, latency=0.2) as sandbox:
        assert sandbox.faults == Faults(latency=0.2)
        started = time.monotonic()
        assert post(http, sandbox, "lead", LEAD).status_code == 200
        assert time.monotonic() - started >= 0.2
        sandbox.set_faults(reset=True)
        sandbox.clear_faults()
        assert sandbox.faults == Faults(latency=0.2)


def statuses_with_error_rate(seed: int, session: requests.Session) -> list[int]:
    with Sandbox(token=TOKEN, seed=seed) as sandbox:
        sandbox.set_faults(error_rate=0.5, error_status=503)
        return [post(session, sandbox, "lead", LEAD).status_code for _ in range(20)]


def test_error_rate_is_random_but_reproducible_with_a_seed(http):
    first = statuses_with_error_rate(7, http)

    assert set(first) == {200, 503}
    assert first == statuses_with_error_rate(7, http)
    assert first != statuses_with_error_rate(8, http)


def test_force_status_with_count_clears_itself(sb, http):
    sb.set_faults(force_status=503, force_count=2)
    responses = [post(http, sb, "lead", LEAD) for _ in range(3)]

    assert [r.status_code for r in responses] == [503, 503, 200]
    assert_error(responses[0], 503, "unavailable")
    assert sb.faults == Faults()
    assert len(sb.accepted) == 1


def test_force_status_without_count_persists(sb, http):
    sb.set_faults(force_status=500)
    assert [post(http, sb, "lead", LEAD).status_code for _ in range(4)] == [500] * 4
    assert sb.faults.force_status == 500
    assert sb.accepted == []
    assert [r.error_type for r in sb.requests] == ["internal_error"] * 4


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_header_on_injected_429_and_503(sb, http, status):
    http_date = email.utils.formatdate(time.time() + 30, usegmt=True)
    sb.set_faults(force_status=status, force_count=1, retry_after="7")
    assert post(http, sb, "lead", LEAD).headers["Retry-After"] == "7"
    sb.set_faults(force_status=status, force_count=1, retry_after=http_date)
    assert post(http, sb, "lead", LEAD).headers["Retry-After"] == http_date


def test_retry_after_is_not_added_to_other_statuses(sb, http):
    sb.set_faults(force_status=500, retry_after="7")
    response = post(http, sb, "lead", LEAD)
    assert response.status_code == 500
    assert "Retry-After" not in response.headers


def test_auth_is_checked_before_injected_faults(sb, http):
    sb.set_faults(force_status=503, force_count=1)
    assert post(http, sb, "lead", LEAD, token="bad").status_code == 401
    assert post(http, sb, "lead", LEAD).status_code == 503  # the count was not used up


def test_stall_causes_a_read_timeout_then_the_event_is_processed(sb, http):
    sb.set_faults(stall=2.0)  # ten times the read timeout: a busy client still gives up first
    with pytest.raises(requests.exceptions.ReadTimeout):
        post(http, sb, "lead", LEAD, key="slow", timeout=(5, 0.2))
    # The answer was lost, not the event: a retry with the same key is a replay.
    assert sb.wait_for(lambda s: s.accepted_count("slow") == 1, timeout=60)
    sb.clear_faults()
    assert post(http, sb, "lead", LEAD, key="slow").status_code == 200
    assert sb.accepted_count("slow") == 1


def test_reset_drops_the_connection_without_an_answer(sb, http):
    sb.set_faults(reset=True)
    with pytest.raises(requests.exceptions.ConnectionError):
        post(http, sb, "lead", LEAD)
    assert sb.accepted == []
    [record] = sb.requests
    assert (record.status, record.error_type) == (None, None)
    sb.clear_faults()
    assert post(http, sb, "lead", LEAD).status_code == 200


def test_redirect_answers_307_with_the_location_and_processes_nothing(sb, http):
    sb.set_faults(redirect="https://elsewhere.example/track/lead")
    answer = http.post(
        f"{sb.url}/track/lead", json=LEAD, headers={"Authorization": f"Bearer {sb.token}"},
        allow_redirects=False, timeout=60,
    )  # fmt: skip
    assert answer.status_code == 307
    assert answer.headers["Location"] == "https://elsewhere.example/track/lead"
    assert answer.json()["type"] == "redirect"
    assert sb.accepted == [] and [r.status for r in sb.requests] == [307]
    sb.clear_faults()
    assert post(http, sb, "lead", LEAD).status_code == 200


def test_connections_counts_what_was_accepted_not_what_was_sent(sb, http):
    for n in range(3):
        assert post(http, sb, "lead", LEAD, key=f"k{n}").status_code == 200  # kept alive
    assert sb.connections == 1
    with requests.Session() as other:
        assert post(other, sb, "lead", LEAD, key="k3").status_code == 200
    assert sb.connections == 2
    sb.reset()
    assert sb.connections == 0


def test_down_refuses_connections_and_up_serves_on_the_same_port(sb, http):
    assert post(http, sb, "lead", LEAD).status_code == 200  # a pooled keep-alive connection
    port = sb.port
    sb.down()

    assert sb.is_down
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with pytest.raises(requests.exceptions.ConnectionError):
        post(http, sb, "lead", LEAD)

    sb.up()
    assert not sb.is_down
    assert sb.port == port
    assert post(http, sb, "lead", LEAD).status_code == 200
    assert len(sb.accepted) == 2


def test_down_closes_open_keep_alive_connections(sb):
    request = b"GET /_admin/health HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", sb.port), timeout=60) as conn:
        conn.sendall(request)
        assert conn.recv(65536).startswith(b"HTTP/1.1 200")
        sb.down()
        try:
            assert conn.recv(65536) == b""
        except ConnectionResetError:
            pass  # also a closed connection


def test_stop_is_fast_and_idempotent_with_a_stalled_request():
    """The stall (and the client's patience) outlast the test: only ``stop()`` ends it."""
    stall = 300.0
    sandbox = Sandbox(token=TOKEN).start()
    sandbox.set_faults(stall=stall)
    errors: list[BaseException] = []

    def send() -> None:
        with requests.Session() as session:
            try:
                post(session, sandbox, "lead", LEAD, timeout=stall)
            except requests.RequestException as exc:
                errors.append(exc)

    thread = threading.Thread(target=send)
    thread.start()
    assert sandbox.wait_for(lambda s: len(s.requests) == 1, timeout=60)
    returns(sandbox.stop, 60)  # does not wait for the stalled handler
    returns(sandbox.stop, 60)
    thread.join(timeout=60)  # the stall was cut short
    assert not thread.is_alive()
    assert len(errors) == 1
    assert sandbox.requests[0].status is None
    assert sandbox.accepted == []


def test_context_manager_and_wait_for_timeout():
    with Sandbox(token=TOKEN) as sandbox:
        assert sandbox.is_running
        assert sandbox.url == f"http://127.0.0.1:{sandbox.port}"
        started = time.monotonic()
        assert sandbox.wait_for(lambda s: len(s.accepted) > 0, timeout=0.1) is False
        assert time.monotonic() - started >= 0.1
    assert not sandbox.is_running
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{sandbox.url}/_admin/health", timeout=2)


def test_invalid_faults_are_rejected(sb):
    with pytest.raises(TypeError):
        sb.set_faults(slow=True)
    with pytest.raises(ValueError, match="error_rate"):
        sb.set_faults(error_rate=2)
    with pytest.raises(ValueError, match="force_status"):
        sb.set_faults(force_status=200)
    with pytest.raises(ValueError, match="redirect"):
        sb.set_faults(redirect=" ")
    assert sb.faults == Faults()


def test_reset_forgets_everything(sb, http):
    assert post(http, sb, "lead", {**LEAD, "mode": "deferred"}, key="x").status_code == 200
    sb.set_faults(latency=0.01)
    sb.reset()

    assert (sb.accepted, sb.requests, sb.faults) == ([], [], Faults())
    assert sb.accepted_count("x") == 0
    assert_error(post(http, sb, "lead", without(LEAD, "clickId")), 404, "not_found")


# -- admin API -----------------------------------------------------------------------


def test_admin_endpoints(sb, http):
    assert http.get(f"{sb.url}/_admin/health").json()["ok"] is True
    assert post(http, sb, "lead", LEAD, key="k").status_code == 200
    assert post(http, sb, "lead", LEAD, token="bad").status_code == 401

    [accepted] = http.get(f"{sb.url}/_admin/accepted").json()["accepted"]
    assert accepted["payload"] == LEAD
    assert (accepted["kind"], accepted["idempotency_key"], accepted["click_id"]) == (
        "lead",
        "k",
        "click-1",
    )
    assert accepted["customer_external_id"] == "cust-1"
    records = http.get(f"{sb.url}/_admin/requests").json()["requests"]
    assert [RequestRecord(**r) for r in records] == sb.requests
    assert [r["status"] for r in records] == [200, 401]  # admin calls are not recorded

    changed = http.post(f"{sb.url}/_admin/faults", json={"latency": 0.01, "retry_after": 3})
    assert changed.json()["faults"]["latency"] == 0.01
    assert sb.faults == Faults(latency=0.01, retry_after="3")
    assert http.get(f"{sb.url}/_admin/faults").json()["faults"]["retry_after"] == "3"
    assert http.post(f"{sb.url}/_admin/faults", json={"nope": 1}).status_code == 400
    assert http.post(f"{sb.url}/_admin/faults", json={"error_rate": "x"}).status_code == 400
    assert http.post(f"{sb.url}/_admin/faults", json=[1]).status_code == 400
    assert sb.faults == Faults(latency=0.01, retry_after="3")

    assert http.post(f"{sb.url}/_admin/reset").json() == {"ok": True}
    assert (sb.accepted, sb.requests, sb.faults) == ([], [], Faults())
    assert http.get(f"{sb.url}/_admin/nothing").status_code == 404
    assert http.delete(f"{sb.url}/_admin/reset").status_code == 405


def test_admin_down_with_seconds_comes_back_by_itself(sb, http):
    # Long enough that the refusal is seen before it ends, however busy this machine is.
    response = http.post(f"{sb.url}/_admin/down", json={"seconds": 5.0})
    assert response.status_code == 200
    assert sb.is_down
    with pytest.raises(requests.exceptions.ConnectionError):
        http.get(f"{sb.url}/_admin/health", timeout=2)
    assert sb.wait_for(lambda s: not s.is_down, timeout=60)
    assert http.get(f"{sb.url}/_admin/health", timeout=60).status_code == 200
    assert http.post(f"{sb.url}/_admin/down", json={"seconds": "soon"}).status_code == 400
    assert not sb.is_down


def test_run_serves_until_stopped_and_leaves_saying_where_to_its_caller(caplog):
    caplog.set_level(logging.DEBUG, logger="cms_outbox.sandbox")
    started: list[Sandbox] = []
    ready = threading.Event()

    def on_ready(sandbox: Sandbox) -> None:
        started.append(sandbox)
        ready.set()

    thread = threading.Thread(target=run, kwargs={"port": 0, "ready": on_ready, "token": "t"})
    thread.start()
    assert ready.wait(60)
    [sandbox] = started
    headers = {"Authorization": "Bearer t"}
    response = requests.post(f"{sandbox.url}/track/lead", json=LEAD, headers=headers, timeout=60)
    assert response.status_code == 200
    sandbox.stop()
    thread.join(timeout=60)
    assert not thread.is_alive()
    # `cms-outbox sandbox` prints the address from its callback: a log line would repeat it.
    assert not [r for r in caplog.records if "listening" in r.getMessage()]


def test_run_without_a_callback_logs_where_it_listens() -> None:
    code = "import logging; logging.basicConfig(); logging.getLogger().setLevel(logging.INFO)\n"
    code += "from cms_outbox.sandbox import run; run(port=0)"
    process = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
    finally:
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=30)
    assert process.returncode == 0, rest
    assert line.startswith("INFO:cms_outbox.sandbox.server:CMS sandbox listening on http://")
    assert line.rstrip().endswith("(POST /track/lead and /track/sale, admin at /_admin/)")


def test_handles_many_concurrent_connections(sb):
    def send(n: int) -> list[int]:
        with requests.Session() as session:
            body = {**LEAD, "customerExternalId": f"c{n}"}
            return [post(session, sb, "lead", body, key=f"{n}-{i}").status_code for i in range(5)]

    results: list[list[int]] = []
    threads = [threading.Thread(target=lambda n=n: results.append(send(n))) for n in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [[200] * 5] * 50
    assert len(sb.accepted) == 250
