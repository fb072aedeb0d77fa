"""Delivery across processes: crashes, shared pacing, fork, exit. Real processes, real sockets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any, Callable

import pytest

from cms_outbox import CMSClient, EventState
from cms_outbox.sandbox import Sandbox
from tests.conftest import TOKEN, wait_until

pytestmark = pytest.mark.slow
STALL = 60.0  # seconds without the awaited progress that mean a hang, not a slow machine

FLUSHER = textwrap.dedent(
    """
    import sys, time
    from cms_outbox import CMSClient
    url, host, rate = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = CMSClient(token={token!r}, host=host, database_url=url, flush="background",
                       rate_limit=rate or None, interval=0.1, connect_timeout=0.5,
                       read_timeout=1.0, lease_seconds=2.0)
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


def start_flusher(
    processes: list[subprocess.Popen[str]], url: str, host: str, rate: int = 0
) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", FLUSHER, url, host, str(rate)],
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
    ids = [writer.track_lead("signup", f"user-{n % 40}", click_id="c").event_id for n in range(400)]
    sandbox.set_faults(latency=0.05)
    victim = start_flusher(processes, sqlite_url, sandbox.url)
    assert wait_until(lambda: len(sandbox.accepted) >= 50, timeout=30)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    leased_at_kill = writer.store.count_by_state().get("in_flight", 0)
    assert leased_at_kill > 0  # the kill landed mid-pass
    sandbox.clear_faults()

    rescuer = make_client(token=TOKEN, host=sandbox.url, rate_limit=None)
    assert wait_until(lambda: rescuer.flush().pending == 0, timeout=30)  # after lease expiry
    assert rescuer.store.count_by_state() == {"delivered": 400}
    assert all(sandbox.accepted_count(event_id) == 1 for event_id in ids)
    assert len(sandbox.accepted) == 400
    sent = Counter(r.idempotency_key for r in sandbox.requests)
    resent = [key for key, count in sent.items() if count > 1]
    # Only a row whose answer the crash swallowed is sent again, and the key dedupes it.
    assert len(resent) <= leased_at_kill
    assert all(count == 2 for key, count in sent.items() if key in resent)


def test_two_flusher_processes_share_the_rate_limit(
    make_client: Callable[..., CMSClient],
    sqlite_url: str,
    processes: list[subprocess.Popen[str]],
) -> None:
    with Sandbox(token=TOKEN, rate_limit=600) as sandbox:
        writer = make_client()
        for n in range(100):
            writer.track_lead("signup", f"user-{n}", click_id="c")
        for _ in range(2):
            start_flusher(processes, sqlite_url, sandbox.url, rate=600)
        assert wait_until(lambda: len(sandbox.accepted) == 100, timeout=60)
        statuses = Counter(r.status for r in sandbox.requests)
        assert statuses == {200: 100}  # zero 429s
        times = sorted(a.received_at for a in sandbox.accepted)
        achieved = (len(times) - 1) / (times[-1] - times[0])  # requests per second
        assert achieved >= 0.9 * 600 / 60
        assert achieved <= 1.05 * 600 / 60


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
