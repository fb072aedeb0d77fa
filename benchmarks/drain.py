"""How fast does a backlog drain, beside raw ``requests`` against the same server?

A backlog over 1,000 customers is drained by ``client.flush()`` (``rate_limit=None``,
16 workers) at 0 ms and 20 ms sandbox latency, beside a sequential
``requests.Session().post`` loop and a 16-thread fan-out (one session per thread).
Then, with a rate limit of 600 per minute on both sides, the achieved rate and the 429s.
``--quick`` drains 200 events and paces 20 at 1,200 per minute, to show the script works
(no figure to read).

    python benchmarks/drain.py [--quick]
"""

from __future__ import annotations

import sqlite3
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import requests
from _common import (
    HEADERS,
    TOKEN,
    RemoteSandbox,
    emit,
    lead,
    migrated_outbox,
    parse_args,
    ratio,
    remote_sandbox,
    table,
    target,
    wire,
)

from cms_outbox import CMSClient

CUSTOMERS = 1000
WORKERS = 16
RATE = 600  # per minute, for the paced run


def backlog(path: Path, url: str, events: int, **options: Any) -> CMSClient:
    """A client (no background flusher) whose outbox holds ``events`` pending leads."""
    client = CMSClient(
        token=TOKEN, host=url, database_url=migrated_outbox(path), flush="off",
        durability="normal", workers=WORKERS, **options,
    )  # fmt: skip
    for i in range(events):
        client.track_lead(**lead(i, CUSTOMERS))
    return client


def drain_outbox(sandbox: RemoteSandbox, path: Path, events: int) -> dict[str, Any]:
    client = backlog(path, sandbox.url, events, rate_limit=None)
    began, cpu = time.perf_counter(), time.process_time()
    report = client.flush()
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    client.close()
    accepted = sandbox.call("accepted")
    return {
        "events": report.delivered,
        "seconds": round(elapsed, 3),
        "per_s": round(report.delivered / elapsed, 1),
        "cpu_ms_per_event": round(cpu / report.delivered * 1000, 3),
        "pending_after": report.pending,
        "accepted": len(accepted),
        "fifo_violations": _fifo_violations(accepted),
        "attempts_recorded": _attempts(path),
    }


def _fifo_violations(accepted: Sequence[Any]) -> int:
    """Customers whose events were accepted out of enqueue order (click ids count up)."""
    seen: dict[str, list[str]] = defaultdict(list)
    for item in accepted:
        seen[item.customer_external_id].append(item.payload["clickId"])
    return sum(clicks != sorted(clicks) for clicks in seen.values())


