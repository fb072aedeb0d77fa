"""The sandbox speaks the CMS protocol (DESIGN.md section 1) and injects faults on demand.

Real sockets on 127.0.0.1 (port 0), real HTTP clients, no mocks.
"""

from __future__ import annotations

import email.utils
import json
import logging
import socket
import threading
import time
from datetime import datetime, timezone
from typing import Any

import pytest
import requests

from cms_outbox.sandbox import Accepted, Faults, Limits, RequestRecord, Sandbox, run
from tests.conftest import returns

TOKEN = "test-token"
LEAD = {"eventName": "signup", "customerExternalId": "cust-1", "clickId": "click-1"}
SALE = {
    "eventName": "purchase",
    "customerExternalId": "cust-1",
    "clickId": "click-1",
    "invoiceId": "inv-1",
    "amount": 4999,
    "currency": "USD",
}


@pytest.fixture
def sb():
    sandbox = Sandbox(token=TOKEN)
    sandbox.start()
    yield sandbox
    sandbox.stop()


@pytest.fixture
def http():
    session = requests.Session()
    yield session
    session.close()


def post(
    session: requests.Session,
    sandbox: Sandbox,
    kind: str,
    body: Any,
    *,
    key: str | None = None,
    token: str | None = TOKEN,
    timeout: float | tuple[float, float] = 5.0,
) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if key is not None:
        headers["Idempotency-Key"] = key
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return session.post(f"{sandbox.url}/track/{kind}", data=data, headers=headers, timeout=timeout)


def assert_error(response: requests.Response, status: int, type_: str) -> dict[str, Any]:
    assert response.status_code == status
    body = response.json()
    assert body["success"] is False
    assert body["type"] == type_
    assert body["statusCode"] == status
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["details"], dict)
    return body


# -- success and auth ----------------------------------------------------------------


def test_lead_success_body_satisfies_both_documented_shapes(sb, http):
    response = post(http, sb, "lead", LEAD, key="k-1")

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    # API reference shape
    assert body["success"] is True
    assert body["message"] == "Event tracked successfully"
    stamp = datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
    offset = stamp.utcoffset()
    assert offset is not None and offset.total_seconds() == 0
    # SDK model shape: TrackResponse(status: StrictBool, data: StrictStr)
    assert body["status"] is True
    assert body["data"] == "lead:signup:cust-1"

    [accepted] = sb.accepted
    assert accepted == Accepted(
        kind="lead",
        idempotency_key="k-1",
        payload=LEAD,
        customer_external_id="cust-1",
        click_id="click-1",
        received_at=accepted.received_at,
    )
    assert abs(accepted.received_at - time.time()) < 5


def test_sale_accepted_with_all_optional_fields(sb, http):
    sale = {
        **SALE,
        "amount": 49.99,
        "timestamp": "2024-05-01T12:30:00.123456+02:00",
        "customerName": "Ada",
        "customerEmail": "ada@example.com",
        "customerAvatar": "https://example.com/a.png",
    }
    response = post(http, sb, "sale", sale)

    assert response.status_code == 200
    assert response.json()["data"] == "sale:purchase:cust-1"
    [accepted] = sb.accepted
    assert (accepted.kind, accepted.payload, accepted.idempotency_key) == ("sale", sale, None)


