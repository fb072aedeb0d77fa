"""What does ``track_lead`` cost the caller, beside the alternatives?

Median microseconds per call of ``CMSClient.track_lead`` (``flush="off"``, durability
full and normal) beside a raw ``sqlite3`` insert+commit with the same pragmas,
persist-queue's ``SQLiteAckQueue.put`` and the official SDK's blocking ``track_lead``
against a local sandbox (0 ms latency). The contenders take turns in rounds, so the
machine's noise hits them alike. Then 4 threads and 4 processes enqueue at once.

    python benchmarks/enqueue.py [--quick]
"""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import persistqueue
from _common import (
    TOKEN,
    emit,
    lead,
    median,
    parse_args,
    ratio,
    remote_sandbox,
    table,
    target,
)
from cutmeshort import CMSClient as SdkClient

from cms_outbox import CMSClient, StorageError

PAYLOAD = "x" * 400  # the raw baseline's row: a 400-byte payload plus an id


@dataclass
class Contender:
    name: str
    call: Callable[[int], object]
    close: Callable[[], object]
    calls_per_round: int


def outbox(directory: Path, durability: str, calls: int) -> Contender:
    url = f"sqlite:///{directory / f'outbox-{durability}.db'}"
    client = CMSClient(database_url=url, flush="off", durability=durability)
    return Contender(
        f"cms_outbox track_lead ({durability})",
        lambda i: client.track_lead(**lead(i)),
        client.close,
        calls,
    )


def raw_sqlite(directory: Path, synchronous: str, calls: int) -> Contender:
    """One autocommit INSERT (its own transaction) per call, as the outbox does it."""
    conn = _connect(directory / f"raw-{synchronous}.db", synchronous)
    conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)")
    return Contender(
        f"raw sqlite3 insert+commit ({synchronous.lower()})",
        lambda i: conn.execute("INSERT INTO events (payload) VALUES (?)", (PAYLOAD,)),
        conn.close,
        calls,
    )


def raw_sqlite_outbox_schema(directory: Path, synchronous: str, calls: int) -> Contender:
    """The same raw INSERT, but of an outbox row into the outbox's own table and indexes."""
    path = directory / f"raw-schema-{synchronous}.db"
    CMSClient(database_url=f"sqlite:///{path}", flush="off").close()  # tables via Alembic
    conn = _connect(path, synchronous)
    payload = json.dumps({"eventName": "signup_completed", "x": "y" * 200})
    sql = (
        "INSERT INTO cms_outbox_events (event_id, kind, customer_external_id, click_id, "
        "payload, state, attempts, next_attempt_at, created_at) "
        "VALUES (?, 'lead', ?, ?, ?, 'pending', 0, ?, ?)"
    )

    def call(i: int) -> None:
        now = time.time()
        conn.execute(sql, (str(uuid.uuid4()), f"customer_{i % 1000:06d}", f"click_{i:09d}",
                           payload, now, now))  # fmt: skip

    name = f"  raw sqlite3, outbox schema ({synchronous.lower()})"
    return Contender(name, call, conn.close, calls)


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    return conn


def persist_queue(directory: Path, calls: int) -> Contender:
    queue = persistqueue.SQLiteAckQueue(str(directory / "persist-queue"), multithreading=True)
    mode = queue._putter.execute("PRAGMA synchronous").fetchone()[0]
    synchronous = {0: "off", 1: "normal", 2: "full", 3: "extra"}.get(mode, str(mode))
    return Contender(
        f"persist-queue SQLiteAckQueue.put ({synchronous})",
        lambda i: queue.put(lead(i)),
        queue.close,
        calls,
    )


def official_sdk(url: str, calls: int) -> Contender:
    client = SdkClient(token=TOKEN, host=url)
    return Contender(
        "official SDK track_lead (0 ms)",
        lambda i: client.track_lead(**lead(i)),
        lambda: None,  # its close() raises AttributeError in cutmeshort 1.0.1
        calls,
    )


def timed_calls(contender: Contender, start: int) -> list[float]:
    samples = []
    for i in range(start, start + contender.calls_per_round):
        began = time.perf_counter()
        contender.call(i)
        samples.append((time.perf_counter() - began) * 1e6)
    return samples


# -- several writers at once -----------------------------------------------------------


def _enqueue(client: CMSClient, first: int, count: int) -> tuple[int, int, int]:
    """``count`` calls: (stored, "database is locked" errors, other storage errors)."""
    done = locked = other = 0
    for i in range(first, first + count):
        try:
            client.track_lead(**lead(i))
            done += 1
        except StorageError as exc:
            if "database is locked" in str(exc):
                locked += 1
            else:
                other += 1
    return done, locked, other


def _process_worker(url: str, first: int, count: int, ready: Any, go: Any, out: Any) -> None:
    client = CMSClient(database_url=url, flush="off")
    ready.put(None)
    go.wait()
    began = time.monotonic()
    tally = _enqueue(client, first, count)
    out.put((began, time.monotonic(), *tally))
    client.close()


def in_threads(url: str, workers: int, count: int) -> dict[str, Any]:
    """``workers`` threads sharing one client, as a web app's request threads would."""
    client = CMSClient(database_url=url, flush="off")
    tallies = [(0, 0, 0)] * workers

    def work(n: int) -> None:
        tallies[n] = _enqueue(client, n * count, count)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    client.close()
    return _summarise(tallies, elapsed)


