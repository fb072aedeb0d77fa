"""Memory and disk of a large backlog: enqueue it, drain it, purge it.

Enqueues 1,000,000 leads with ``track_lead``
(``durability="normal"``, no flusher), drains them with ``client.flush()``
(``rate_limit=None``, 16 workers) against a sandbox in its own process, then purges
the delivered events and VACUUMs. Reports this process's RSS (from ``/proc``; peak by
a sampler and ``getrusage``) and the database's size at each step; persist-queue's
bytes per item for the same leads are the anchor. ``--quick`` goes through the same
steps with 1,000 leads, to show the script works (no figure to read).

    python benchmarks/backlog.py [--quick]
"""

from __future__ import annotations

import gc
import os
import resource
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import persistqueue
from _common import (
    TOKEN,
    RemoteSandbox,
    emit,
    lead,
    migrated_outbox,
    parse_args,
    remote_sandbox,
    table,
    target,
)

from cms_outbox import CMSClient

MB = 2**20
CUSTOMERS = 1000


def rss() -> int:
    """Resident set size of this process now, in bytes (Linux ``/proc``)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Samples RSS in a thread; ``take()`` returns the peak since the last ``take()``."""

    def __init__(self, every: float = 0.05) -> None:
        self._peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self._peak = max(self._peak, rss())

    def take(self) -> int:
        peak, self._peak = max(self._peak, rss()), rss()
        return peak

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def disk(path: Path) -> dict[str, int]:
    """File sizes and page counts of the outbox database (WAL checkpointed first)."""
    with sqlite3.connect(path, timeout=30) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size, pages, free = (
            conn.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("page_size", "page_count", "freelist_count")
        )
    return {
        "file_bytes": path.stat().st_size,
        "used_bytes": (pages - free) * page_size,
        "free_bytes": free * page_size,
    }


def drain(client: CMSClient, sandbox: RemoteSandbox, budget: float) -> tuple[int, int, float]:
    """Flush in slices until nothing is pending or ``budget`` s pass; the sandbox forgets
    what it accepted after each slice (its memory is not ours to measure).

    :returns: (delivered, accepted by the sandbox, seconds).
    """
    delivered = accepted = 0
    began = time.monotonic()
    while time.monotonic() - began < budget:
        report = client.flush(timeout=min(20.0, budget - (time.monotonic() - began)))
        delivered += report.delivered
        accepted += sandbox.summary()["accepted"]
        sandbox.call("reset")
        if report.pending == 0:
            break
    return delivered, accepted, time.monotonic() - began


def persist_queue_bytes(directory: Path, items: int) -> float:
    """Bytes per item of persist-queue's SQLiteAckQueue holding the same leads (pickled)."""
    queue = persistqueue.SQLiteAckQueue(str(directory / "persist-queue"), multithreading=True)
    queue._putter.execute("PRAGMA synchronous = NORMAL")  # only to fill it faster
    for i in range(items):
        queue.put(lead(i, CUSTOMERS))
    queue.close()
    return disk(directory / "persist-queue" / "data.db")["used_bytes"] / items


