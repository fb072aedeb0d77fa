"""Delivery across processes: crashes, shared pacing, fork, exit. Real processes, real sockets."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from cms_outbox import CMSClient, EventState
from cms_outbox.pacing import SAFETY, Quota, burst
from cms_outbox.sandbox import Sandbox
from tests.conftest import TOKEN, wait_until

pytestmark = pytest.mark.slow
STALL = 60.0  # seconds without the awaited progress that mean a hang, not a slow machine

FLUSHER = textwrap.dedent(
    """
    import sys, time
    from cms_outbox import CMSClient
    url, host = sys.argv[1], sys.argv[2]
    client = CMSClient(token={token!r}, host=host, database_url=url, flush="background",
                       rate_limit=None, interval=0.1, connect_timeout=1.0, read_timeout=8.0,
                       lease_seconds=10.0)
    print("ready", flush=True)
    time.sleep(3600)
    """
).format(token=TOKEN)
# A flusher on the test's clock, which every process reads from a file (time passes only
# when the test writes it).
PACED_FLUSHER = textwrap.dedent(
    """
    import sys, time
    from datetime import datetime, timezone
    from pathlib import Path
    from cms_outbox import CMSClient
    url, host, clock_file = sys.argv[1], sys.argv[2], Path(sys.argv[3])

    def clock():
        return datetime.fromtimestamp(float(clock_file.read_text()), timezone.utc)

    client = CMSClient(token={token!r}, host=host, database_url=url, flush="background",
                       rate_limit=600, interval=0.1, clock=clock)
    print("ready", flush=True)
    time.sleep(3600)
    """
).format(token=TOKEN)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def start_script(
    processes: list[subprocess.Popen[str]], script: str, *args: str
) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    processes.append(process)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def test_flusher_killed_mid_pass_loses_nothing_and_doubles_nothing(
    make_client: Callable[..., CMSClient],
    sqlite_url: str,
    sandbox: Sandbox,
    processes: list[subprocess.Popen[str]],
) -> None:
    writer = make_client()

    def enqueue(numbers: range) -> list[str]:
        return [writer.track_lead("signup", f"user-{n % 40}", click_id="c").event_id
                for n in numbers]  # fmt: skip

    ids = enqueue(range(50))
    victim = start_script(processes, FLUSHER, sqlite_url, sandbox.url)
    assert sandbox.wait_for(lambda sb: len(sb.accepted) == 50, timeout=STALL)
    # From now on each answer comes 2 s late (well within the read timeout): whenever the
    # kill lands, the victim has requests waiting for theirs, their rows leased.
    sandbox.set_faults(stall=2.0)
    ids += enqueue(range(50, 400))
    assert sandbox.wait_for(lambda sb: len(sb.requests) > 50, timeout=STALL)  # a pass is at work
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    leased_at_kill = writer.store.count_by_state().get("in_flight", 0)
    assert leased_at_kill > 0  # the kill landed mid-pass
    sandbox.clear_faults()

    rescuer = make_client(token=TOKEN, host=sandbox.url, rate_limit=None)
    assert wait_until(lambda: rescuer.flush().pending == 0, timeout=STALL)  # after lease expiry
    assert rescuer.store.count_by_state() == {"delivered": 400}
    assert all(sandbox.accepted_count(event_id) == 1 for event_id in ids)
    assert len(sandbox.accepted) == 400
    sent = Counter(r.idempotency_key for r in sandbox.requests)
    resent = [key for key, count in sent.items() if count > 1]
    # Only a row whose answer the crash swallowed is sent again, and the key dedupes it.
    assert len(resent) <= leased_at_kill
    assert all(count == 2 for key, count in sent.items() if key in resent)


def accepted_up_to(allowed: int) -> Callable[[Sandbox], bool]:
    """True once ``allowed`` events are accepted; fails the test at once beyond them."""

    def reached(sandbox: Sandbox) -> bool:
        assert len(sandbox.accepted) <= allowed
        return len(sandbox.accepted) == allowed

    return reached


class SharedClock:
    """Epoch seconds in a file that every process reads: moves only when ``advance`` says."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.now = time.time()
        self.advance(0.0)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        scratch = self.path.with_suffix(".new")
        scratch.write_text(repr(self.now))
        os.replace(scratch, self.path)  # a reader sees the old time or the new, whole


