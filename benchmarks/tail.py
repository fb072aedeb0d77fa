"""How long does ``track_lead`` keep a request waiting when many writers share one SQLite file?

Writer processes (4 x 2 threads, then 8 x 4) each call once every 5 ms per thread into
one SQLite outbox at full durability. Three contenders take turns in rounds, each on a
fresh copy of the same migrated database: raw ``sqlite3`` insert+commit of the same row
with the same pragmas and indexes (a connection per thread, no daemon); ``track_lead``
(one client per process, shared by its threads) with no daemon; and ``track_lead`` while
a ``cms-outbox run`` daemon drains the same outbox against the sandbox at 20 ms latency.
Percentiles are of every call's latency; the ratios compare ours to raw's in the same run.

Where the time goes: in the ``track_lead`` runs each call's time is split into its parts
(see ``_writers.py``), shown as a histogram per part and as each part's share of the
slowest 1% of calls.

    python benchmarks/tail.py [--quick]
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import (
    TOKEN,
    emit,
    lead,
    migrated_outbox,
    parse_args,
    percentile,
    ratio,
    remote_sandbox,
    table,
    target,
    wait_until,
)
from _writers import INTERVAL, PARTS, writer_process

from cms_outbox import CMSClient

LATENCY = 0.02  # the sandbox's, while the daemon drains
BACKLOG = 3000  # events waiting when a daemon run starts: it drains throughout
SCENARIOS = ((4, 2), (8, 4))  # (processes, threads per process)
CONTENDERS = ("raw", "ours", "ours_daemon")
BUCKETS_MS = (0.5, 1, 2, 5, 10, 20, 50, 100)


class Pool:
    """``processes`` writer processes, started once per scenario."""

    def __init__(self, processes: int, threads: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes = []
        self.processes = []
        for _ in range(processes):
            parent, child = context.Pipe()
            process = context.Process(target=writer_process, args=(child, threads))
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)
        for pipe in self.pipes:
            assert pipe.recv() == "ready"

    def run(self, kind: str, path: Path, seconds: float, lead_time: float) -> dict[str, Any]:
        start = time.time() + lead_time  # every process has opened its database by then
        for pipe in self.pipes:
            pipe.send((kind, path, start, seconds))
        reports = [pipe.recv() for pipe in self.pipes]
        return {
            "samples": [s for r in reports for s in r["samples"]],
            "split": [s for r in reports for s in r["split"]],
            "locked": sum(r["locked"] for r in reports),
            "other": sum(r["other"] for r in reports),
        }

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.send(None)
        for process in self.processes:
            process.join(30)


def fresh_copy(path: Path, backlog: int) -> Path:
    migrated_outbox(path)
    if backlog:
        client = CMSClient(database_url=f"sqlite:///{path}", flush="off", durability="normal")
        for i in range(backlog):
            client.track_lead(**lead(10**8 + i))
        client.close()
    return path


def start_daemon(path: Path, url: str) -> subprocess.Popen[bytes]:
    environment = {**os.environ, "CMS_BEARER_TOKEN": TOKEN, "CMS_HOST": url}
    return subprocess.Popen(
        [sys.executable, "-m", "cms_outbox", "run", "--database-url", f"sqlite:///{path}",
         "--rate-limit", "0", "--interval", "0.1"],
        env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def stop_daemon(daemon: subprocess.Popen[bytes]) -> None:
    daemon.send_signal(signal.SIGTERM)
    try:
        _, stderr = daemon.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.communicate()
        raise RuntimeError("the daemon did not stop within 60 s of SIGTERM") from None
    if daemon.returncode != 0:
        raise RuntimeError(f"the daemon failed ({daemon.returncode}): {stderr.decode()[-2000:]}")


def count_rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM cms_outbox_events").fetchone()[0])


def segment(
    pool: Pool, kind: str, path: Path, seconds: float, lead_time: float, sandbox: Any
) -> tuple[dict[str, Any], int]:
    """One contender's run; returns its samples and what the daemon delivered meanwhile."""
    daemon = None
    if kind == "ours_daemon":
        sandbox.call("reset")
        sandbox.call("set_faults", latency=LATENCY)
        daemon = start_daemon(path, sandbox.url)
        if not wait_until(lambda: sandbox.summary()["accepted"] > 0, 60, 0.05):
            daemon.kill()
            raise RuntimeError("the daemon delivered nothing within 60 s")
    before = count_rows(path)
    try:
        run = pool.run(kind, path, seconds, lead_time)
    finally:
        delivered_during = sandbox.summary()["accepted"] if daemon else 0
        if daemon is not None:
            stop_daemon(daemon)
    run["missing_rows"] = before + len(run["samples"]) - count_rows(path)
    return run, delivered_during


