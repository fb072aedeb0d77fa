"""An idle daemon does not write to its outbox, measured from ``/proc/PID/io``.

Every SQLite commit appends at least a page to the WAL: a daemon that wrote on every
pass grew an idle outbox's WAL by megabytes an hour. ``benchmarks/idle.py`` measures
the full 10 minutes; these tests measure short windows: idle passes 20 times as frequent
write nothing at all, and heartbeats 60 times as frequent (``heartbeat.EVERY`` set to 1 s
in the daemon's process) give the cost of one beat, scaled to the ten beats of 10 idle
minutes. The scaling holds because the passes write nothing and a beat's ``write()``
calls do not depend on how often it comes.
"""

from __future__ import annotations

import os
import sqlite3
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
BUDGET = 64 * 1024  # bytes an idle daemon may write in 10 minutes, heartbeats included
# The daemon, with heartbeats every ``argv[1]`` seconds instead of heartbeat.EVERY.
DAEMON = (
    "import sys; from cms_outbox import heartbeat; heartbeat.EVERY = float(sys.argv[1]); "
    "from cms_outbox.cli import main; sys.exit(main(sys.argv[2:]))"
)


def counters(pid: int) -> dict[str, int]:
    lines = Path(f"/proc/{pid}/io").read_text().splitlines()
    return {key: int(value) for key, value in (line.split(": ") for line in lines)}


def written(pid: int) -> int:
    """Bytes the process passed to ``write()`` plus those its writes put on the disk."""
    io = counters(pid)
    return io["wchar"] + io["write_bytes"]


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
        # Heartbeats an hour apart: however long a loaded machine takes to get here, none
        # falls in the window (their cost is measured by the next test).
        daemon = subprocess.Popen(
            [sys.executable, "-c", DAEMON, "3600", "run", "--database-url", sqlite_url,
             "--interval", str(INTERVAL)],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            assert wait_until(lambda: "delivering" in log_path.read_text(), timeout=60)
            # Start-up (migration check, the first pass) may write; then it must stop.
            before = written(daemon.pid)
            assert wait_until(lambda: _quiet_for(daemon.pid, 1.0)), (
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
            assert sandbox.wait_for(lambda sb: sb.accepted_count(event_id) == 1, timeout=60)
        finally:
            daemon.terminate()
            daemon.wait(60)
    assert daemon.returncode == 0, log_path.read_text()


def next_beat(url: str, *, after: float | None) -> float:
    """The daemon's ``beat_at`` once it is later than ``after`` (its first beat: None)."""
    seen: list[float] = []

    def beaten() -> bool:
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            [(beat,)] = conn.execute("SELECT max(beat_at) FROM cms_outbox_flushers").fetchall()
        if beat is not None and (after is None or beat > after):
            seen.append(beat)
        return bool(seen)

    assert wait_until(beaten, step=0.05), f"no beat after {after}"
    return seen[0]


def _quiet_for(pid: int, seconds: float) -> bool:
    before = written(pid)
    time.sleep(seconds)
    return written(pid) == before


def test_heartbeats_are_the_only_idle_writes_and_stay_under_64_kb_per_10_minutes(
    sqlite_url: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    from cms_outbox import heartbeat

    CMSClient(database_url=sqlite_url, flush="off").close()  # an empty, migrated outbox
    every, window = 1.0, 10.0
    log_path = tmp_path / "daemon.log"
    env = {**os.environ, "CMS_BEARER_TOKEN": TOKEN, "CMS_HOST": sandbox.url}
    with log_path.open("w") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-c", DAEMON, str(every), "run", "--database-url", sqlite_url,
             "--interval", str(INTERVAL)],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            assert wait_until(lambda: "delivering" in log_path.read_text(), timeout=60)
            # Paced by the beats themselves: past start-up and the first beat, then from
            # one beat to the one ``window`` later, however late a loaded machine runs them.
            first = next_beat(sqlite_url, after=None)
            start = next_beat(sqlite_url, after=first)
            before = counters(daemon.pid)["wchar"]
            end = start
            while end - start < window:
                end = next_beat(sqlite_url, after=end)
            wchar = counters(daemon.pid)["wchar"] - before
            beats = round((end - start) / every)  # they come every ``every`` s, or later
        finally:
            daemon.terminate()
            daemon.wait(60)
    assert daemon.returncode == 0, log_path.read_text()
    per_beat = wchar / beats
    per_ten_minutes = per_beat * 600.0 / heartbeat.EVERY
    print(
        f"{wchar} bytes written in {beats:.1f} beats: {per_beat:.0f} per beat, "
        f"{per_ten_minutes:.0f} per 10 idle minutes at one beat every {heartbeat.EVERY:g}s"
    )
    assert per_beat > 0  # the beats were measured: they are the only writes
    assert per_ten_minutes < BUDGET


def test_a_pass_with_nothing_to_do_does_not_wait_for_the_write_lock(
    sqlite_url: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    """An application's own long transaction may hold SQLite's write lock: a pass that
    finds nothing to send must not queue behind it (it would wait out the busy timeout,
    then fail), even right after a pass that leased, sent and recorded."""
    with CMSClient(
        token=TOKEN, host=sandbox.url, database_url=sqlite_url, flush="off", rate_limit=None
    ) as client:
        client.track_lead("signup", "customer", click_id="clk_1")
        assert client.flush(30).delivered == 1
        holder = sqlite3.connect(tmp_path / "outbox.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            report = client.flush(30)
        finally:
            holder.rollback()
            holder.close()
    assert (report.delivered, report.pending) == (0, 0)
