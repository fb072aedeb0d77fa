"""At exit a client sends its handful within the burst and says in one line what is left and why."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from cms_outbox import CMSClient
from cms_outbox.pacing import Quota, burst
from cms_outbox.sandbox import Limits, Sandbox
from tests.conftest import TOKEN, FakeClock, wait_until
from tests.lifecycle_scripts import child_env, shared_sandbox

__all__ = ["shared_sandbox"]  # the fixture: pytest finds it here


# -- what is left is said, once, in one line ---------------------------------------------

# The refused probe ends the exit flush at once: its timeout only bounds a hang.
LEAVE = """
import sys
from cms_outbox import CMSClient
client = CMSClient(token="t", host=sys.argv[1], database_url=sys.argv[2],
                   connect_timeout=0.2, read_timeout=0.2, final_flush_timeout=60)
for n in range(3):
    client.track_lead("signup", f"user_{n}", click_id=f"c_{n}")
"""


def closed_port() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_exit_with_undelivered_events_says_how_many_and_where(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    done = subprocess.run(
        [sys.executable, "-c", LEAVE, closed_port(), f"sqlite:///{path}"],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    lines = done.stderr.splitlines()
    assert "Traceback" not in done.stderr
    assert lines[-1] == (
        f"3 events not delivered yet, stored in sqlite:///{path}: the CMS service is "
        "unreachable, connection refused (nothing listens at the host and port); the next "
        "start of a client on this outbox or `cms-outbox run` delivers them"
    )
    assert sum("not delivered yet" in line for line in lines) == 1


# The background pass's request is held by the service; once the exit's close() is under
# way (it has told the flusher to leave), the service goes down and drops it: the outage
# starts during the exit flush, whatever the machine's speed.
DOWN_AT_EXIT = """
import json, sys, threading, urllib.request
from cms_outbox import CMSClient
sandbox = sys.argv[1]
client = CMSClient(token=sys.argv[2], host=sandbox, database_url=sys.argv[3],
                   read_timeout=120, final_flush_timeout=120)

def down_once_closing():
    while client.flusher.leave_at is None:
        threading.Event().wait(0.005)
    urllib.request.urlopen(urllib.request.Request(sandbox + "/_admin/down", method="POST"))

threading.Thread(target=down_once_closing, daemon=True).start()
client.track_lead(click_id="a", event_name="x", customer_external_id="zz")
while not json.load(urllib.request.urlopen(sandbox + "/_admin/requests"))["requests"]:
    threading.Event().wait(0.005)  # until the service holds it
