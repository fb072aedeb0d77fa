"""What does ``track_lead`` cost the caller, beside the alternatives?

Median microseconds per call of ``CMSClient.track_lead`` (``flush="off"``, durability
full and normal) beside a raw ``sqlite3`` insert+commit with the same pragmas,
persist-queue's ``SQLiteAckQueue.put`` and the official SDK's blocking ``track_lead``
against a local sandbox (0 ms latency). The contenders take turns in rounds, each round
starting with the next one, so the machine's noise hits them alike. The same raw INSERT
of the row ``track_lead`` stores, into the outbox's own table and indexes, shows what
the indexes cost and what is left to the library. Then 4 threads and 4 processes
enqueue at once. The targets are for the default durability (full); durability normal
is shown for comparison.
``--quick`` makes a few calls of each, with 2 threads and 2 processes, to show the script
works (no figure to read).

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

from _common import (
    TOKEN,
    emit,
    lead,
    median,
    migrated_outbox,
    parse_args,
    ratio,
    remote_sandbox,
    table,
    target,
)

from cms_outbox import CMSClient, StorageError

PAYLOAD = "x" * 400  # the raw baseline's row: a 400-byte payload plus an id


@dataclass
class Contender:
    name: str
    call: Callable[[int], object]
    close: Callable[[], object]
    calls_per_round: int


def outbox(directory: Path, durability: str, calls: int) -> Contender:
    url = migrated_outbox(directory / f"outbox-{durability}.db")
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
    """The same raw INSERT, but of the row ``track_lead`` stores for the same lead (its
    eleven columns, its JSON payload written by ``json.dumps``) into the outbox's table
    and indexes."""
    path = directory / f"raw-schema-{synchronous}.db"
    migrated_outbox(path)
    conn = _connect(path, synchronous)
    sql = (
        "INSERT INTO cms_outbox_events (event_id, kind, customer_external_id, click_id, mode, "
        "invoice_id, payload, state, attempts, next_attempt_at, created_at) "
        "VALUES (?, 'lead', ?, ?, NULL, NULL, ?, 'pending', 0, ?, ?)"
    )

    def call(i: int) -> None:
        kwargs, now = lead(i), time.time()
        payload = json.dumps(
            {"clickId": kwargs["click_id"], "eventName": kwargs["event_name"],
             "customerExternalId": kwargs["customer_external_id"],
             "timestamp": "2025-01-01T00:00:00.000Z", "customerName": kwargs["customer_name"],
             "customerEmail": kwargs["customer_email"]},
            separators=(",", ":"),
        )  # fmt: skip
        conn.execute(sql, (str(uuid.uuid4()), kwargs["customer_external_id"],
                           kwargs["click_id"], payload, now, now))  # fmt: skip

    name = f"  raw sqlite3, outbox schema ({synchronous.lower()})"
    return Contender(name, call, conn.close, calls)


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    return conn


def persist_queue(directory: Path, synchronous: str, calls: int) -> Contender:
    """``put`` of the same lead; ``full`` is persist-queue's default (SQLite's, in WAL mode)."""
    import persistqueue  # here, not at the top: the spawned writers import this module

    queue = persistqueue.SQLiteAckQueue(str(directory / f"pq-{synchronous}"), multithreading=True)
    queue._putter.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    return Contender(
        f"persist-queue SQLiteAckQueue.put ({synchronous})",
        lambda i: queue.put(lead(i)),
        queue.close,
        calls,
    )


def official_sdk(url: str, calls: int) -> Contender:
    from cutmeshort import CMSClient as SdkClient  # as persistqueue above

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
# Durability full on one database file; the same with raw sqlite3 shows what SQLite's
# own locking costs (a waiting writer polls under the busy timeout).


class Writer:
    """Enqueues leads into ``path``: through ``CMSClient`` (``kind="outbox"``) or raw sqlite3."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind = kind
        if kind == "outbox":
            self.client = CMSClient(database_url=f"sqlite:///{path}", flush="off")
        else:
            self.conn = _connect(path, "FULL")

    def write(self, i: int) -> None:
        if self.kind == "outbox":
            self.client.track_lead(**lead(i))
        else:
            self.conn.execute("INSERT INTO events (payload) VALUES (?)", (PAYLOAD,))

    def run(self, first: int, count: int) -> tuple[int, int, int]:
        """``count`` writes: (stored, "database is locked" errors, other storage errors)."""
        done = locked = other = 0
        for i in range(first, first + count):
            try:
                self.write(i)
                done += 1
            except (StorageError, sqlite3.Error) as exc:
                if "database is locked" in str(exc):
                    locked += 1
                else:
                    other += 1
        return done, locked, other

    def close(self) -> None:
        (self.client if self.kind == "outbox" else self.conn).close()