def test_two_flusher_processes_share_the_rate_limit(
    make_client: Callable[..., CMSClient],
    sqlite_url: str,
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],
) -> None:
    """Both pace by one budget in the outbox. Their clock is the test's and stands still
    between steps, when no token comes back: how many requests each step lets through is
    exact, however fast the machine sends them."""
    writer = make_client()
    for n in range(100):
        writer.track_lead("signup", f"user-{n}", click_id="c")
    clock = SharedClock(tmp_path / "clock")  # from now: every event is due
    held = int(burst(Quota(600, 60)))
    per_second = 600 / 60 * SAFETY  # pacing keeps a little below the limit
    step = 0.4  # seconds: under a burst's worth of tokens each, so none is lost to the cap
    with Sandbox(token=TOKEN, rate_limit=600, clock=clock) as sandbox:
        flushers = [
            start_script(processes, PACED_FLUSHER, sqlite_url, sandbox.url, str(clock.path))
            for _ in range(2)
        ]
        elapsed = 0.0
        while True:
            allowed = min(100, held + math.floor(per_second * elapsed + 1e-9))
            assert sandbox.wait_for(accepted_up_to(allowed), timeout=STALL), (elapsed, allowed)
            if allowed == 100:
                break
            clock.advance(step)
            elapsed += step
        statuses = Counter(r.status for r in sandbox.requests)
    assert statuses == {200: 100}  # zero 429s
    # The sandbox counts a request before its flusher records the answer: wait for that.
    assert wait_until(lambda: writer.store.count_by_state() == {"delivered": 100})
    # Both flushers ran through every step: a budget of its own would have let either one
    # send at once. Which of them wins a step's tokens is the scheduler's choice.
    assert all(process.poll() is None for process in flushers)


def test_two_background_clients_on_one_file_never_send_twice(
    make_client: Callable[..., CMSClient], sandbox: Sandbox
) -> None:
    options: dict[str, Any] = {"token": TOKEN, "host": sandbox.url, "rate_limit": None,
                               "flush": "background", "interval": 0.05}  # fmt: skip
    first, second = make_client(**options), make_client(**options)
    ids = []
    for n in range(300):
        client = first if n % 2 else second
        ids.append(client.track_lead("signup", f"user-{n % 30}", click_id="c").event_id)
    assert wait_until(lambda: first.store.count_by_state() == {"delivered": 300}, timeout=60)
    sent = Counter(r.idempotency_key for r in sandbox.requests)
    assert sorted(str(key) for key in sent) == sorted(ids) and set(sent.values()) == {1}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_gets_a_working_background_client(
    make_client: Callable[..., CMSClient], sandbox: Sandbox
) -> None:
    parent = make_client(token=TOKEN, host=sandbox.url, rate_limit=None, flush="background")
    parent.track_lead("signup", "parent", click_id="c")
    assert sandbox.wait_for(lambda sb: len(sb.accepted) == 1, timeout=STALL)
    pid = os.fork()
    if pid == 0:  # the child: its own engine, sessions and scheduler
        code = 1
        try:
            event = parent.track_lead("signup", "child", click_id="c")
            deadline = time.monotonic() + STALL
            while time.monotonic() < deadline:
                if parent.result(event.event_id).state is EventState.DELIVERED:
                    code = 0
                    break
                time.sleep(0.02)
        finally:
            os._exit(code)
    deadline = time.monotonic() + 2 * STALL
    while True:  # never hang the suite on a child deadlocked at fork
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the forked child did not finish within {2 * STALL:g} s")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0
    assert sorted(a.customer_external_id for a in sandbox.accepted) == ["child", "parent"]
    parent.track_lead("signup", "parent-again", click_id="c")  # the parent still works too
    assert sandbox.wait_for(lambda sb: len(sb.accepted) == 3, timeout=STALL)


def test_interpreter_exit_runs_a_bounded_final_flush(sqlite_url: str, sandbox: Sandbox) -> None:
    script = textwrap.dedent(
        f"""
        from cms_outbox import CMSClient
        client = CMSClient(token={TOKEN!r}, host={sandbox.url!r}, database_url={sqlite_url!r},
                           rate_limit=None, interval=3600)
        for n in range(20):
            client.track_lead("signup", f"user-{{n}}", click_id="c")
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=2 * STALL)
    assert len(sandbox.accepted) == 20


def test_final_flush_gives_up_on_time_and_keeps_events(sqlite_url: str, sandbox: Sandbox) -> None:
    sandbox.set_faults(stall=30.0)
    script = textwrap.dedent(
        f"""
        from cms_outbox import CMSClient
        client = CMSClient(token={TOKEN!r}, host={sandbox.url!r}, database_url={sqlite_url!r},
                           rate_limit=None, read_timeout=2.0, final_flush_timeout=1.0)
        client.track_lead("signup", "user", click_id="c")
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=2 * STALL)
    sandbox.clear_faults()
    client = CMSClient(database_url=sqlite_url, flush="off")
    try:
        assert client.store.count_by_state() == {"pending": 1}
    finally:
        client.close()