@pytest.mark.parametrize(
    "timestamp",
    ["2024-05-01", "2024-05-01T12:30:00Z", "2024-05-01T12:30:00.5+0530", "2024-05-01 12:30"],
)
def test_iso_8601_timestamps_accepted(sb, http, timestamp):
    assert post(http, sb, "lead", {**LEAD, "timestamp": timestamp}).status_code == 200


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x", TOKEN],
)
def test_bad_or_missing_token_is_401_and_nothing_is_accepted(sb, http, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    response = http.post(f"{sb.url}/track/lead", json=LEAD, headers=headers, timeout=5)

    assert_error(response, 401, "unauthorized")
    assert sb.accepted == []
    [record] = sb.requests
    assert (record.status, record.error_type, record.kind) == (401, "unauthorized", "lead")


def test_unknown_path_is_404_and_wrong_method_is_405(sb, http):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert_error(http.post(f"{sb.url}/track/click", json=LEAD, headers=headers), 404, "not_found")
    response = http.get(f"{sb.url}/track/lead", headers=headers)
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "POST"
    assert [(r.path, r.kind, r.status) for r in sb.requests] == [
        ("/track/click", None, 404),
        ("/track/lead", "lead", 405),
    ]


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"text"', b"", b"\xff\xfe"])
def test_body_that_is_not_a_json_object_is_400(sb, http, raw):
    assert_error(post(http, sb, "lead", raw), 400, "bad_request")
    assert sb.accepted == []


def raw_exchange(sandbox: Sandbox, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", sandbox.port), timeout=5) as conn:
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_chunked_body_is_read(sb):
    body = json.dumps(LEAD).encode()
    head = f"POST /track/lead HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    request = head.encode() + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunked

    assert raw_exchange(sb, request).startswith(b"HTTP/1.1 200 ")
    assert [a.payload for a in sb.accepted] == [LEAD]


def test_unframeable_body_is_400_and_the_connection_closes(sb):
    request = b"POST /track/lead HTTP/1.1\r\nHost: x\r\nContent-Length: many\r\n\r\n{}"
    answer = raw_exchange(sb, request)  # returns only because the server closed

    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"Connection: close" in answer
    assert [(r.status, r.error_type) for r in sb.requests] == [(400, "bad_request")]


# -- validation ----------------------------------------------------------------------


def without(body: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != field}


INVALID = [
    ("lead", without(LEAD, "eventName"), "eventName"),
    ("lead", {**LEAD, "eventName": ""}, "eventName"),
    ("lead", {**LEAD, "eventName": 7}, "eventName"),
    ("lead", without(LEAD, "customerExternalId"), "customerExternalId"),
    ("lead", {**LEAD, "customerExternalId": ""}, "customerExternalId"),
    ("lead", {**LEAD, "customerExternalId": 42}, "customerExternalId"),
    ("lead", {**LEAD, "clickId": 123}, "clickId"),
    ("lead", {**LEAD, "timestamp": "yesterday"}, "timestamp"),
    ("lead", {**LEAD, "timestamp": "2024-13-01T00:00:00Z"}, "timestamp"),
    ("lead", {**LEAD, "timestamp": 1714557000}, "timestamp"),
    ("lead", {**LEAD, "customerName": 1}, "customerName"),
    ("lead", {**LEAD, "customerEmail": ["a@b.c"]}, "customerEmail"),
    ("lead", {**LEAD, "customerAvatar": {}}, "customerAvatar"),
    ("lead", {**LEAD, "mode": "instant"}, "mode"),
    ("lead", {**without(LEAD, "clickId"), "mode": "deferred"}, "clickId"),
    ("lead", {**LEAD, "amount": 5}, "amount"),
    ("lead", {**LEAD, "click_id": "x"}, "click_id"),
    ("sale", without(SALE, "invoiceId"), "invoiceId"),
    ("sale", {**SALE, "invoiceId": ""}, "invoiceId"),
    ("sale", without(SALE, "eventName"), "eventName"),
    ("sale", without(SALE, "amount"), "amount"),
    ("sale", {**SALE, "amount": "4999"}, "amount"),
    ("sale", {**SALE, "amount": True}, "amount"),
    ("sale", {**SALE, "amount": -1}, "amount"),
    ("sale", without(SALE, "currency"), "currency"),
    ("sale", {**SALE, "currency": "usd"}, "currency"),
    ("sale", {**SALE, "currency": "US"}, "currency"),
    ("sale", {**SALE, "currency": "USDX"}, "currency"),
    ("sale", {**SALE, "currency": "U5D"}, "currency"),
    ("sale", {**SALE, "currency": "ÜSD"}, "currency"),
    ("sale", {**SALE, "mode": "deferred"}, "mode"),
    ("sale", {**SALE, "customerEmail": 3}, "customerEmail"),
]


@pytest.mark.parametrize(("kind", "body", "field"), INVALID)
def test_validation_errors_are_422_naming_the_field(sb, http, kind, body, field):
    body = assert_error(post(http, sb, kind, body), 422, "validation_error")

    assert body["details"]["field"] == field
    assert sb.accepted == []
    assert sb.requests[-1].error_type == "validation_error"


@pytest.mark.parametrize(
    ("kind", "field"),
    [("lead", "clickId"), ("lead", "customerName"), ("lead", "timestamp"), ("lead", "mode")]
    + [("sale", "clickId"), ("sale", "amount"), ("sale", "customerAvatar")],
)
def test_null_field_is_rejected_not_treated_as_absent(sb, http, kind, field):
    body = {**(LEAD if kind == "lead" else SALE), field: None}
    assert assert_error(post(http, sb, kind, body), 422, "validation_error")["details"] == {
        "field": field
    }


@pytest.mark.parametrize("raw", [b'{"amount": NaN}', b'{"amount": Infinity}'])
def test_non_finite_amount_is_rejected(sb, http, raw):
    body = json.dumps(without(SALE, "amount"))[:-1].encode() + b", " + raw[1:]
    assert_error(post(http, sb, "sale", body), 422, "validation_error")


# -- deferred attribution ------------------------------------------------------------


def test_follow_up_before_its_deferred_setup_is_404(sb, http):
    follow_up = {"eventName": "trial", "customerExternalId": "cust-9"}
    body = assert_error(post(http, sb, "lead", follow_up), 404, "not_found")
    assert "deferred association" in body["error"]
    sale = without({**SALE, "customerExternalId": "cust-9"}, "clickId")
    assert_error(post(http, sb, "sale", sale), 404, "not_found")
    assert sb.accepted == []


def test_deferred_setup_then_follow_ups_are_resolved_to_its_click_id(sb, http):
    setup = {**LEAD, "clickId": "click-d", "mode": "deferred"}
    assert post(http, sb, "lead", setup).status_code == 200
    follow_up = {"eventName": "trial", "customerExternalId": "cust-1"}
    assert post(http, sb, "lead", follow_up).status_code == 200
    sale = without(SALE, "clickId")
    assert post(http, sb, "sale", sale).status_code == 200

    assert [(a.kind, a.click_id) for a in sb.accepted] == [
        ("lead", "click-d"),
        ("lead", "click-d"),
        ("sale", "click-d"),
    ]
    assert sb.accepted[1].payload == follow_up  # recorded as received, not rewritten


def test_repeated_deferred_setup_keeps_the_first_association(sb, http):
    assert post(http, sb, "lead", {**LEAD, "clickId": "first", "mode": "deferred"}).ok
    assert post(http, sb, "lead", {**LEAD, "clickId": "second", "mode": "deferred"}).ok
    assert post(http, sb, "lead", {"eventName": "e", "customerExternalId": "cust-1"}).ok
    assert sb.accepted[-1].click_id == "first"


@pytest.mark.parametrize("kind", ["lead", "sale"])
def test_click_id_on_a_follow_up_is_422_duplicate_attribution(sb, http, kind):
    assert post(http, sb, "lead", {**LEAD, "mode": "deferred"}).status_code == 200
    body = LEAD if kind == "lead" else SALE
    error = assert_error(post(http, sb, kind, body), 422, "duplicate_attribution")
    assert error["details"]["field"] == "clickId"
    assert len(sb.accepted) == 1


def test_click_id_without_association_is_the_standard_flow(sb, http):
    assert post(http, sb, "lead", LEAD).status_code == 200
    assert post(http, sb, "sale", SALE).status_code == 200  # no association was created
    assert [a.click_id for a in sb.accepted] == ["click-1", "click-1"]


# -- dedupe --------------------------------------------------------------------------


def test_idempotent_replay_answers_the_same_body_and_counts_once(sb, http):
    first = post(http, sb, "lead", LEAD, key="evt-1")
    time.sleep(0.002)  # a fresh answer would carry a later timestamp
    second = post(http, sb, "lead", LEAD, key="evt-1")

    assert first.status_code == second.status_code == 200
    assert first.content == second.content
    assert sb.accepted_count("evt-1") == 1
    assert sb.accepted_count("never-sent") == 0
    assert len(sb.accepted) == 1
    assert [(r.idempotency_key, r.status) for r in sb.requests] == [("evt-1", 200)] * 2


def test_concurrent_duplicates_are_accepted_once(sb):
    statuses: list[int] = []

    def send() -> None:
        with requests.Session() as session:
            statuses.append(post(session, sb, "sale", SALE, key="evt-race").status_code)

    threads = [threading.Thread(target=send) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 16
    assert sb.accepted_count("evt-race") == 1
    assert len(sb.accepted) == 1


def test_invoice_already_accepted_under_another_key_is_409(sb, http):
    assert post(http, sb, "sale", SALE, key="a").status_code == 200
    error = assert_error(post(http, sb, "sale", SALE, key="b"), 409, "duplicate")
    assert error["details"]["invoiceId"] == "inv-1"
    assert_error(post(http, sb, "sale", SALE), 409, "duplicate")
    assert post(http, sb, "sale", SALE, key="a").status_code == 200  # replay still fine
    other = {**SALE, "invoiceId": "inv-2"}
    assert post(http, sb, "sale", other, key="c").status_code == 200
    assert [a.payload["invoiceId"] for a in sb.accepted] == ["inv-1", "inv-2"]


def test_requests_without_idempotency_key_are_accepted(sb, http):
    assert post(http, sb, "lead", LEAD).status_code == 200
    assert post(http, sb, "lead", LEAD).status_code == 200
    assert [a.idempotency_key for a in sb.accepted] == [None, None]


# -- rate limit ----------------------------------------------------------------------


def test_rate_limit_answers_429_with_integer_retry_after(http):
    with Sandbox(token=TOKEN, rate_limit=5) as sandbox:
        for _ in range(3):  # unauthenticated requests do not use the budget
            assert post(http, sandbox, "lead", LEAD, token="bad").status_code == 401
        statuses = [post(http, sandbox, "lead", LEAD).status_code for _ in range(5)]
        limited = post(http, sandbox, "lead", LEAD)
        again = post(http, sandbox, "lead", LEAD)

        assert statuses == [200] * 5
        assert_error(limited, 429, "rate_limited")
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert again.status_code == 429
        assert len(sandbox.accepted) == 5
        sandbox.reset()  # forgets the window
        assert post(http, sandbox, "lead", LEAD).status_code == 200


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


T0 = 1_800_000_000.0  # a multiple of 6 and of 60: fixed windows start here


def test_ietf_headers_advertise_the_policy_and_what_is_left(http):
    clock = Clock(T0 + 1)
    limits = Limits(requests=3, window=6, accounting="fixed")
    with Sandbox(token=TOKEN, limits=limits, clock=clock) as sandbox:
        answers = [post(http, sandbox, "lead", LEAD) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert {a.headers["RateLimit-Policy"] for a in answers} == {'"default";q=3;w=6'}
        assert [a.headers["RateLimit"] for a in answers] == [
            '"default";r=2;t=5', '"default";r=1;t=5', '"default";r=0;t=5', '"default";r=0;t=5',
        ]  # fmt: skip
        assert answers[3].headers["Retry-After"] == "5"
        assert "Retry-After" not in answers[0].headers
        clock.now = T0 + 6  # the next fixed window
        assert post(http, sandbox, "lead", LEAD).headers["RateLimit"] == '"default";r=2;t=6'


def test_x_ratelimit_headers_give_the_reset_in_epoch_seconds(http):
    clock = Clock(T0 + 2.5)
    with Sandbox(token=TOKEN, limits=Limits(2, 6, "fixed", headers="x"), clock=clock) as sandbox:
        answer = post(http, sandbox, "lead", LEAD)
        assert answer.headers["X-RateLimit-Limit"] == "2"
        assert answer.headers["X-RateLimit-Remaining"] == "1"
        assert answer.headers["X-RateLimit-Reset"] == str(int(T0 + 6))
        assert "RateLimit-Policy" not in answer.headers


def test_no_headers_still_limits_and_answers_retry_after(http):
    clock = Clock(T0)
    with Sandbox(token=TOKEN, limits=Limits(1, 6, "fixed", headers="none"), clock=clock) as sandbox:
        assert not {"RateLimit", "X-RateLimit-Limit"} & set(
            post(http, sandbox, "lead", LEAD).headers
        )
        refused = post(http, sandbox, "lead", LEAD)
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "6"


def test_sliding_window_frees_one_request_at_a_time(http):
    clock = Clock(T0 + 5)
    limits = Limits(2, 6, accounting="sliding")
    with Sandbox(token=TOKEN, limits=limits, clock=clock) as sandbox:
        assert post(http, sandbox, "lead", LEAD).status_code == 200  # at T0+5
        clock.now = T0 + 7
        assert post(http, sandbox, "lead", LEAD).status_code == 200  # a fixed window would reset
        clock.now = T0 + 8
        refused = post(http, sandbox, "lead", LEAD)
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "3"  # T0+11
        clock.now = T0 + 11
        assert post(http, sandbox, "lead", LEAD).status_code == 200


def test_limits_change_while_running_through_the_admin_endpoint(http):
    clock = Clock(T0)
    with Sandbox(token=TOKEN, clock=clock) as sandbox:
        assert "RateLimit" not in post(http, sandbox, "lead", LEAD).headers  # off by default
        changed = http.post(
            f"{sandbox.url}/_admin/limits", json={"requests": 1, "window": 6, "accounting": "fixed"}
        )
        assert changed.json()["limits"] == {
            "requests": 1, "window": 6, "accounting": "fixed", "headers": "ietf",
        }  # fmt: skip
        assert post(http, sandbox, "lead", LEAD).status_code == 200
        assert post(http, sandbox, "lead", LEAD).status_code == 429
        sandbox.set_limits(requests=120)
        assert post(http, sandbox, "lead", LEAD).headers["RateLimit-Policy"].endswith("q=120;w=6")
        for bad in ({"requests": -1}, {"window": 0}, {"headers": "github"}, {"speed": 1}, [1]):
            answer = http.post(f"{sandbox.url}/_admin/limits", json=bad)
            assert answer.status_code == 400, bad
        assert http.get(f"{sandbox.url}/_admin/limits").json()["limits"]["requests"] == 120


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
        allow_redirects=False, timeout=10,
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
    with socket.create_connection(("127.0.0.1", sb.port), timeout=5) as conn:
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
    assert http.get(f"{sb.url}/_admin/health", timeout=2).status_code == 200
    assert http.post(f"{sb.url}/_admin/down", json={"seconds": "soon"}).status_code == 400
    assert not sb.is_down


def test_run_serves_until_stopped_and_logs_where(caplog):
    caplog.set_level(logging.INFO, logger="cms_outbox.sandbox")
    started: list[Sandbox] = []
    ready = threading.Event()

    def on_ready(sandbox: Sandbox) -> None:
        started.append(sandbox)
        ready.set()

    thread = threading.Thread(target=run, kwargs={"port": 0, "ready": on_ready, "token": "t"})
    thread.start()
    assert ready.wait(5)
    [sandbox] = started
    headers = {"Authorization": "Bearer t"}
    response = requests.post(f"{sandbox.url}/track/lead", json=LEAD, headers=headers, timeout=5)
    assert response.status_code == 200
    sandbox.stop()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert any(f"listening on {sandbox.url}" in r.getMessage() for r in caplog.records)


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


# -- fidelity with the official SDK ----------------------------------------------------


def sdk_client(token: str, sandbox: Sandbox) -> Any:
    cutmeshort = pytest.importorskip("cutmeshort")
    return cutmeshort.CMSClient(token=token, host=sandbox.url)


def close_sdk(client: Any) -> None:
    # CMSClient.close() calls ApiClient.close(), which does not exist in 1.0.1.
    client.api_client.rest_client.pool_manager.clear()


def test_official_sdk_documented_examples_succeed(sb):
    client = sdk_client(TOKEN, sb)
    try:
        standard = client.track_lead(
            click_id="id_123", event_name="signup_started", customer_external_id="user_42"
        )
        setup = client.track_lead(
            click_id="id_456",
            event_name="signup_started",
            customer_external_id="user_77",
            mode="deferred",
        )
        follow_up = client.track_lead(
            event_name="trial_started",
            customer_external_id="user_77",
            timestamp=datetime.now(timezone.utc),
        )
        sale = client.track_sale(
            click_id="id_123",
            event_name="purchase",
            customer_external_id="user_42",
            invoice_id="inv_1",
            amount=4999,
            currency="USD",
        )
    finally:
        close_sdk(client)

    assert standard == {"status": True, "data": "lead:signup_started:user_42"}
    assert setup["status"] is True and follow_up["status"] is True
    assert sale == {"status": True, "data": "sale:purchase:user_42"}
    assert [(a.kind, a.customer_external_id, a.click_id) for a in sb.accepted] == [
        ("lead", "user_42", "id_123"),
        ("lead", "user_77", "id_456"),
        ("lead", "user_77", "id_456"),
        ("sale", "user_42", "id_123"),
    ]
    assert sb.accepted[3].payload["amount"] == 4999
    assert sb.accepted[3].payload["currency"] == "USD"
    assert "clickId" not in sb.accepted[2].payload


def test_official_sdk_reports_401_for_a_bad_token(sb):
    from cutmeshort.exceptions import UnauthorizedException

    client = sdk_client("wrong-token", sb)
    try:
        with pytest.raises(UnauthorizedException) as raised:
            client.track_lead(click_id="id_123", event_name="e", customer_external_id="u")
    finally:
        close_sdk(client)
    assert raised.value.status == 401
    assert json.loads(raised.value.body or "")["type"] == "unauthorized"
    assert (
        raised.value.data is not None and raised.value.data.status_code == 401
    )  # parsed by the SDK's ErrorResponse model
    assert sb.accepted == []
