"""The writer side of ``tail.py``: processes whose threads call on a schedule, timed.

In the ``track_lead`` runs each call's time is split into Python (building the event,
outside the store), waiting for another thread's group commit, waiting for the write
lock, and writing (the INSERTs and the commit: WAL write, fsync, any checkpoint), by
wrapping the store's insert, its group commit's lock and its connection.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
import uuid
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from _common import lead

from cms_outbox import CMSClient, StorageError

INTERVAL = 0.005  # seconds between one thread's calls
PARTS = ("python", "group_wait", "lock", "write")
RAW_INSERT = (
    "INSERT INTO cms_outbox_events (event_id, kind, customer_external_id, click_id, payload, "
    "state, attempts, next_attempt_at, created_at) VALUES (?, 'lead', ?, ?, ?, 'pending', 0, ?, ?)"
)
RAW_PAYLOAD = '{"eventName":"signup_completed","clickId":"click_0123","x":"' + "y" * 300 + '"}'


class Parts(threading.local):
    """Seconds the current thread spent in each part of its current call."""

    def __init__(self) -> None:
        self.store = self.lock = self.write = 0.0


class TimedLock:
    """The enqueue's write lock, timing the wait for it (``BEGIN IMMEDIATE`` adds to it)."""

    def __init__(self, lock: Any, parts: Parts) -> None:
        self._lock = lock
        self._parts = parts

    def __enter__(self) -> None:
        began = time.perf_counter()
        self._lock.__enter__()
        self._parts.lock += time.perf_counter() - began

    def __exit__(self, *exc_info: object) -> None:
        self._lock.__exit__(*exc_info)


class TimedConnection:
    """The enqueue connection: BEGIN counts as waiting for the lock, the rest as writing
    (a lone INSERT commits itself, so its fsync is in its write)."""

    def __init__(self, conn: sqlite3.Connection, parts: Parts) -> None:
        self._conn = conn
        self._parts = parts

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def execute(self, sql: str, *params: Any) -> sqlite3.Cursor:
        began = time.perf_counter()
        cursor = self._conn.execute(sql, *params)
        if sql.startswith("BEGIN"):
            self._parts.lock += time.perf_counter() - began
        else:
            self._parts.write += time.perf_counter() - began
        return cursor

    def commit(self) -> None:
        began = time.perf_counter()
        self._conn.commit()
        self._parts.write += time.perf_counter() - began


def instrument(client: CMSClient, parts: Parts) -> None:
    """Time the store's insert and its group commit's lock and statements (this process)."""
    store = client.store
    insert = store.insert

    def timed_insert(*args: Any) -> Any:
        began = time.perf_counter()
        try:
            return insert(*args)
        finally:
            parts.store = time.perf_counter() - began

    store.insert = timed_insert  # type: ignore[method-assign]
    group = store._group
    assert group is not None
    group._write_lock = TimedLock(group._write_lock, parts)
    connect = group._connect
    group._connect = lambda: TimedConnection(connect(), parts)  # type: ignore[assignment,return-value]


class Writers:
    """``threads`` writer threads of one process, run for a segment at a time."""

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def run(self, kind: str, path: Path, start: float, seconds: float) -> dict[str, Any]:
        parts = Parts()
        client = None
        if kind != "raw":
            client = CMSClient(database_url=f"sqlite:///{path}", flush="off")
            instrument(client, parts)
        results: list[dict[str, Any]] = [{} for _ in range(self.threads)]

        def work(n: int) -> None:
            conn = None if client else _raw_connection(path)
            rng = random.Random(os.getpid() * 100 + n)
            samples: list[float] = []
            split: list[tuple[float, ...]] = []
            locked = other = 0
            slot = start + rng.random() * INTERVAL  # threads out of step with each other
            i = os.getpid() * 1_000_000 + n * 100_000
            while slot < start + seconds:
                pause = slot - time.time()
                if pause > 0:
                    time.sleep(pause)
                parts.store = parts.lock = parts.write = 0.0
                began = time.perf_counter()
                try:
                    if client is not None:
                        client.track_lead(**lead(i))
                    else:
                        _raw_insert(conn, i)  # type: ignore[arg-type]
                except (StorageError, sqlite3.Error) as exc:
                    locked += "database is locked" in str(exc)
                    other += "database is locked" not in str(exc)
                else:
                    total = time.perf_counter() - began
                    samples.append(total)
                    if client is not None:
                        own = parts.lock + parts.write
                        split.append((total - parts.store, max(0.0, parts.store - own),
                                      parts.lock, parts.write))  # fmt: skip
                i += 1
                slot = max(slot + INTERVAL, time.time())  # late: no burst to catch up
            if conn is not None:
                conn.close()
            results[n] = {"samples": samples, "split": split, "locked": locked, "other": other}

        threads = [threading.Thread(target=work, args=(n,)) for n in range(self.threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if client is not None:
            client.close()
        return {
            "samples": [s for r in results for s in r["samples"]],
            "split": [s for r in results for s in r["split"]],
            "locked": sum(r["locked"] for r in results),
            "other": sum(r["other"] for r in results),
        }


def _raw_connection(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    return conn


def _raw_insert(conn: sqlite3.Connection, i: int) -> None:
    now = time.time()
    conn.execute(RAW_INSERT, (str(uuid.uuid4()), f"customer_{i % 1000:06d}",
                              f"click_{i:09d}", RAW_PAYLOAD, now, now))  # fmt: skip


def writer_process(pipe: Connection, threads: int) -> None:
    writers = Writers(threads)
    pipe.send("ready")
    while True:
        message = pipe.recv()
        if message is None:
            return
        pipe.send(writers.run(*message))
