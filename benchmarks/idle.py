"""How much does an idle daemon write to its outbox?

A ``cms-outbox run`` daemon on a SQLite outbox that holds an ordinary day's state
(delivered history, dead events, a blocked follow-up holding back its customer's next
event, a retry due in an hour) and has nothing to send. Over 10 idle minutes (2 s
with ``--quick``, scaled to 10 minutes) it measures, from ``/proc/PID/io``, the bytes
the daemon's writes put on the disk (``write_bytes``) and passed to ``write()``
(``wchar``), and the growth of the outbox's files. Heartbeats are part of the figure.
Then one event is enqueued: that the daemon delivers it shows it was awake throughout
(a pass every second reads the outbox from SQLite's page cache, so no read reaches
``rchar``; its context switches are shown too).

    python benchmarks/idle.py [--quick]
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import TOKEN, emit, lead, migrated_outbox, parse_args, table, target, wait_until
from sqlalchemy import update

from cms_outbox import CMSClient
from cms_outbox.sandbox import Sandbox
from cms_outbox.schema import events

TEN_MINUTES = 600.0
BUDGET = 64 * 1024  # bytes per 10 idle minutes
SETTLE = 60.0  # seconds at most for the daemon's start-up writes to end


def process_io(pid: int) -> dict[str, int]:
    """The counters of ``/proc/PID/io`` (Linux)."""
    text = Path(f"/proc/{pid}/io").read_text()
    return {key: int(value) for key, value in (line.split(": ") for line in text.splitlines())}


def wake_ups(pid: int) -> int:
    """Voluntary context switches of every thread of the process: it sleeps and wakes."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


def files_size(database: Path) -> int:
    names = [database, *(database.with_name(database.name + s) for s in ("-wal", "-shm"))]
    return sum(path.stat().st_size for path in names if path.exists())


def accumulate(url: str, sandbox: Sandbox, delivered: int) -> dict[str, int]:
    """An outbox after a day's traffic: delivered, dead, blocked, held and a retry not due."""
    with CMSClient(token=TOKEN, host=sandbox.url, database_url=url, flush="off",
                   rate_limit=0) as client:  # fmt: skip
        for i in range(delivered):
            client.track_lead(**lead(i))
        client.flush(60)
        sandbox.set_faults(force_status=422, force_count=9)
        for i in range(9):
            client.track_lead("signup", f"rejected_{i}", click_id=f"clk_{i}")
        client.flush(60)
        sandbox.set_faults(force_status=422, force_count=1)
        client.track_lead("signup", "held", click_id="clk_held", mode="deferred")
        client.flush(60)  # the deferred setup is dead: its follow-ups wait for a retry
        sandbox.clear_faults()
        client.track_lead("login", "held")  # blocked
        client.track_sale("purchase", "held", "inv_held", 4999, "USD")  # held behind it
        client.flush(60)
        sandbox.set_faults(force_status=503, force_count=1, retry_after="3600")
        client.track_lead("signup", "later", click_id="clk_later")
        client.flush(60)
        sandbox.clear_faults()
        # Retried in an hour, as a long Retry-After makes it with a larger max_backoff (the
        # default caps a backoff at 5 minutes, which would end the idle time).
        with client.engine.begin() as conn:
            conn.execute(
                update(events)
                .where(events.c.customer_external_id == "later")
                .values(next_attempt_at=time.time() + 3600)
            )
        return client.store.count_by_state()


def settle(pid: int, deadline: float, quiet: float) -> None:
    """Until ``quiet`` seconds pass in which the daemon wakes and writes nothing."""
    while time.monotonic() < deadline:
        before, woke = process_io(pid), wake_ups(pid)
        time.sleep(quiet)
        if process_io(pid)["wchar"] == before["wchar"] and wake_ups(pid) > woke:
            return