def in_processes(url: str, workers: int, count: int) -> dict[str, Any]:
    """``workers`` processes with a client each; the clock starts once all are ready."""
    CMSClient(database_url=url, flush="off").close()  # the tables exist before they start
    context = multiprocessing.get_context("spawn")
    ready, out, go = context.Queue(), context.Queue(), context.Event()
    processes = [
        context.Process(target=_process_worker, args=(url, n * count, count, ready, go, out))
        for n in range(workers)
    ]
    for process in processes:
        process.start()
    for _ in processes:
        ready.get(timeout=60)
    go.set()
    reports = [out.get(timeout=600) for _ in processes]
    for process in processes:
        process.join()
    elapsed = max(r[1] for r in reports) - min(r[0] for r in reports)
    return _summarise([r[2:] for r in reports], elapsed)


def _summarise(tallies: list[tuple[int, int, int]], elapsed: float) -> dict[str, Any]:
    done = sum(t[0] for t in tallies)
    return {
        "events": done,
        "per_s": round(done / elapsed, 1),
        "locked_errors": sum(t[1] for t in tallies),
        "other_errors": sum(t[2] for t in tallies),
    }


def main() -> None:
    args = parse_args(__doc__ or "")
    rounds, calls, sdk_calls = (3, 100, 50) if args.quick else (10, 1000, 300)
    per_worker = 100 if args.quick else 1000
    with tempfile.TemporaryDirectory() as tmp, remote_sandbox() as sandbox:
        directory = Path(tmp)
        contenders = {
            "track_lead_full": outbox(directory, "full", calls),
            "raw_sqlite3_full": raw_sqlite(directory, "FULL", calls),
            "raw_sqlite3_outbox_schema_full": raw_sqlite_outbox_schema(directory, "FULL", calls),
            "track_lead_normal": outbox(directory, "normal", calls),
            "raw_sqlite3_normal": raw_sqlite(directory, "NORMAL", calls),
            "raw_sqlite3_outbox_schema_normal": raw_sqlite_outbox_schema(
                directory, "NORMAL", calls
            ),
            "persist_queue_put": persist_queue(directory, calls),
            "sdk_track_lead": official_sdk(sandbox.url, sdk_calls),
        }
        samples: dict[str, list[float]] = {key: [] for key in contenders}
        for contender in contenders.values():  # warm up: connections, statement caches
            timed_calls(Contender(contender.name, contender.call, contender.close, 20), 10**8)
        for r in range(rounds):
            for key, contender in contenders.items():
                samples[key] += timed_calls(contender, r * contender.calls_per_round)
        for contender in contenders.values():
            contender.close()
        us = {key: median(values) for key, values in samples.items()}
        base = {key: us["raw_sqlite3_normal" if "normal" in key else "raw_sqlite3_full"]
                for key in us}  # fmt: skip
        table(
            "cost per call (µs); contenders take turns in rounds",
            ["contender", "calls", "median µs", "mean µs", "x raw sqlite3 (same sync)"],
            [
                (c.name, len(samples[key]), us[key], statistics.fmean(samples[key]),
                 ratio(us[key], base[key]))
                for key, c in contenders.items()
            ],
        )  # fmt: skip
        one = in_threads(f"sqlite:///{directory / 'one.db'}", 1, 4 * per_worker)
        threads = in_threads(f"sqlite:///{directory / 'threads.db'}", 4, per_worker)
        processes = in_processes(f"sqlite:///{directory / 'processes.db'}", 4, per_worker)
    concurrency = {"one_thread": one, "threads_4": threads, "processes_4": processes}
    table(
        "concurrent enqueue (durability full, one outbox file per row)",
        ["writers", "events", "events/s", "x one thread", "database is locked", "other errors"],
        [
            (key, r["events"], r["per_s"], ratio(r["per_s"], one["per_s"]),
             r["locked_errors"], r["other_errors"])
            for key, r in concurrency.items()
        ],
    )  # fmt: skip
    print()
    ratios = {
        "track_lead_full_vs_raw_full": ratio(us["track_lead_full"], us["raw_sqlite3_full"]),
        "track_lead_normal_vs_raw_normal": ratio(us["track_lead_normal"], us["raw_sqlite3_normal"]),
        "track_lead_normal_vs_raw_outbox_schema_normal": ratio(
            us["track_lead_normal"], us["raw_sqlite3_outbox_schema_normal"]
        ),
        "track_lead_full_vs_persist_queue": ratio(us["track_lead_full"], us["persist_queue_put"]),
        "sdk_vs_track_lead_full": ratio(us["sdk_track_lead"], us["track_lead_full"]),
        "threads_vs_one": ratio(threads["per_s"], one["per_s"]),
        "processes_vs_one": ratio(processes["per_s"], one["per_s"]),
    }
    locked = threads["locked_errors"] + processes["locked_errors"]
    targets = {
        "full_vs_raw": target("track_lead / raw sqlite3 (full)",
                              ratios["track_lead_full_vs_raw_full"], "<=", 1.5),
        "normal_vs_raw": target("track_lead / raw sqlite3 (normal)",
                                ratios["track_lead_normal_vs_raw_normal"], "<=", 1.5),
        "full_vs_persist_queue": target("track_lead (full) / persist-queue put",
                                        ratios["track_lead_full_vs_persist_queue"], "<", 1),
        "threads_vs_one": target("4 threads / 1 thread", ratios["threads_vs_one"], ">=", 1),
        "processes_vs_one": target("4 processes / 1 thread", ratios["processes_vs_one"], ">=", 1),
        "no_locked_errors": target("'database is locked' errors", locked, "<=", 0),
    }  # fmt: skip
    emit(
        {
            "benchmark": "enqueue",
            "quick": args.quick,
            "median_us": {key: round(value, 1) for key, value in us.items()},
            "ratios": ratios,
            "concurrency": concurrency,
            "targets": targets,
        }
    )


if __name__ == "__main__":
    main()