"""


def test_exit_in_an_outage_says_in_one_line_how_many_wait_where_and_why(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.db"
    with Sandbox(token=TOKEN) as sandbox:
        sandbox.set_faults(stall=120)  # held until the service goes down
        done = subprocess.run(
            [sys.executable, "-c", DOWN_AT_EXIT, sandbox.url, TOKEN, f"sqlite:///{path}"],
            cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 0
    [line] = done.stderr.splitlines()  # not a line more: no "outage started" before it
    assert re.fullmatch(
        rf"1 event not delivered yet, stored in sqlite:///{re.escape(str(path))}: the CMS "
        r"service is unreachable, the (connection was reset by the other side|service "
        r"closed the connection without answering); the next start of a client on this "
        r"outbox or `cms-outbox run` delivers it",
        line,
    ), line


def test_close_in_an_outage_says_it_once_and_a_running_outage_is_still_logged(
    caplog: pytest.LogCaptureFixture, sqlite_url: str
) -> None:
    """An outage that starts during close() is told by the closing line alone; one that
    started before is logged as it starts, as in any long-running process."""
    with Sandbox(token=TOKEN) as sandbox:
        sandbox.set_faults(stall=120)
        client = CMSClient(
            token=TOKEN, host=sandbox.url, database_url=sqlite_url, read_timeout=120,
            final_flush_timeout=120,
        )  # fmt: skip
        with caplog.at_level(logging.WARNING, logger="cms_outbox"):
            for n in range(3):
                client.track_lead("signup", f"user_{n}", click_id=f"c_{n}")
            assert wait_until(lambda: len(sandbox.requests) == 1)  # the probe, held
            closing = threading.Thread(target=client.close)
            closing.start()
            assert wait_until(lambda: client.flusher.leave_at is not None)
            sandbox.down()
            closing.join(timeout=120)
        assert not closing.is_alive()
        closed = [(r.levelno, r.getMessage()) for r in caplog.records]
        assert len(closed) == 1, closed
        level, message = closed[0]
        assert level == logging.WARNING
        assert re.fullmatch(
            rf"3 events not delivered yet, stored in {re.escape(client.outbox)}: the CMS "
            r"service is unreachable, [a-z].+; the next start of a client on this outbox or "
            r"`cms-outbox run` delivers them",
            message,
        ), message
        assert "outage started" not in message

        caplog.clear()
        running = CMSClient(
            token=TOKEN, host=sandbox.url, database_url=sqlite_url, connect_timeout=0.2
        )
        with caplog.at_level(logging.WARNING, logger="cms_outbox"):
            assert wait_until(lambda: running.flusher.breaker.paused == "outage")
            running.close()
        messages = [r.getMessage() for r in caplog.records]
        assert [m.split(":")[0] for m in messages] == [
            "outage started",
            "3 events not delivered yet, stored in sqlite",
        ], messages


def test_close_with_a_refused_token_says_why_and_that_a_valid_one_is_needed(
    caplog: pytest.LogCaptureFixture, sqlite_url: str, sandbox: Sandbox
) -> None:
    client = CMSClient(token="not-the-token", host=sandbox.url, database_url=sqlite_url)
    client.track_lead("signup", "user_1", click_id="c")
    assert wait_until(lambda: client.flusher.breaker.paused == "auth")
    with caplog.at_level(logging.WARNING, logger="cms_outbox"):
        client.close()
    [record] = [r for r in caplog.records if "not delivered yet" in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert re.fullmatch(
        rf"1 event not delivered yet, stored in {re.escape(client.outbox)}: the CMS service "
        r"rejected the token \(HTTP 401: .+\); the next start of a client on this outbox or "
        r"`cms-outbox run`, with a valid token, delivers it",
        record.getMessage(),
    ), record.getMessage()


def test_close_warns_once_without_credentials(
    caplog: pytest.LogCaptureFixture, database_url: str
) -> None:
    if database_url.startswith("postgresql"):  # trust authentication ignores the password
        url = make_url(database_url).set(password="s3cret-password")
        database_url = url.render_as_string(hide_password=False)
    client = CMSClient(
        token="t", host=closed_port(), database_url=database_url, connect_timeout=0.2,
        final_flush_timeout=60,  # the refused probe ends it at once: only a hang waits this long
    )  # fmt: skip
    event = client.track_lead("signup", "user_left_behind", click_id="c")
    with caplog.at_level(logging.WARNING, logger="cms_outbox"):
        client.close()
        client.close()
    warnings = [r.getMessage() for r in caplog.records if "not delivered yet" in r.getMessage()]
    assert warnings == [
        f"1 event not delivered yet, stored in {client.outbox}: the CMS service is "
        "unreachable, connection refused (nothing listens at the host and port); the next "
        "start of a client on this outbox or `cms-outbox run` delivers it"
    ]
    assert "s3cret" not in client.outbox and "postgres@" not in client.outbox
    with CMSClient(database_url=database_url, flush="off") as check:
        assert check.result(event.event_id).state.value == "pending"


def test_an_enqueue_only_client_does_not_warn(
    caplog: pytest.LogCaptureFixture, sqlite_url: str
) -> None:
    """A worker beside a daemon leaves its events to the daemon by design: no warning."""
    client = CMSClient(database_url=sqlite_url, flush="off")
    client.track_lead("signup", "user_1", click_id="c")
    with caplog.at_level(logging.WARNING, logger="cms_outbox"):
        client.close()
    assert caplog.records == []


def test_a_short_script_delivers_its_handful_at_exit_within_the_burst(
    shared_sandbox: Sandbox, tmp_path: Path
) -> None:
    """Five events at the default pacing (60 per minute) all leave at exit: the burst.

    The script's clock is frozen, so no token comes back while it runs: the five leave
    on the burst alone, however long this machine takes to send them.
    """
    script = textwrap.dedent(
        """
        import sys
        from datetime import datetime, timezone
        from cms_outbox import CMSClient
        frozen = datetime.now(timezone.utc)
        client = CMSClient(token=sys.argv[1], host=sys.argv[2], database_url=sys.argv[3],
                           clock=lambda: frozen, final_flush_timeout=60)
        for n in range(5):
            client.track_lead("signup", f"burst_{n}", click_id=f"c_{n}")
        """
    )
    path = tmp_path / "outbox.db"
    before = len(shared_sandbox.accepted)
    done = subprocess.run(
        [sys.executable, "-c", script, TOKEN, shared_sandbox.url, f"sqlite:///{path}"],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert len(shared_sandbox.accepted) - before == 5
    with CMSClient(database_url=f"sqlite:///{path}", flush="off") as check:
        assert check.store.count_by_state() == {"delivered": 5}


def test_a_stopped_pass_gives_back_the_tokens_of_rows_it_did_not_send(tmp_path: Path) -> None:
    """The exit flush sends the burst's worth at once: rows the stopped background pass had
    queued, unsent, do not cost a token, so the last one does not wait for the next.

    The clock is frozen: no token is ever refilled, so an event whose token was lost would
    wait for one in vain and stay pending.
    """
    url = f"sqlite:///{tmp_path / 'outbox.db'}"
    with Sandbox(token=TOKEN, latency=0.3, limits=Limits(60, 60)) as sandbox:
        held = int(burst(Quota(60, 60)))  # what the budget holds at the advertised 60/min
        client = CMSClient(
            token=TOKEN, host=sandbox.url, database_url=url, workers=1, clock=FakeClock(),
            final_flush_timeout=30,
        )  # fmt: skip
        client.track_lead("signup", "first", click_id="c_0")
        assert wait_until(lambda: client.store.count_by_state() == {"delivered": 1})
        for n in range(1, held):
            client.track_lead("signup", f"user_{n}", click_id=f"c_{n}")
        # One request on the wire and one queued behind it when close() stops the pass.
        assert wait_until(lambda: client.flusher.in_flight == 2)
        client.close()
    with CMSClient(database_url=url, flush="off") as check:
        assert check.store.count_by_state() == {"delivered": held}
        budget = check.store.with_budget(lambda budget: (budget, budget))
    assert len(sandbox.requests) == held  # every token paid for a request
    assert budget.tokens < 1
