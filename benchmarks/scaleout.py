"""How does drain throughput scale with the number of daemons on one PostgreSQL outbox?

For 1, 2 and 4 ``cms-outbox run`` processes (``--rate-limit 0 --workers 8``): the
daemons start on an empty outbox (a database of its own) and wait on LISTEN; one
transaction stores a backlog of leads over many customers and notifies them; they
drain it against a sandbox answering after 20 ms, served by its own process
(``python -m cms_outbox sandbox``) so that it shares no GIL with any client.
events/s = backlog / (commit of the backlog -> the last ``delivered_at``). Each run also
checks that the sandbox accepted every event exactly once and in per-customer order,
and reports each daemon's share (its "delivered N" line at SIGTERM) and the CPU
time the daemons used per event while draining.

``--quick`` drains 80 events with 1 and 2 daemons, to show the script works (no figure
to read).

Needs a PostgreSQL server where it may create and drop databases:
``--database-url``, else env ``CMS_OUTBOX_TEST_POSTGRES_URL``. Without one it prints
why and a JSON line marked ``skipped``.

    python benchmarks/scaleout.py [--quick] [--database-url postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import (
    DaemonProcess,
    admin,
    arguments,
    backlog_rows,
    emit,
    fresh_database,
    ratio,
    sandbox_process,
    table,
    target,
    wait_until,
)
from sqlalchemy import Engine, create_engine, func, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from cms_outbox import CMSClient
from cms_outbox.schema import NOTIFY_CHANNEL, attempts, events

DAEMON_COUNTS = (1, 2, 4)  # (1, 2) with --quick
SCALING = {2: 1.5, 4: 2.0}  # the least speed-up over one daemon each count is to reach
LATENCY_MS = 20
WORKERS = 8
STOPPED = re.compile(r"stopped after .* \(delivered (\d+), retried (\d+), dead (\d+)\)")


def parse_args() -> argparse.Namespace:
    parser = arguments((__doc__ or "").split("\n\n")[0], server="a PostgreSQL server")
    return parser.parse_args()


# -- processes -----------------------------------------------------------------------


class Daemon(DaemonProcess):
    """A drain daemon (no pacing); the ``application_name`` tells its connections apart."""

    def __init__(self, database_url: str, host: str, log_path: Path) -> None:
        self.app_name = f"cms-bench-{uuid.uuid4().hex[:12]}"
        options = ["--rate-limit", "0", "--workers", str(WORKERS), "--interval", "1"]
        super().__init__(database_url, host, log_path, options, env={"PGAPPNAME": self.app_name})

    def listening(self, engine: Engine) -> bool:
        with engine.connect() as conn:
            return bool(
                conn.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :n "
                         "AND query LIKE 'LISTEN %'"),
                    {"n": self.app_name},
                ).scalar_one()
            )  # fmt: skip

    def cpu_seconds(self) -> float:
        """CPU time used so far (Linux ``/proc``; 0 elsewhere)."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def delivered(self) -> int:
        """SIGTERM, wait; returns what it says it delivered."""
        log = self.stop()
        match = STOPPED.search(log)
        if match is None:
            raise RuntimeError(f"daemon ended without its summary:\n{log[-2000:]}")
        return int(match.group(1))


# -- the outbox ------------------------------------------------------------------------


def store_backlog(engine: Engine, rows: Sequence[dict[str, Any]]) -> float:
    """One transaction: insert, ANALYZE, NOTIFY. Returns when the commit began.

    ANALYZE gives the planner the statistics autovacuum keeps on a live table; a table
    never analysed and bulk-filled gets a lease plan that reads every pending row.
    """
    with engine.connect() as conn:
        conn.begin()
        for start in range(0, len(rows), 5000):
            conn.execute(insert(events), list(rows[start : start + 5000]))
        conn.execute(text(f"ANALYZE {events.name}"))
        conn.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))
        committed_at = time.time()
        conn.commit()
    return committed_at


def delivered(engine: Engine) -> tuple[int, float | None]:
    with engine.connect() as conn:
        count, last = conn.execute(
            select(func.count(), func.max(events.c.delivered_at)).where(
                events.c.state == "delivered"
            )
        ).one()
    return int(count), last


def fifo_violations(accepted: Sequence[dict[str, Any]]) -> int:
    """Customers whose events were accepted out of enqueue order (click ids count up)."""
    seen: dict[str, list[str]] = defaultdict(list)
    for item in accepted:
        seen[item["customer_external_id"]].append(item["payload"]["clickId"])
    return sum(clicks != sorted(clicks) for clicks in seen.values())


# -- one run -----------------------------------------------------------------------------