def main() -> None:
    args = parse_args(__doc__ or "")
    events, warm_up, anchor_items = (1000, 100, 200) if args.quick else (1_000_000, 2000, 20000)
    budget = 4 * 3600.0  # seconds of draining at most
    with tempfile.TemporaryDirectory() as tmp, remote_sandbox() as sandbox:
        directory = Path(tmp)
        path = directory / "outbox.db"
        client = CMSClient(
            token=TOKEN, host=sandbox.url, database_url=migrated_outbox(path), flush="off",
            durability="normal", rate_limit=None, workers=16,
        )  # fmt: skip
        for i in range(warm_up):  # warm up every code path before the baseline
            client.track_lead(**lead(-i - 1, CUSTOMERS))
        drain(client, sandbox, 60)
        client.purge(delivered_older_than=0)
        gc.collect()
        sampler = PeakRss()
        base, empty = rss(), disk(path)

        began = time.monotonic()
        for i in range(events):
            client.track_lead(**lead(i, CUSTOMERS))
        enqueue_s = time.monotonic() - began
        enqueue_peak, full = sampler.take(), disk(path)
        full_rss = rss()

        delivered, accepted, drain_s = drain(client, sandbox, budget)
        drain_peak, drained = sampler.take(), disk(path)
        drained_rss = rss()

        purged = client.purge(delivered_older_than=0)
        purge_peak, after_purge = sampler.take(), disk(path)
        client.close()
        gc.collect()
        back_rss = rss()
        sampler.stop()
        with sqlite3.connect(path) as conn:
            conn.execute("VACUUM")
        vacuumed = disk(path)
        anchor = persist_queue_bytes(directory, anchor_items)

    per_event = (full["used_bytes"] - empty["used_bytes"]) / events
    growth = max(enqueue_peak, drain_peak, purge_peak) - base  # empty -> full -> empty
    steps = [
        ("empty outbox (after warm-up)", base, base, empty),
        (f"{events:,} pending (enqueued in {enqueue_s:.0f} s)", full_rss, enqueue_peak, full),
        (f"{delivered:,} drained in {drain_s:.0f} s", drained_rss, drain_peak, drained),
        (f"{purged:,} purged, client closed", back_rss, purge_peak, after_purge),
        ("VACUUM", back_rss, purge_peak, vacuumed),
    ]
    table(
        "this process's memory and the outbox database, step by step",
        ["after", "RSS MB", "peak RSS MB", "db file MB", "db used MB", "db free MB"],
        [(name, now / MB, peak / MB, d["file_bytes"] / MB, d["used_bytes"] / MB,
          d["free_bytes"] / MB) for name, now, peak, d in steps],
    )  # fmt: skip
    table(
        "per pending event",
        ["store", "bytes per event"],
        [("cms_outbox (row + indexes)", per_event), ("persist-queue SQLiteAckQueue", anchor)],
    )
    lifetime_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(f"getrusage peak RSS of the whole run (imports included): {lifetime_peak / MB:.1f} MB")
    print()
    targets = {
        "rss_growth_mb": target(
            "peak RSS growth, enqueue + drain + purge (MB)", growth / MB, "<", 50
        ),
        "bytes_per_pending_event": target("db bytes per pending event", per_event, "<", 1024),
        "purge_frees_pages": target(
            "db MB freed by purge", (drained["used_bytes"] - after_purge["used_bytes"]) / MB, ">",
            0,
        ),
        "vacuum_shrinks_file": target(
            "db file MB returned by VACUUM",
            (after_purge["file_bytes"] - vacuumed["file_bytes"]) / MB, ">", 0,
        ),
    }  # fmt: skip
    targets["drained_all"] = target("share drained", delivered / events, ">=", 1.0)
    emit(
        {
            "benchmark": "backlog",
            "quick": args.quick,
            "events": events,
            "delivered": delivered,
            "drained_share": round(delivered / events, 3),
            "accepted_by_sandbox": accepted,
            "purged": purged,
            "seconds": {"enqueue": round(enqueue_s, 1), "drain": round(drain_s, 1)},
            "rss_mb": {
                "empty": round(base / MB, 1),
                "full": round(full_rss / MB, 1),
                "drained": round(drained_rss / MB, 1),
                "back": round(back_rss / MB, 1),
                "peak_enqueue": round(enqueue_peak / MB, 1),
                "peak_drain": round(drain_peak / MB, 1),
                "peak_purge": round(purge_peak / MB, 1),
                "growth": round(growth / MB, 1),
                "back_vs_empty": round((back_rss - base) / MB, 1),
                "lifetime_peak": round(lifetime_peak / MB, 1),
            },
            "db_bytes": {
                "empty": empty,
                "full": full,
                "drained": drained,
                "purged": after_purge,
                "vacuumed": vacuumed,
            },  # fmt: skip
            "bytes_per_pending_event": round(per_event, 1),
            "persist_queue_bytes_per_item": round(anchor, 1),
            "ratios": {"bytes_per_event_vs_persist_queue": round(per_event / anchor, 3)},
            "targets": targets,
        }
    )


if __name__ == "__main__":
    main()
