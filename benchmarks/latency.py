"""How long from ``track_lead`` to the service accepting the event, online?

Events are tracked one at a time against an idle sandbox (0 ms latency) with the
in-process background flusher (``flush="background"``, ``rate_limit=None``). The
latency of each is the sandbox's acceptance time (``received_at``) minus the moment
just before ``track_lead`` was called. The official SDK's blocking call, measured the
same way, shows the floor: one HTTP request.

    python benchmarks/latency.py [--quick]
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import (
    TOKEN,
    RemoteSandbox,
    emit,
    lead,
    median,
    migrated_outbox,
    parse_args,
    percentile,
    remote_sandbox,
    table,
    target,
)
from cutmeshort import CMSClient as SdkClient

from cms_outbox import CMSClient, TrackResult

PAUSE = 0.005  # between events, so that each one finds the flusher idle


def outbox_latencies(sandbox: RemoteSandbox, path: Path, events: int) -> dict[str, list[float]]:
    """Per event: the whole latency and its parts (enqueue, pick-up, the sandbox's own time)."""
    delivered = threading.Event()

    def on_delivered(result: TrackResult) -> None:
        delivered.set()

    client = CMSClient(
        token=TOKEN, host=sandbox.url, database_url=migrated_outbox(path),
        flush="background", rate_limit=None, on_delivered=on_delivered,
    )  # fmt: skip
    began: dict[str, float] = {}
    stored: dict[str, float] = {}
    try:
        for i in range(events):
            delivered.clear()
            before = time.time()
            result = client.track_lead(**lead(i))
            began[result.event_id], stored[result.event_id] = before, time.time()
            if not delivered.wait(10):
                raise RuntimeError(f"event {i} was not delivered within 10 s")
            time.sleep(PAUSE)
    finally:
        client.close()
    arrived = {r.idempotency_key: r.time for r in sandbox.call("requests")}
    parts: dict[str, list[float]] = {"total": [], "enqueue": [], "pickup": [], "server": []}
    for item in sandbox.call("accepted"):
        key = item.idempotency_key
        parts["total"].append(item.received_at - began[key])
        parts["enqueue"].append(stored[key] - began[key])
        parts["pickup"].append(arrived[key] - stored[key])
        parts["server"].append(item.received_at - arrived[key])
    return parts


def sdk_latencies(sandbox: RemoteSandbox, events: int) -> list[float]:
    client = SdkClient(token=TOKEN, host=sandbox.url)
    started: dict[str, float] = {}
    for i in range(events):
        kwargs = lead(i)
        started[kwargs["click_id"]] = time.time()
        client.track_lead(**kwargs)
        time.sleep(PAUSE)
    accepted = sandbox.call("accepted")
    return [item.received_at - started[item.payload["clickId"]] for item in accepted]


def summary(latencies: list[float]) -> dict[str, Any]:
    ms = [value * 1000 for value in latencies]
    return {
        "events": len(ms),
        "p50_ms": round(median(ms), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2),
    }


def main() -> None:
    args = parse_args(__doc__ or "")
    events = 20 if args.quick else 500
    with tempfile.TemporaryDirectory() as tmp, remote_sandbox() as sandbox:
        parts = outbox_latencies(sandbox, Path(tmp) / "outbox.db", events)
        sandbox.call("reset")
        sdk = summary(sdk_latencies(sandbox, events))
    ours = summary(parts["total"])
    table(
        "track -> accepted by the sandbox (0 ms latency), one event at a time",
        ["contender", "events", "p50 ms", "p99 ms", "max ms"],
        [
            ("cms_outbox, background flusher", *ours.values()),
            ("official SDK, blocking call", *sdk.values()),
        ],
    )
    breakdown = {name: summary(values) for name, values in parts.items() if name != "total"}
    table(
        "cms_outbox latency, part by part",
        ["part", "events", "p50 ms", "p99 ms", "max ms"],
        [
            ("track_lead call (validate, insert, fsync)", *breakdown["enqueue"].values()),
            ("wake, lease, send -> request arrives", *breakdown["pickup"].values()),
            ("sandbox: arrival -> accepted", *breakdown["server"].values()),
        ],
    )
    print()
    targets = {
        "p50": target("cms_outbox p50 ms", ours["p50_ms"], "<", 10),
        "p99": target("cms_outbox p99 ms", ours["p99_ms"], "<", 50),
    }
    emit(
        {
            "benchmark": "latency",
            "quick": args.quick,
            "cms_outbox": ours,
            "sdk": sdk,
            "breakdown": breakdown,
            "ratios": {"p50_vs_sdk": round(ours["p50_ms"] / sdk["p50_ms"], 3)},
            "targets": targets,
        }
    )


if __name__ == "__main__":
    main()