def drain(url: str, sandbox_url: str, daemons: int, rows: Sequence[dict[str, Any]],
          directory: Path) -> dict[str, Any]:  # fmt: skip
    """Start ``daemons`` daemons on the empty outbox at ``url``, store the backlog, drain it."""
    admin(sandbox_url, "reset", {})
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:  # the same empty outbox for every run
        conn.execute(text(f"TRUNCATE {events.name}, {attempts.name} RESTART IDENTITY"))
    started = [Daemon(url, sandbox_url, directory / f"daemon-{daemons}-{n}.log")
               for n in range(daemons)]  # fmt: skip
    try:
        for daemon in started:
            if not wait_until(lambda d=daemon: d.listening(engine), timeout=120, step=0.1):
                raise RuntimeError(f"daemon not ready:\n{daemon.log_path.read_text()}")
        cpu_before = sum(daemon.cpu_seconds() for daemon in started)
        committed_at = store_backlog(engine, rows)
        if not wait_until(lambda: delivered(engine)[0] == len(rows), timeout=900, step=0.05):
            raise RuntimeError(f"not drained: {delivered(engine)[0]} of {len(rows)}")
        cpu = sum(daemon.cpu_seconds() for daemon in started) - cpu_before
        last = delivered(engine)[1]
    finally:
        for daemon in started:  # all at once: they stop in parallel
            daemon.terminate()
        shares = [daemon.delivered() for daemon in started]
        engine.dispose()
    accepted = admin(sandbox_url, "accepted")["accepted"]
    keys = {item["idempotency_key"] for item in accepted}
    assert last is not None
    seconds = last - committed_at
    return {
        "daemons": daemons,
        "events": len(rows),
        "seconds": round(seconds, 3),
        "per_s": round(len(rows) / seconds, 1),
        "accepted": len(accepted),
        "duplicates": len(accepted) - len(keys),
        "fifo_violations": fifo_violations(accepted),
        "shares": shares,
        "daemon_cpu_ms_per_event": round(cpu / len(rows) * 1000, 2),
    }


def skipped(quick: bool, reason: str) -> None:
    print(f"scaleout: skipped: {reason}")
    emit({"benchmark": "scaleout", "quick": quick, "skipped": reason, "results": {},
          "ratios": {}, "targets": {}})  # fmt: skip


def main() -> None:
    args = parse_args()
    events_per_run, customers = (80, 20) if args.quick else (3000, 500)
    counts = DAEMON_COUNTS[:2] if args.quick else DAEMON_COUNTS
    if not args.database_url or make_url(args.database_url).get_backend_name() != "postgresql":
        skipped(args.quick, "no PostgreSQL URL (--database-url or CMS_OUTBOX_TEST_POSTGRES_URL)")
        return
    try:
        probe = create_engine(args.database_url, poolclass=NullPool)
        with probe.connect() as conn:
            conn.execute(text("SELECT 1"))
        probe.dispose()
    except SQLAlchemyError as exc:
        skipped(args.quick, f"PostgreSQL unreachable: {str(exc).splitlines()[0]}")
        return
    load = os.getloadavg()[0]
    rows = backlog_rows(events_per_run, customers)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp, \
            sandbox_process("--latency", str(LATENCY_MS)) as sandbox_url, \
            fresh_database(args.database_url) as url:  # fmt: skip
        CMSClient(database_url=url, flush="off").close()  # migrate before any daemon starts
        for count in counts:
            results[str(count)] = drain(url, sandbox_url, count, rows, Path(tmp))

    table(
        f"draining {events_per_run:,} events over {customers:,} customers, sandbox latency "
        f"{LATENCY_MS} ms, {WORKERS} workers per daemon ({os.cpu_count()} CPUs, "
        f"load {load:.1f} at start)",
        ["daemons", "seconds", "events/s", "vs 1 daemon", "per-daemon shares",
         "daemon CPU ms / event"],
        [(r["daemons"], r["seconds"], r["per_s"], ratio(r["per_s"], results["1"]["per_s"]),
          " / ".join(str(s) for s in r["shares"]), r["daemon_cpu_ms_per_event"])
         for r in results.values()],
    )  # fmt: skip
    table(
        "exactly once, in order",
        ["daemons", "accepted", "duplicates", "customers out of order"],
        [(r["daemons"], r["accepted"], r["duplicates"], r["fifo_violations"])
         for r in results.values()],
    )  # fmt: skip
    print()
    ratios = {f"{n}_vs_1": ratio(results[str(n)]["per_s"], results["1"]["per_s"])
              for n in counts[1:]}  # fmt: skip
    runs = list(results.values())
    targets = {
        **{f"{n}_vs_1": target(f"{n} daemons / 1 daemon", ratios[f"{n}_vs_1"], ">=", SCALING[n])
           for n in counts[1:]},
        "all_accepted": target(
            "events not accepted", sum(r["events"] - r["accepted"] for r in runs), "<=", 0
        ),
        "duplicates": target("events accepted twice", sum(r["duplicates"] for r in runs), "<=", 0),
        "fifo": target("customers out of order", sum(r["fifo_violations"] for r in runs), "<=", 0),
        "every_daemon_works": target(
            "daemons that delivered nothing",
            sum(share == 0 for r in runs for share in r["shares"]), "<=", 0,
        ),
    }  # fmt: skip
    emit(
        {
            "benchmark": "scaleout",
            "quick": args.quick,
            "events": events_per_run,
            "customers": customers,
            "latency_ms": LATENCY_MS,
            "cpus": os.cpu_count(),
            "load_at_start": round(load, 2),
            "results": results,
            "events_per_s": {key: r["per_s"] for key, r in results.items()},
            "ratios": ratios,
            "targets": targets,
        }
    )


if __name__ == "__main__":
    main()
