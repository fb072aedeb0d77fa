"""The log an operator follows: one line per change of the breaker, the pacing and a pause,
at the right level and with its numbers (how long, the next probe, the rate), against the
real sandbox. An explicit ``flush()`` probes at once, so no test waits for a probe.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from typing import Callable

import pytest

from cms_outbox import CMSClient, Daemon
from cms_outbox.sandbox import Sandbox
from tests.conftest import TOKEN, wait_until

DURATION = r"\d+(\.\d)?s|\d+m\d\ds"


@pytest.fixture
def lines(caplog: pytest.LogCaptureFixture) -> Callable[[], list[tuple[int, str]]]:
    caplog.set_level(logging.INFO, logger="cms_outbox")

    def ours() -> list[tuple[int, str]]:
        return [
            (record.levelno, record.getMessage())
            for record in caplog.records
            if record.name.startswith("cms_outbox") and not record.name.endswith("handler")
        ]

    return ours


def matching(found: list[tuple[int, str]], pattern: str) -> list[int]:
    """The levels of the lines that match ``pattern`` from their start."""
    return [level for level, message in found if re.match(pattern, message)]


def test_an_outage_starts_continues_and_ends_with_its_numbers(
    make_client: Callable[..., CMSClient],
    sandbox: Sandbox,
    lines: Callable[[], list[tuple[int, str]]],
) -> None:
    client = make_client(token=TOKEN, host=sandbox.url, rate_limit=None)
    client.track_lead("signup", "c1", click_id="k1")
    sandbox.down()
    for _ in range(3):  # the first request, then two probes
        assert client.flush().paused == "outage"
    sandbox.up()
    assert client.flush().delivered == 1
    found = lines()
    started = (
        r"outage started: CMS service unreachable \(.+\); delivery paused, "
        rf"next probe in ({DURATION})$"
    )
    assert matching(found, started) == [logging.WARNING], found
    continues = (
        rf"outage continues after ({DURATION}): probe failed \(.+\); next probe in ({DURATION})$"
    )
    assert matching(found, continues) == [logging.INFO, logging.INFO], found
    ended = rf"outage ended after ({DURATION}) \(2 failed probes\): CMS service reachable"
    assert matching(found, ended) == [logging.INFO], found
    assert not matching(found, r"event .*: outage")  # per-event lines stay at DEBUG


def test_an_auth_pause_says_a_restart_is_needed_and_its_end_is_logged(
    make_client: Callable[..., CMSClient],
    sandbox: Sandbox,
    sqlite_url: str,
    lines: Callable[[], list[tuple[int, str]]],
) -> None:
    refused = make_client(token="not-the-token", host=sandbox.url, rate_limit=None)
    refused.track_lead("signup", "c1", click_id="k1")
    assert refused.flush().paused == "auth"
    assert refused.flush().paused == "auth"
    refused.close()
    found = lines()
    paused = (
        r"delivery paused: the CMS service rejected the token \(HTTP 401: .+\); every event "
        r"stays pending; a new token is not picked up while running: restart with a valid "
        rf"CMS_BEARER_TOKEN; next probe in ({DURATION})$"
    )
    assert matching(found, paused) == [logging.ERROR], found
    assert matching(found, rf"token still rejected after ({DURATION}) \(HTTP 401") == [logging.INFO]

    # Restarted with the right token: its first answer ends the published pause.
    restarted = make_client(token=TOKEN, host=sandbox.url, rate_limit=None)
    assert restarted.flush().delivered == 1
    over = (
        r"delivery resumed: the auth pause published since 20\d\d-.+Z \(HTTP 401: .+\) is "
        r"over, the token is accepted$"
    )
    assert matching(lines(), over) == [logging.INFO], lines()
    assert restarted.stats().pending == 0

    # A token refused for a while, then accepted by the same process.
    sandbox.set_faults(force_status=401, force_count=1)
    restarted.track_lead("signup", "c2", click_id="k2")
    assert restarted.flush().paused == "auth"
    assert restarted.flush().delivered == 1
    resumed = rf"delivery resumed after ({DURATION}): the CMS service accepts the token$"
    assert matching(lines(), resumed) == [logging.INFO], lines()


def test_a_429_pause_and_its_end_say_the_rate(
    make_client: Callable[..., CMSClient],
    sandbox: Sandbox,
    lines: Callable[[], list[tuple[int, str]]],
) -> None:
    client = make_client(token=TOKEN, host=sandbox.url, rate_limit=600)
    client.track_lead("signup", "c1", click_id="k1")
    sandbox.set_faults(force_status=429, force_count=1, retry_after="1")
    client.flush()
    assert wait_until(lambda: client.flush().delivered == 1 or client.stats().pending == 0)
    found = lines()
    rate = r"\d+(\.\d+)? requests per \d+s \(\d+\.\d/min, \w+\)"
    pause = (
        r"rate limited \(HTTP 429\): every flusher of this outbox pauses for "
        rf"({DURATION}), then paces at {rate}$"
    )
    assert matching(found, pause) == [logging.WARNING], found
    assert matching(found, rf"rate-limit pause over after ({DURATION}): pacing at {rate}$") == [
        logging.INFO
    ], found


@pytest.fixture
def daemon(sqlite_url: str, sandbox: Sandbox) -> Iterator[Daemon]:
    daemon = Daemon(
        TOKEN, sandbox.url, sqlite_url, rate_limit=0, handle_signals=False, interval=0.1
    )
    yield daemon
    daemon.stop()


def test_a_graceful_stop_says_what_it_waits_for(
    daemon: Daemon, sandbox: Sandbox, sqlite_url: str, lines: Callable[[], list[tuple[int, str]]]
) -> None:
    # Each request waits 5 s for its answer: the stop comes while two are still waiting,
    # however long this machine takes to see them in flight.
    sandbox.set_faults(stall=5.0)
    runner = threading.Thread(target=daemon.run_forever)
    runner.start()
    with CMSClient(database_url=sqlite_url, flush="off") as app:
        app.track_lead("signup", "c0", click_id="k0")  # a new flusher's first request: alone
        assert sandbox.wait_for(lambda sb: len(sb.accepted) == 1, timeout=60)
        app.track_lead("signup", "c1", click_id="k1")
        app.track_lead("signup", "c2", click_id="k2")
    assert wait_until(lambda: daemon.client.flusher.in_flight == 2)
    daemon.stop()
    runner.join(60)
    assert not runner.is_alive()
    found = lines()
    waits = (
        r"stopping: leasing nothing more; waiting up to \d+s for 2 requests in flight to be "
        r"answered and recorded$"
    )
    assert matching(found, waits) == [logging.INFO], found
    assert len(sandbox.accepted) == 3
    assert matching(found, r"cms-outbox run: stopped after .* \(delivered 3,") == [logging.INFO]
