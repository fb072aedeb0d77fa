"""Do dead deferred setups kept in the outbox slow delivery or enqueueing down?

Deferred setups die whenever the service rejects a click id, and dead rows are kept for
30 days, so an ordinary outbox holds many. With 0, 1,000 and 10,000 dead setups stored
(each with the follow-up it blocks and a sale tracked after it died), in one run:

- drain: ``client.flush()`` of a backlog of unrelated customers (``rate_limit=None``);
- enqueue: ``track_lead`` latency (p50, p99) with the background flusher delivering what
  the calls enqueue, as in an application. With ``durability="normal"``: the disk's fsync,
  the same in every row, would otherwise drown what is measured, how long the flusher's
  transactions hold the write lock that every enqueue needs.

``--quick`` stores 0, 30 and 300 dead setups and sends 100 events, to show the script
works (no figure to read).

    python benchmarks/dead_setups.py [--quick]
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    TOKEN,
    emit,
    lead,
    median,
    migrated_outbox,
    parse_args,
    percentile,
    ratio,
    remote_sandbox,
    table,
    target,
    wait_until,
)

from cms_outbox import CMSClient

CUSTOMERS = 1000
WORKERS = 8


def seed(path: Path, url: str, dead: int) -> None:
    """Store ``dead`` deferred setups the service rejected, each with the follow-up it
    blocked, and one more follow-up each, tracked after the setup died."""
    options = {"token": TOKEN, "host": url, "flush": "off", "durability": "normal"}
    with CMSClient(database_url=migrated_outbox(path), **options) as client:
        for n in range(dead):
            customer = f"rejected_{n:06d}"
            client.track_lead("lead_captured", customer, click_id=f"bad_{n}", mode="deferred")
            client.track_lead("kyc_completed", customer)
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE cms_outbox_events SET attempts = 1, last_status_code = 422, "
            "state = CASE WHEN mode = 'deferred' THEN 'dead' ELSE 'blocked' END"
        )
    with CMSClient(database_url=f"sqlite:///{path}", **options) as client:
        for n in range(dead):  # the application keeps tracking these customers
            client.track_sale("purchase", f"rejected_{n:06d}", f"inv_{n}", 100, "USD")


def drain(path: Path, url: str, events: int) -> dict[str, Any]:
    client = CMSClient(
        token=TOKEN, host=url, database_url=f"sqlite:///{path}", flush="off",
        rate_limit=None, workers=WORKERS,
    )  # fmt: skip
    for i in range(events):
        client.track_lead(**lead(i, CUSTOMERS))
    began = time.perf_counter()
    report = client.flush()
    elapsed = time.perf_counter() - began
    client.close()
    return {
        "delivered": report.delivered,
        "seconds": round(elapsed, 3),
        "per_s": round(report.delivered / elapsed, 1),
        "left": report.pending,
    }


def enqueue(path: Path, url: str, calls: int) -> dict[str, Any]:
    """``track_lead`` one call after another while the background flusher delivers them."""
    client = CMSClient(
        token=TOKEN, host=url, database_url=f"sqlite:///{path}", rate_limit=None,
        workers=WORKERS, durability="normal",
    )  # fmt: skip
    latencies = []
    for i in range(calls):
        began = time.perf_counter()
        client.track_lead(**lead(10_000_000 + i, CUSTOMERS))
        latencies.append((time.perf_counter() - began) * 1000)
    delivered = wait_until(lambda: client.store.count_by_state().get("pending", 0) == 0, 120)
    client.close()
    return {
        "calls": calls,
        "p50_ms": round(median(latencies), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
        "max_ms": round(max(latencies), 3),
        "all_delivered": delivered,
    }


def main() -> None:
    args = parse_args(__doc__ or "")
    events = calls = 100 if args.quick else 3000
    stored = (0, 30, 300) if args.quick else (0, 1000, 10000)
    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp, remote_sandbox() as sandbox:
        for dead in stored:
            path = Path(tmp) / f"dead_{dead}.db"
            seed(path, sandbox.url, dead)
            sandbox.call("reset")
            results[dead] = {"drain": drain(path, sandbox.url, events)}
            results[dead]["enqueue"] = enqueue(path, sandbox.url, calls)

    table(
        f"drain {events:,} events, then {calls:,} track_lead calls with the background flusher",
        ["dead setups", "drained/s", "left", "track_lead p50 ms", "p99 ms", "max ms"],
        [(dead, r["drain"]["per_s"], r["drain"]["left"], r["enqueue"]["p50_ms"],
          r["enqueue"]["p99_ms"], r["enqueue"]["max_ms"]) for dead, r in results.items()],
    )  # fmt: skip
    print()
    base = results[0]
    ratios: dict[str, float] = {}
    targets: dict[str, Any] = {}
    for dead in stored[1:]:
        run = results[dead]
        ratios[f"drain_{dead}_vs_0"] = ratio(run["drain"]["per_s"], base["drain"]["per_s"])
        ratios[f"p99_{dead}_vs_0"] = ratio(run["enqueue"]["p99_ms"], base["enqueue"]["p99_ms"])
        targets[f"drain_{dead}"] = target(
            f"drain with {dead:,} dead / with none", ratios[f"drain_{dead}_vs_0"], ">=", 0.5
        )
        targets[f"p99_ratio_{dead}"] = target(
            f"track_lead p99 with {dead:,} dead / with none", ratios[f"p99_{dead}_vs_0"], "<=", 3
        )
        targets[f"p99_ms_{dead}"] = target(
            f"track_lead p99 ms with {dead:,} dead", run["enqueue"]["p99_ms"], "<", 20
        )
    targets["all_delivered"] = target(
        "runs with events left undelivered",
        sum(r["drain"]["left"] > 0 or not r["enqueue"]["all_delivered"] for r in results.values()),
        "<=",
        0,
    )
    emit(
        {
            "benchmark": "dead_setups",
            "quick": args.quick,
            "events": events,
            "calls": calls,
            "results": {str(dead): run for dead, run in results.items()},
            "ratios": ratios,
            "targets": targets,
        }
    )


if __name__ == "__main__":
    main()
