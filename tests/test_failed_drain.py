"""A pass whose last records fail while a request is still on the wire.

A pass ends by waiting for the answers of what it sent and recording them. When that
record fails (the database), a request still on the wire is the flusher's to record when
it answers, as at a deadline: the next pass must not hand its row back, or the same event
would go out a second time while its first request is still open (DESIGN §3: two
flushers never send the same row at once).
"""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from typing import Callable

from cms_outbox import CMSClient, StorageError
from cms_outbox.pacing import Quota, burst
from cms_outbox.sandbox import Sandbox
from tests.conftest import TOKEN, FakeClock, wait_until

Factory = Callable[..., CMSClient]
# Seconds the first request is held: the steps that must come before its answer (send a
# second request, break the database, stop the pass) take a few polls of 0.25 s.
FIRST_HELD = 10.0
HELD = 600.0  # the second request: until the sandbox goes down
READ_TIMEOUT = 300.0  # no request ends but by its answer or down()


def test_a_request_on_the_wire_when_the_final_records_fail_is_never_sent_twice(
    make_sqlite_client: Factory, sandbox: Sandbox, sqlite_url: str
) -> None:
    """Paced on a frozen clock, so that the pass leases one row per token given: the
    first is held 10 s, the second until the sandbox goes down. The pass is stopped, and
    recording the first answer fails: the second request is left to the flusher, the
    next pass hands back and sends nothing while it is open, and once it has ended every
    event is accepted once."""
    path = sqlite_url.removeprefix("sqlite:///")
    clock = FakeClock()
    client = make_sqlite_client(
        token=TOKEN,
        host=sandbox.url,
        workers=2,
        rate_limit=60,
        clock=clock,
        flush="off",
        read_timeout=READ_TIMEOUT,
    )
    warm_up = int(burst(Quota(60, 60))) - 1  # leaves one token in the frozen budget
    for n in range(warm_up):
        client.track_lead("signup", f"user-{n}", click_id="c")
    assert client.flush().delivered == warm_up

    first = client.track_lead("signup", "user-a", click_id="ca").event_id
    sandbox.set_faults(stall=FIRST_HELD)
    stop = threading.Event()
    failures: list[BaseException] = []

    def run_pass() -> None:
        try:
            client.flusher.run_pass(stop=stop)
        except BaseException as exc:
            failures.append(exc)

    passing = threading.Thread(target=run_pass)
    passing.start()
    assert wait_until(lambda: len(sandbox.requests) == warm_up + 1)
    sandbox.set_faults(stall=HELD)
    second = client.track_lead("signup", "user-b", click_id="cb").event_id
    clock.advance(1.5)  # a token more: the pass leases and sends the second row
    assert wait_until(lambda: len(sandbox.requests) == warm_up + 2)
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON cms_outbox_attempts "
            "BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    assert len(sandbox.accepted) == warm_up, "the first request was answered too soon"
    stop.set()  # the pass stops leasing and drains: the first answer's record fails
    passing.join(FIRST_HELD + 60)
    assert [type(exc) for exc in failures] == [StorageError]
    assert client.flusher.strays == 1  # the second request, still held

    with sqlite3.connect(path) as conn:
        conn.execute("DROP TRIGGER refuse")
    clock.advance(60.0)
    client.flush(timeout=5)  # leased rows wait for the stray to be recorded: none is sent
    sent = Counter(r.idempotency_key for r in sandbox.requests[warm_up:])
    assert sent == Counter([first, second])
    sandbox.down()  # the held request ends without an answer: recorded as an outage
    assert wait_until(lambda: client.flusher.strays == 0)
    sandbox.clear_faults()
    sandbox.up()
    clock.advance(60.0)
    report = client.flush(timeout=30)
    assert (report.pending, report.dead) == (0, 0)
    accepted = Counter(r.idempotency_key for r in sandbox.accepted[warm_up:])
    assert accepted == Counter([first, second])
