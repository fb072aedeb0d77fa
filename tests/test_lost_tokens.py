"""A rate token that cannot be given back is never lost in silence: when handing back
the row of a request never made fails, and giving back its token fails too, the
hand-back's failure is the one raised and the operator reads one WARNING line saying
which token was lost and what it costs. Paced on a frozen clock, so no token refills."""

from __future__ import annotations

import logging
import sqlite3
from concurrent.futures import Future
from typing import Any, Callable

import pytest

from cms_outbox import CMSClient
from cms_outbox.pacing import Quota, burst
from cms_outbox.sandbox import Sandbox
from cms_outbox.transport import Reply
from tests.conftest import TOKEN, FakeClock

Factory = Callable[..., CMSClient]
HELD = int(burst(Quota(60, 60)))  # the budget's burst at 60 per minute
REFUSE_HAND_BACK = (
    "CREATE TRIGGER refuse_hand_back BEFORE UPDATE ON cms_outbox_events "
    "WHEN OLD.state = 'in_flight' AND NEW.state = 'pending' "
    "BEGIN SELECT RAISE(ABORT, 'refused'); END"
)
REFUSE_BUDGET = (
    "CREATE TRIGGER refuse_budget BEFORE UPDATE ON cms_outbox_control "
    "BEGIN SELECT RAISE(ABORT, 'refused'); END"
)


def paced_client(make_sqlite_client: Factory, sandbox: Sandbox, **options: Any) -> CMSClient:
    return make_sqlite_client(
        host=sandbox.url, token=TOKEN, rate_limit=60, clock=FakeClock(), **options
    )


def run_sql(url: str, *statements: str) -> None:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        for statement in statements:
            conn.execute(statement)


def tokens(client: CMSClient) -> float:
    return client.store.with_budget(lambda budget: (budget, budget.tokens))


def token_lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger and "token" in r.getMessage()]


def test_a_late_request_whose_hand_back_and_refund_both_fail_says_which_token_was_lost(
    make_sqlite_client: Factory,
    sandbox: Sandbox,
    sqlite_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = paced_client(make_sqlite_client, sandbox, workers=1)
    event = client.track_lead("signup", "user-0", click_id="c")
    flusher = client.flusher
    now = flusher.clock()
    assert flusher.pacer.take(1, now).requests == 1
    [lease] = client.store.lease(flusher.owner, 1, now, 60.0)
    run_sql(sqlite_url, REFUSE_HAND_BACK, REFUSE_BUDGET)
    unsent: Future[Reply | None] = Future()
    unsent.set_result(None)  # what a worker returns when it finds the pass over
    caplog.set_level(logging.WARNING, logger="cms_outbox")
    flusher.adopt({unsent: lease})  # recorded at once: the answer is in

    [lost] = token_lines(caplog, "cms_outbox.flusher")
    assert lost.levelno == logging.WARNING
    assert event.event_id in lost.getMessage() and "pacing failed" in lost.getMessage()
    assert "one request short" in lost.getMessage()
    # The failure raised (and reported for the late answer) is the hand-back's.
    [unrecorded] = [r for r in caplog.records if "late answer" in r.getMessage()]
    assert "handing leases back failed" in unrecorded.getMessage()
    assert "pacing failed" not in unrecorded.getMessage()
    run_sql(sqlite_url, "DROP TRIGGER refuse_budget", "DROP TRIGGER refuse_hand_back")
    assert tokens(client) == HELD - 1  # lost, as the line says: nothing refilled it

    report = client.flush()  # hands the stranded row back first, then sends it
    assert (report.delivered, report.pending) == (1, 0)
    assert [request.idempotency_key for request in sandbox.accepted] == [event.event_id]
