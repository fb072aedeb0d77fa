"""An idle daemon does not write to its outbox, measured from ``/proc/PID/io``.

Every SQLite commit appends at least a page to the WAL: a daemon that wrote on every
pass grew an idle outbox's WAL by megabytes an hour. ``benchmarks/idle.py`` measures
the full 10 minutes; this test measures a short window of passes 20 times as frequent.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cms_outbox import CMSClient
from cms_outbox.sandbox import Sandbox
from tests.conftest import TOKEN, wait_until

pytestmark = pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs /proc/PID/io")

INTERVAL = 0.05  # seconds between the daemon's idle passes (default 1)
WINDOW = 5.0  # seconds measured: 100 passes


def written(pid: int) -> int:
    """Bytes the process passed to ``write()`` plus those its writes put on the disk."""
    counters = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(counters["wchar"]) + int(counters["write_bytes"])


def test_an_idle_daemon_with_held_dead_and_later_events_writes_nothing(
    sqlite_url: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    with CMSClient(
        token=TOKEN, host=sandbox.url, database_url=sqlite_url, flush="off", rate_limit=0
    ) as client:
        client.track_lead("signup", "delivered", click_id="clk_1")
        client.flush(30)
        sandbox.set_faults(force_status=422, force_count=1)
        client.track_lead("signup", "held", click_id="clk_2", mode="deferred")
        client.flush(30)  # dead setup
        client.track_lead("login", "held")  # blocked behind it
        sandbox.set_faults(force_status=503, force_count=1, retry_after="3600")
        client.track_lead("signup", "later", click_id="clk_3")
        client.flush(30)  # due again in an hour
        assert client.store.count_by_state() == {
            "delivered": 1, "dead": 1, "blocked": 1, "pending": 1,
        }  # fmt: skip
    sandbox.clear_faults()
    log_path = tmp_path / "daemon.log"
    env = {**os.environ, "CMS_BEARER_TOKEN": TOKEN, "CMS_HOST": sandbox.url}
    with log_path.open("w") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "cms_outbox", "run", "--database-url", sqlite_url,
             "--interval", str(INTERVAL)],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            assert wait_until(lambda: "delivering" in log_path.read_text(), timeout=60)
            # Start-up (migration check, the first pass) may write; then it must stop.
            before = written(daemon.pid)
            assert wait_until(lambda: _quiet_for(daemon.pid, 1.0), timeout=30), (
                f"the daemon kept writing: {written(daemon.pid) - before} bytes"
            )
            start = written(daemon.pid)
            time.sleep(WINDOW)
            idle_bytes = written(daemon.pid) - start
            print(f"idle daemon wrote {idle_bytes} bytes in {WINDOW:g}s of {INTERVAL:g}s passes")
            assert idle_bytes == 0

            # It was awake all along: a new event is delivered at once.
            with CMSClient(database_url=sqlite_url, flush="off") as app:
                event_id = app.track_lead("signup", "new", click_id="clk_4").event_id
            assert sandbox.wait_for(lambda sb: sb.accepted_count(event_id) == 1, timeout=30)
        finally:
            daemon.terminate()
            daemon.wait(60)
    assert daemon.returncode == 0, log_path.read_text()


def _quiet_for(pid: int, seconds: float) -> bool:
    before = written(pid)
    time.sleep(seconds)
    return written(pid) == before