def summarise(samples: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {
        "calls": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "p99_9_ms": round(percentile(ms, 99.9), 3),
        "max_ms": round(max(ms), 3) if ms else float("nan"),
    }


def histogram(split: Sequence[tuple[float, ...]]) -> dict[str, list[int]]:
    """Per part: how many calls spent < 0.5 ms, 0.5-1 ms, ... >= 100 ms in it."""
    result = {}
    for index, part in enumerate(PARTS):
        counts = [0] * (len(BUCKETS_MS) + 1)
        for row in split:
            ms = row[index] * 1000
            counts[sum(ms >= edge for edge in BUCKETS_MS)] += 1
        result[part] = counts
    return result


def tail_shares(split: Sequence[tuple[float, ...]]) -> dict[str, float]:
    """Each part's share of the time of the slowest 1% of calls."""
    slowest = sorted(split, key=sum)[-max(1, len(split) // 100) :]
    total = sum(sum(row) for row in slowest) or 1.0
    return {part: round(sum(row[i] for row in slowest) / total, 3) for i, part in enumerate(PARTS)}


def main() -> None:
    args = parse_args(__doc__ or "")
    # Quick: one short round of the first scenario, to show the script works.
    rounds, seconds, lead_time = (1, 0.5, 0.3) if args.quick else (3, 5.0, 1.0)
    backlog = 100 if args.quick else BACKLOG
    scenarios = SCENARIOS[:1] if args.quick else SCENARIOS
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, remote_sandbox() as sandbox:
        directory = Path(tmp)
        for processes, threads in scenarios:
            name = f"{processes}x{threads}"
            pool = Pool(processes, threads)
            runs: dict[str, dict[str, Any]] = {
                kind: {"samples": [], "split": [], "locked": 0, "other": 0, "missing_rows": 0,
                       "delivered_during": 0}
                for kind in CONTENDERS
            }  # fmt: skip
            try:
                for r in range(rounds):
                    for kind in CONTENDERS:
                        path = fresh_copy(
                            directory / f"{name}-{kind}-{r}.db",
                            backlog if kind == "ours_daemon" else 0,
                        )
                        run, delivered = segment(pool, kind, path, seconds, lead_time, sandbox)
                        for key in ("samples", "split"):
                            runs[kind][key] += run[key]
                        for key in ("locked", "other", "missing_rows"):
                            runs[kind][key] += run[key]
                        runs[kind]["delivered_during"] += delivered
                        path.unlink()
            finally:
                pool.close()
            results[name] = {
                kind: {
                    **summarise(run["samples"]),
                    "locked_errors": run["locked"],
                    "other_errors": run["other"],
                    "missing_rows": run["missing_rows"],
                    "delivered_by_daemon": run["delivered_during"],
                    **(
                        {
                            "histogram": histogram(run["split"]),
                            "tail_share": tail_shares(run["split"]),
                        }
                        if run["split"]
                        else {}
                    ),
                }
                for kind, run in runs.items()
            }

    labels = {
        "raw": "raw sqlite3 insert+commit, no daemon",
        "ours": "track_lead, no daemon",
        "ours_daemon": f"track_lead, daemon draining ({int(LATENCY * 1000)} ms)",
    }
    for name, by_kind in results.items():
        raw = by_kind["raw"]
        table(
            f"{name} writers (processes x threads), one call per {INTERVAL * 1000:.0f} ms per "
            f"thread, durability full, {rounds} round(s) of {seconds:g} s",
            ["contender", "calls", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "p99 / raw",
             "max / raw", "locked", "rows missing", "delivered meanwhile"],
            [(labels[k], r["calls"], r["p50_ms"], r["p99_ms"], r["p99_9_ms"], r["max_ms"],
              ratio(r["p99_ms"], raw["p99_ms"]), ratio(r["max_ms"], raw["max_ms"]),
              r["locked_errors"], r["missing_rows"], r["delivered_by_daemon"])
             for k, r in by_kind.items()],
        )  # fmt: skip
        for kind in [k for k in by_kind if k != "raw"]:
            r = by_kind[kind]
            edges = (
                [f"<{BUCKETS_MS[0]:g}"]
                + [f"{a:g}-{b:g}" for a, b in zip(BUCKETS_MS, BUCKETS_MS[1:])]
                + [f">={BUCKETS_MS[-1]:g}"]
            )
            table(
                f"{name}, {labels[kind]}: calls by ms spent in each part",
                ["part", *edges, "share of slowest 1%"],
                [(part, *r["histogram"][part], r["tail_share"][part]) for part in PARTS],
            )
    print()
    ratios: dict[str, float] = {}
    targets: dict[str, Any] = {}
    for name, by_kind in results.items():
        raw = by_kind["raw"]
        for kind in ("ours", "ours_daemon"):
            ratios[f"{name}_{kind}_p99_vs_raw"] = ratio(by_kind[kind]["p99_ms"], raw["p99_ms"])
            ratios[f"{name}_{kind}_max_vs_raw"] = ratio(by_kind[kind]["max_ms"], raw["max_ms"])
        targets[f"{name}_p99"] = target(
            f"{name} with daemon: track_lead p99 / raw p99",
            ratios[f"{name}_ours_daemon_p99_vs_raw"], "<=", 1.0,
        )  # fmt: skip
        targets[f"{name}_max"] = target(
            f"{name} with daemon: track_lead max / raw max",
            ratios[f"{name}_ours_daemon_max_vs_raw"], "<=", 2.0,
        )  # fmt: skip
    ours = [r for by_kind in results.values() for k, r in by_kind.items() if k != "raw"]
    targets["no_locked_errors"] = target(
        "'database is locked' and other errors of track_lead",
        sum(r["locked_errors"] + r["other_errors"] for r in ours), "<=", 0,
    )  # fmt: skip
    targets["every_row_stored"] = target(
        "calls returned whose row is missing", sum(r["missing_rows"] for r in ours), "<=", 0
    )
    emit(
        {
            "benchmark": "tail",
            "quick": args.quick,
            "results": results,
            "ratios": ratios,
            "targets": targets,
        }
    )


if __name__ == "__main__":
    main()
