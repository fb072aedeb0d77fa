"""The sandbox speaks the CMS protocol (DESIGN.md 1): auth, validation, deferred setups, dedupe."""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import datetime

import pytest
import requests

from cms_outbox.sandbox import Accepted, Sandbox
from tests.sandbox_requests import LEAD, SALE, TOKEN, assert_error, http, post, sb, without

__all__ = ["http", "sb"]  # the fixtures: pytest finds them here


# -- success and auth ----------------------------------------------------------------


def test_lead_success_body_satisfies_both_documented_shapes(sb, http):
    sent = time.time()
    response = post(http, sb, "lead", LEAD, key="k-1")
    answered = time.time()

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
    assert sent <= accepted.received_at <= answered


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
    response = http.post(f"{sb.url}/track/lead", json=LEAD, headers=headers, timeout=60)

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
    with socket.create_connection(("127.0.0.1", sandbox.port), timeout=60) as conn:
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