def _attempts(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM cms_outbox_attempts").fetchone()[0])


def raw_requests(url: str, bodies: Sequence[bytes], threads: int) -> dict[str, Any]:
    """POST every body (with an Idempotency-Key, as we do), from ``threads`` threads."""
    failures = [0] * threads

    def post_all(n: int) -> None:
        with requests.Session() as session:
            for body in bodies[n::threads]:
                headers = {**HEADERS, "Idempotency-Key": str(uuid.uuid4())}
                response = session.post(f"{url}/track/lead", data=body, headers=headers)
                failures[n] += response.status_code != 200

    workers = [threading.Thread(target=post_all, args=(n,)) for n in range(threads)]
    began, cpu = time.perf_counter(), time.process_time()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    done = len(bodies) - sum(failures)
    return {
        "events": done,
        "seconds": round(elapsed, 3),
        "per_s": round(done / elapsed, 1),
        "cpu_ms_per_event": round(cpu / done * 1000, 3),
    }


def paced(directory: Path, events: int, rate: int) -> dict[str, Any]:
    """Drain with ``rate_limit=rate`` against a sandbox enforcing the same limit."""
    with remote_sandbox(rate_limit=rate) as sandbox:
        client = backlog(directory / "paced.db", sandbox.url, events, rate_limit=rate)
        report = client.flush()
        client.close()
        times = sorted(item.received_at for item in sandbox.call("accepted"))
        summary = sandbox.summary()
    half = times[len(times) // 2 :]  # after any initial burst
    per_minute = (len(times) - 1) / (times[-1] - times[0]) * 60
    steady = (len(half) - 1) / (half[-1] - half[0]) * 60
    return {
        "events": report.delivered,
        "allowed_per_min": rate,
        "achieved_per_min": round(per_minute, 1),
        "achieved_vs_allowed": ratio(per_minute, rate),
        "second_half_per_min": round(steady, 1),
        "responses_429": summary["statuses"].get("429", 0),
    }


def main() -> None:
    args = parse_args(__doc__ or "")
    events, paced_events, rate = (200, 20, 2 * RATE) if args.quick else (10000, 300, RATE)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp, remote_sandbox() as sandbox:
        directory = Path(tmp)
        bodies = [wire(i, CUSTOMERS) for i in range(events)]
        for latency in (0.0, 0.02):
            ms = int(latency * 1000)
            # A slice of the backlog shows the sequential loop's rate (~45/s at 20 ms).
            sequential = bodies[: events // (4 if latency == 0 else 20)]
            for key, run in (
                ("cms_outbox", partial(drain_outbox, sandbox, directory / f"{ms}.db", events)),
                ("requests_sequential", partial(raw_requests, sandbox.url, sequential, 1)),
                ("requests_16_threads", partial(raw_requests, sandbox.url, bodies, WORKERS)),
            ):
                sandbox.call("reset")
                sandbox.call("set_faults", latency=latency)
                results[f"{key}_{ms}ms"] = run()
        pace = paced(directory, paced_events, rate)

    table(
        f"draining {events:,} events over {CUSTOMERS:,} customers",
        ["latency", "contender", "events", "seconds", "events/s", "client CPU ms/event"],
        [
            (f"{key.rsplit('_', 1)[1]}", key.rsplit("_", 1)[0], r["events"], r["seconds"],
             r["per_s"], r["cpu_ms_per_event"])
            for key, r in results.items()
        ],
    )  # fmt: skip
    checks = [(key, results[key]) for key in ("cms_outbox_0ms", "cms_outbox_20ms")]
    table(
        "cms_outbox bookkeeping while draining",
        ["run", "accepted", "still pending", "attempts recorded", "customers out of order"],
        [(k, r["accepted"], r["pending_after"], r["attempts_recorded"], r["fifo_violations"])
         for k, r in checks],
    )  # fmt: skip
    table(
        f"paced: rate_limit={rate}/min on the client and the sandbox",
        ["events", "allowed/min", "achieved/min", "achieved / allowed", "2nd half/min", "429s"],
        [(pace["events"], rate, pace["achieved_per_min"], pace["achieved_vs_allowed"],
          pace["second_half_per_min"], pace["responses_429"])],
    )  # fmt: skip
    print()
    ours_0, ours_20 = results["cms_outbox_0ms"]["per_s"], results["cms_outbox_20ms"]["per_s"]
    ratios = {
        "0ms_vs_sequential": ratio(ours_0, results["requests_sequential_0ms"]["per_s"]),
        "0ms_vs_16_threads": ratio(ours_0, results["requests_16_threads_0ms"]["per_s"]),
        "20ms_vs_sequential": ratio(ours_20, results["requests_sequential_20ms"]["per_s"]),
        "20ms_vs_16_threads": ratio(ours_20, results["requests_16_threads_20ms"]["per_s"]),
        "paced_achieved_vs_allowed": pace["achieved_vs_allowed"],
    }
    targets = {
        "20ms_vs_16_threads": target(
            "20 ms: cms_outbox / 16-thread fan-out", ratios["20ms_vs_16_threads"], ">=", 0.95
        ),
        "0ms_vs_sequential": target(
            "0 ms: cms_outbox / sequential loop", ratios["0ms_vs_sequential"], ">=", 1.0
        ),
        "paced_rate": target("paced: achieved / allowed", pace["achieved_vs_allowed"], ">=", 0.95),
        "paced_429s": target("paced: 429 responses", pace["responses_429"], "<=", 0),
        "all_delivered": target(
            "undelivered events", sum(events - r["accepted"] for _, r in checks), "<=", 0
        ),
        "fifo": target("customers out of order", sum(r["fifo_violations"] for _, r in checks),
                       "<=", 0),
    }  # fmt: skip
    emit(
        {
            "benchmark": "drain",
            "quick": args.quick,
            "events": events,
            "results": results,
            "paced": pace,
            "ratios": ratios,
            "targets": targets,
        }
    )


if __name__ == "__main__":
    main()
