"""What the library logs: one line per outage start/end, auth pause and dead event; no secrets."""

from __future__ import annotations

import logging
from typing import Any, Callable

import pytest

from cms_outbox import CMSClient
from cms_outbox.sandbox import Sandbox
from tests.conftest import TOKEN

WRONG_TOKEN = "wrong-token-5550123"
EMAILS = [f"person{i}@example.com" for i in range(4)] + ["dead.letter@example.com"]


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def _count(messages: list[str], prefix: str) -> int:
    return sum(message.startswith(prefix) for message in messages)


def test_one_line_per_outage_auth_pause_and_dead_event_without_secrets(
    make_client: Callable[..., CMSClient],
    sandbox: Sandbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="cms_outbox")
    client = make_client(token=TOKEN, host=sandbox.url, rate_limit=None)

    # A full outage: several events fail at once, probes fail again, then it recovers.
    sandbox.down()
    stored = [
        client.track_lead(
            "signup", f"customer-{i}", click_id=f"clk-{i}", customer_email=EMAILS[i]
        ).event_id
        for i in range(3)
    ]
    assert client.flush().paused == "outage"
    assert client.flush().paused == "outage"  # a failed probe is not a new outage
    sandbox.up()
    report = client.flush()
    assert report.paused is None and report.delivered == 3
    assert all(sandbox.accepted_count(event_id) == 1 for event_id in stored)

    # A dead event (422), the customer's email in its payload.
    sandbox.set_faults(force_status=422, force_count=1)
    dead = client.track_lead("signup", "customer-dead", click_id="clk-d", customer_email=EMAILS[4])
    assert client.flush().dead == 1
    assert client.result(dead.event_id).state.value == "dead"

    # An auth pause: the service refuses the token; nothing is burnt.
    refused = make_client(token=WRONG_TOKEN, host=sandbox.url, rate_limit=None)
    kept = refused.track_lead("signup", "customer-3", click_id="clk-3", customer_email=EMAILS[3])
    assert refused.flush().paused == "auth"
    assert refused.flush().paused == "auth"  # still paused: no second line
    assert refused.result(kept.event_id).state.value == "pending"

    messages = _messages(caplog)
    assert _count(messages, "outage started") == 1, messages
    assert _count(messages, "outage ended") == 1, messages
    assert _count(messages, "delivery paused") == 1, messages
    dead_lines = [m for m in messages if "dead-lettered" in m]
    assert len(dead_lines) == 1 and dead.event_id in dead_lines[0], messages

    levels = {m: r.levelno for m, r in zip(messages, caplog.records)}
    assert all(levels[m] >= logging.WARNING for m in messages if m.startswith("outage started"))
    assert all(levels[m] == logging.INFO for m in messages if m.startswith("outage ended"))
    assert all(levels[m] >= logging.ERROR for m in messages if m.startswith("delivery paused"))

    for record in caplog.records:
        text = _full_text(record)
        assert TOKEN not in text, text
        assert WRONG_TOKEN not in text, text
        for email in EMAILS:
            assert email not in text, text


def _full_text(record: logging.LogRecord) -> str:
    parts: list[Any] = [record.getMessage(), record.exc_text or "", record.stack_info or ""]
    if record.exc_info and record.exc_info[1] is not None:
        parts.append(repr(record.exc_info[1]))
    return "\n".join(str(part) for part in parts)


def test_the_library_adds_no_handlers(make_client: Callable[..., CMSClient]) -> None:
    make_client()
    for name in ("cms_outbox", "cms_outbox.client", "cms_outbox.flusher", "cms_outbox.store"):
        assert logging.getLogger(name).handlers == []
    assert logging.getLogger("cms_outbox").propagate


def test_logger_names_live_under_cms_outbox(
    make_client: Callable[..., CMSClient], sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_client(token=TOKEN, host=sandbox.url, rate_limit=None)
    sandbox.set_faults(force_status=400, force_count=1)
    client.track_lead("signup", "c", click_id="k")
    client.flush()
    ours = [r for r in caplog.records if r.name.startswith("cms_outbox")]
    assert ours
    assert all(r.name == "cms_outbox" or r.name.startswith("cms_outbox.") for r in ours)


def test_apscheduler_says_nothing_at_info_about_each_pass(
    make_client: Callable[..., CMSClient], sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    """An application logging at INFO got four APScheduler lines (job added, running,
    executed, removed) for every pass, each second; they pass only where DEBUG does."""
    caplog.set_level(logging.INFO)
    client = make_client(token=TOKEN, host=sandbox.url, rate_limit=None, flush="background")
    first = client.track_lead("signup", "c1", click_id="k1", wait=10)
    assert first.state.value == "delivered"  # the scheduler started and ran its passes
    assert [r for r in caplog.records if r.name.startswith("apscheduler")] == []

    caplog.set_level(logging.DEBUG, logger="apscheduler")  # asked for: they are there
    second = client.track_lead("signup", "c2", click_id="k2", wait=10)
    assert second.state.value == "delivered"
    client.close()
    routine = [r.getMessage() for r in caplog.records if r.name.startswith("apscheduler")]
    assert "Scheduler has been shut down" in routine, routine  # logged by close() itself