def prepare(kind: str, path: Path) -> None:
    if kind == "outbox":
        migrated_outbox(path)  # before any writer starts
    else:
        with _connect(path, "FULL") as conn:
            conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)")


def in_threads(kind: str, path: Path, workers: int, count: int) -> dict[str, Any]:
    """Threads of one process: sharing one client (as a web app's request threads would),
    or with a raw connection each."""
    prepare(kind, path)
    shared = Writer(kind, path) if kind == "outbox" else None
    writers = [shared or Writer(kind, path) for _ in range(workers)]
    tallies = [(0, 0, 0)] * workers

    def work(n: int) -> None:
        tallies[n] = writers[n].run(n * count, count)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    for writer in set(writers):
        writer.close()
    return _summarise(tallies, elapsed)


def _process_worker(
    kind: str, path: Path, first: int, count: int, ready: Any, go: Any, out: Any
) -> None:
    writer = Writer(kind, path)
    ready.put(None)
    go.wait()
    began = time.monotonic()
    tally = writer.run(first, count)
    out.put((began, time.monotonic(), *tally))
    writer.close()


def in_processes(kind: str, path: Path, workers: int, count: int) -> dict[str, Any]:
    """Processes with a writer each; the clock starts once all are ready."""
    prepare(kind, path)
    context = multiprocessing.get_context("spawn")
    ready, out, go = context.Queue(), context.Queue(), context.Event()
    processes = [
        context.Process(target=_process_worker, args=(kind, path, n * count, count, ready, go, out))
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


def concurrency(
    directory: Path, writers: int, per_worker: int, repeats: int
) -> dict[str, dict[str, Any]]:
    """One thread, then ``writers`` threads and processes; each setting ``repeats`` times, in
    rotation (the disk's fsync time drifts); medians."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for n in range(repeats):
        for kind in ("outbox", "raw"):
            for label, run, workers, count in (
                ("1_thread", in_threads, 1, writers * per_worker),
                (f"{writers}_threads", in_threads, writers, per_worker),
                (f"{writers}_processes", in_processes, writers, per_worker),
            ):
                path = directory / f"{kind}-{label}-{n}.db"
                runs.setdefault(f"{kind}_{label}", []).append(run(kind, path, workers, count))
    results = {}
    for key, results_of_key in runs.items():
        rates = [r["per_s"] for r in results_of_key]
        results[key] = {
            "events": sum(r["events"] for r in results_of_key),
            "per_s": median(rates),
            "locked_errors": sum(r["locked_errors"] for r in results_of_key),
            "other_errors": sum(r["other_errors"] for r in results_of_key),
        }
    for key, result in results.items():
        one = results[key.split("_")[0] + "_1_thread"]["per_s"]
        result["vs_1_thread"] = ratio(result["per_s"], one)
    return results


def main() -> None:
    args = parse_args(__doc__ or "")
    # Many short rounds: the machine's (and the disk's) speed drifts within seconds.
    rounds, calls, sdk_calls, warm_up = (2, 5, 3, 3) if args.quick else (80, 25, 5, 20)
    writers, per_worker, repeats = (2, 5, 1) if args.quick else (4, 500, 3)
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
            "persist_queue_put": persist_queue(directory, "full", calls),
            "persist_queue_put_normal": persist_queue(directory, "normal", calls),
            "sdk_track_lead": official_sdk(sandbox.url, sdk_calls),
        }
        samples: dict[str, list[float]] = {key: [] for key in contenders}
        for contender in contenders.values():  # warm up: connections, statement caches
            timed_calls(Contender(contender.name, contender.call, contender.close, warm_up), 10**8)
        keys = list(contenders)
        for r in range(rounds):
            # Each round starts one contender later: none always runs first, right after the
            # SDK's requests and the writers that do not fsync (whose dirty pages the round's
            # first fsync may have to write out too).
            for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
                samples[key] += timed_calls(contenders[key], r * contenders[key].calls_per_round)
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
        concurrent = concurrency(directory, writers, per_worker, repeats)
    table(
        f"concurrent enqueue, durability full, median of {repeats} run(s) each",
        ["writers", "events", "events/s", "x 1 thread", "database is locked", "other errors"],
        [(key, r["events"], r["per_s"], r["vs_1_thread"], r["locked_errors"], r["other_errors"])
         for key, r in concurrent.items()],
    )  # fmt: skip
    print()
    ratios = {
        "track_lead_full_vs_raw_full": ratio(us["track_lead_full"], us["raw_sqlite3_full"]),
        "track_lead_full_vs_raw_outbox_schema_full": ratio(
            us["track_lead_full"], us["raw_sqlite3_outbox_schema_full"]
        ),
        "raw_outbox_schema_full_vs_raw_full": ratio(
            us["raw_sqlite3_outbox_schema_full"], us["raw_sqlite3_full"]
        ),
        "track_lead_normal_vs_raw_normal": ratio(us["track_lead_normal"], us["raw_sqlite3_normal"]),
        "track_lead_normal_vs_raw_outbox_schema_normal": ratio(
            us["track_lead_normal"], us["raw_sqlite3_outbox_schema_normal"]
        ),
        "track_lead_full_vs_persist_queue": ratio(us["track_lead_full"], us["persist_queue_put"]),
        "track_lead_normal_vs_persist_queue_normal": ratio(
            us["track_lead_normal"], us["persist_queue_put_normal"]
        ),
        "sdk_vs_track_lead_full": ratio(us["sdk_track_lead"], us["track_lead_full"]),
        "threads_vs_one": concurrent[f"outbox_{writers}_threads"]["vs_1_thread"],
        "processes_vs_one": concurrent[f"outbox_{writers}_processes"]["vs_1_thread"],
        "raw_threads_vs_one": concurrent[f"raw_{writers}_threads"]["vs_1_thread"],
        "raw_processes_vs_one": concurrent[f"raw_{writers}_processes"]["vs_1_thread"],
    }
    locked = sum(r["locked_errors"] for key, r in concurrent.items() if key.startswith("outbox"))
    targets = {
        "full_vs_raw": target("track_lead / raw sqlite3 (full)",
                              ratios["track_lead_full_vs_raw_full"], "<=", 1.5),
        "full_vs_raw_outbox_schema": target(
            "track_lead / raw sqlite3 into the outbox schema (full)",
            ratios["track_lead_full_vs_raw_outbox_schema_full"], "<=", 1.2),
        "full_vs_persist_queue": target("track_lead (full) / persist-queue put",
                                        ratios["track_lead_full_vs_persist_queue"], "<", 1),
        "threads_vs_one": target(f"{writers} threads / 1 thread", ratios["threads_vs_one"],
                                 ">=", 1),
        "processes_vs_one": target(f"{writers} processes / 1 thread",
                                   ratios["processes_vs_one"], ">=", 1),
        "no_locked_errors": target("'database is locked' errors", locked, "<=", 0),
    }  # fmt: skip
    emit(
        {
            "benchmark": "enqueue",
            "quick": args.quick,
            "median_us": {key: round(value, 1) for key, value in us.items()},
            "ratios": ratios,
            "concurrency": concurrent,
            "targets": targets,
        }
    )


if __name__ == "__main__":
    main()
