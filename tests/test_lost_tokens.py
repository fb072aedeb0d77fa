"""A rate token that cannot be given back is never lost in silence: when handing back
the row of a request never made fails, and giving back its token fails too, the
hand-back's failure is the one raised and the operator reads one WARNING line saying
which token was lost and what it costs. Paced on a frozen clock, so no token refills."""

from __future__ import annotations

import logging
import sqlite3
import threading
from concurrent.futures import Future
from typing import Any, Callable

import pytest

from cms_outbox import CMSClient, StorageError
from cms_outbox.pacing import Quota, burst
from cms_outbox.sandbox import Sandbox
from cms_outbox.transport import Reply
from tests.conftest import TOKEN, FakeClock, wait_until

Factory = Callable[..., CMSClient]
HELD = int(burst(Quota(60, 60)))  # the budget's burst at 60 per minute
REFUSE_HAND_BACK = (
    "CREATE TRIGGER refuse_hand_back BEFORE UPDATE ON cms_outbox_events "
    "WHEN OLD.state = 'in_flight' AND NEW.state = 'pending' "
    "BEGIN SELECT RAISE(ABORT, 'refused'); END"
)
REFUSE_ATTEMPTS = (
    "CREATE TRIGGER refuse_attempts BEFORE INSERT ON cms_outbox_attempts "
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


def test_a_failed_pass_ends_and_says_how_many_tokens_were_lost_when_its_refund_fails_too(
    make_sqlite_client: Factory,
    sandbox: Sandbox,
    sqlite_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A pass leases two rows (one on the wire, one queued), the service goes down and
    publishing the outage fails, with both answers in hand: the pass still ends (it waited
    for ever for the answer taken with the one whose verdict failed), and the queued row's
    token, which cannot be given back either, is reported."""
    client = paced_client(make_sqlite_client, sandbox, workers=1)
    client.track_lead("signup", "user-0", click_id="c")
    assert client.flush().delivered == 1  # closes the new flusher's circuit
    sandbox.set_faults(stall=300.0)  # the request on the wire is held until down()
    for n in (1, 2):
        client.track_lead("signup", f"user-{n}", click_id="c")
    failures: list[BaseException] = []

    def fail() -> None:
        try:
            client.flush()
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=fail)
    thread.start()
    assert wait_until(lambda: len(sandbox.requests) == 2)
    assert client.flusher.in_flight == 2  # one on the wire, one queued: two tokens taken
    run_sql(sqlite_url, REFUSE_ATTEMPTS, REFUSE_BUDGET)
    caplog.set_level(logging.WARNING, logger="cms_outbox")
    sandbox.down()  # the held request ends without an answer; the queued one is not sent
    thread.join(60)

    [failure] = failures
    assert isinstance(failure, StorageError) and "pacing failed" not in str(failure)
    [lost] = token_lines(caplog, "cms_outbox.delivery_pass")
    assert lost.levelno == logging.WARNING
    assert lost.getMessage().startswith("1 rate token(s) of requests this pass never made")
    assert "pacing failed" in lost.getMessage()
    run_sql(sqlite_url, "DROP TRIGGER refuse_budget", "DROP TRIGGER refuse_attempts")
    assert tokens(client) == HELD - 3  # two requests made, and the lost one