def measure(seconds: float, quiet: float, delivered: int) -> dict[str, Any]:
    logging.getLogger("cms_outbox").setLevel(logging.ERROR)  # the setup's dead-letter lines
    with tempfile.TemporaryDirectory() as tmp, Sandbox(token=TOKEN) as sandbox:
        database = Path(tmp) / "outbox.db"
        url = migrated_outbox(database)
        states = accumulate(url, sandbox, delivered)
        env = {**os.environ, "CMS_BEARER_TOKEN": TOKEN, "CMS_HOST": sandbox.url}
        log_path = Path(tmp) / "daemon.log"
        with log_path.open("w") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "cms_outbox", "run", "--database-url", url],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                started = wait_until(lambda: "delivering" in log_path.read_text(), timeout=SETTLE)
                assert started, log_path.read_text()
                settle(daemon.pid, time.monotonic() + SETTLE, quiet)
                before, size_before = process_io(daemon.pid), files_size(database)
                woke, began = wake_ups(daemon.pid), time.monotonic()
                requests = len(sandbox.requests)
                time.sleep(seconds)
                after, size_after = process_io(daemon.pid), files_size(database)
                requests = len(sandbox.requests) - requests
                woke = wake_ups(daemon.pid) - woke
                with CMSClient(database_url=url, flush="off") as client:
                    client.track_lead("signup", "after_idle", click_id="clk_after")
                delivered = sandbox.wait_for(
                    lambda sb: any(a.customer_external_id == "after_idle" for a in sb.accepted),
                    timeout=SETTLE,
                )
                elapsed = time.monotonic() - began
            finally:
                daemon.terminate()
                daemon.wait(60)
    delta = {key: after[key] - before[key] for key in ("wchar", "write_bytes")}
    scale = TEN_MINUTES / elapsed
    return {
        "seconds": round(elapsed, 1),
        "states": states,
        "wake_ups_per_10min": round(woke * scale),
        "wchar_per_10min": round(delta["wchar"] * scale),
        "write_bytes_per_10min": round(delta["write_bytes"] * scale),
        "file_growth_per_10min": round((size_after - size_before) * scale),
        "requests_while_idle": requests,
        "delivered_after_idle": delivered,
        "daemon_exit": daemon.returncode,
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    # Quick: 2 idle seconds after 1 quiet one, 50 delivered events (no figure to read).
    seconds, quiet, delivered = (2.0, 1.0, 50) if args.quick else (TEN_MINUTES, 2.0, 500)
    result = measure(seconds, quiet, delivered)
    table(
        f"idle daemon, {result['seconds']} s measured, per 10 minutes (bytes)",
        ["measure", "bytes"],
        [
            ["write_bytes (reached the disk)", result["write_bytes_per_10min"]],
            ["wchar (passed to write())", result["wchar_per_10min"]],
            ["outbox files' growth", result["file_growth_per_10min"]],
        ],
    )
    print(f"outbox states: {result['states']}; daemon woke {result['wake_ups_per_10min']:,} "
          "times per 10 minutes")  # fmt: skip
    written = result["wchar_per_10min"]
    emit(
        {
            "benchmark": "idle",
            "quick": args.quick,
            **result,
            "ratios": {
                "written_to_budget": round(written / BUDGET, 4),
                "disk_to_budget": round(result["write_bytes_per_10min"] / BUDGET, 4),
            },
            "targets": {
                "bytes_written_per_10_idle_minutes": target(
                    "bytes written (write()) per 10 idle minutes", written, "<", BUDGET
                ),
                # Page-cache accounting: a commit dirties whole 4 KB pages of the WAL (a
                # frame straddles two) and of its -shm index, about five per commit.
                "disk_bytes_per_10_idle_minutes": target(
                    "bytes reaching the disk (write_bytes) per 10 idle minutes",
                    result["write_bytes_per_10min"],
                    "<",
                    BUDGET,
                ),
                "requests_while_idle": target(
                    "requests sent while idle (nothing was due)",
                    float(result["requests_while_idle"]),
                    "==",
                    0.0,
                ),
                "delivered_after_idle": target(
                    "an event enqueued after the idle time delivered",
                    float(result["delivered_after_idle"]),
                    "==",
                    1.0,
                ),
            },
        }
    )


if __name__ == "__main__":
    main()
