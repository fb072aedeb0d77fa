"""What does an outage cost the caller, and what is lost or doubled?

100 calls spread over an outage (the sandbox refuses connections for 10 s, then comes
back by itself), from concurrent request threads as in a web
app: the official SDK (``cutmeshort.CMSClient``, its urllib3 retries) beside
``cms_outbox`` (background flusher). Then a lost response, the sandbox reading a
request and stalling beyond the client's read timeout (it still accepts the event) or
dropping the connection: how often each client made the service receive and accept
the same event. ``--quick`` spreads 20 calls over 1 s, with shorter timeouts and the
SDK's retries without their backoff sleeps, to show the script works (no figure to read).

    python benchmarks/outage.py [--quick]
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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
    remote_sandbox,
    table,
    target,
    wait_until,
)
from cutmeshort import CMSClient as SdkClient
from cutmeshort.rest import RESTClientObject

from cms_outbox import CMSClient


@dataclass(frozen=True)
class Plan:
    calls: int
    outage: float  # seconds
    read_timeout: float  # both clients, so that a stall "beyond the timeout" stays short
    stall: float
    sdk_backoff: bool  # the SDK's own retry backoff (0.3 s, doubling)


FULL = Plan(calls=100, outage=10.0, read_timeout=1.0, stall=1.5, sdk_backoff=True)
QUICK = Plan(calls=20, outage=1.0, read_timeout=0.2, stall=0.3, sdk_backoff=False)


def sdk_client(url: str, plan: Plan, read_timeout: float | None = None) -> SdkClient:
    client = SdkClient(token=TOKEN, host=url)
    if read_timeout is not None:  # its default is 30 s; shortened for the lost responses
        client.api_client.configuration.request_timeout = (3.05, read_timeout)
    if not plan.sdk_backoff:  # the same retries, without the sleeps between them
        configuration = client.api_client.configuration
        configuration.retries = configuration.retries.new(backoff_factor=0)
        client.api_client.rest_client = RESTClientObject(configuration)
    return client


def during_outage(
    sandbox: RemoteSandbox, plan: Plan, call: Callable[[int], object], first: int
) -> list[tuple[float, str]]:
    """Take the sandbox down for ``plan.outage`` s; spread the calls over it; (seconds, outcome)."""
    sandbox.call("down", seconds=plan.outage)
    began = time.monotonic()

    def one(n: int) -> tuple[float, str]:
        time.sleep(max(0.0, began + n * plan.outage / plan.calls - time.monotonic()))
        start = time.perf_counter()
        try:
            call(first + n)
            outcome = "returned"
        except Exception as exc:  # the SDK raises urllib3/SDK errors after its retries
            outcome = type(exc).__name__
        return time.perf_counter() - start, outcome

    with ThreadPoolExecutor(plan.calls) as pool:
        results = list(pool.map(one, range(plan.calls)))
    wait_until(lambda: not sandbox.call("is_down"), plan.outage + 5)
    return results


def tally(sandbox: RemoteSandbox, first: int, calls: int) -> tuple[int, int]:
    """(events lost, duplicate acceptances) among customers ``first .. first + calls``."""
    wanted = {lead(i, 10**9)["customer_external_id"] for i in range(first, first + calls)}
    counts = Counter(
        a.customer_external_id for a in sandbox.call("accepted") if a.customer_external_id in wanted
    )
    return calls - len(counts), sum(n - 1 for n in counts.values())


def outage_runs(sandbox: RemoteSandbox, path: Path, plan: Plan) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    calls = plan.calls
    sdk = sdk_client(sandbox.url, plan)
    results = during_outage(sandbox, plan, lambda i: sdk.track_lead(**lead(i, 10**9)), 0)
    lost, duplicates = tally(sandbox, 0, calls)
    rows["sdk"] = _row(results, lost, duplicates, None)

    client = CMSClient(
        token=TOKEN, host=sandbox.url, database_url=migrated_outbox(path), rate_limit=None
    )
    results = during_outage(sandbox, plan, lambda i: client.track_lead(**lead(i, 10**9)), calls)
    recovered = time.monotonic()
    wait_until(lambda: tally(sandbox, calls, calls)[0] == 0, 120, step=0.1)
    catch_up = time.monotonic() - recovered
    client.close()
    lost, duplicates = tally(sandbox, calls, calls)
    rows["cms_outbox"] = _row(results, lost, duplicates, round(catch_up, 2))
    return rows


def _row(
    results: list[tuple[float, str]], lost: int, duplicates: int, catch_up: float | None
) -> dict[str, Any]:
    seconds = [s for s, _ in results]
    return {
        "calls": len(results),
        "median_call_ms": round(median(seconds) * 1000, 3),
        "max_call_ms": round(max(seconds) * 1000, 3),
        "outcomes": dict(Counter(outcome for _, outcome in results)),
        "lost": lost,
        "duplicates": duplicates,
        "delivered_s_after_recovery": catch_up,
    }


def lost_response(
    sandbox: RemoteSandbox, path: Path, plan: Plan, fault: dict[str, Any]
) -> dict[str, Any]:
    """One event while ``fault`` is on: the SDK's call, then ours over the same window."""
    sandbox.call("reset")
    sandbox.call("set_faults", **fault)
    began = time.monotonic()
    try:
        sdk_client(sandbox.url, plan, plan.read_timeout).track_lead(**lead(1, 10**9))
        sdk_outcome = "returned"
    except Exception as exc:
        sdk_outcome = type(exc).__name__
    window = time.monotonic() - began
    customer = lead(1, 10**9)["customer_external_id"]
    if fault.get("stall"):  # let the last stalled request finish (and be accepted)
        wait_until(lambda: _settled(sandbox, customer), plan.stall + 30)
    sdk = _seen(sandbox, customer)

    sandbox.call("reset")
    sandbox.call("set_faults", **fault)
    client = CMSClient(
        token=TOKEN, host=sandbox.url, database_url=migrated_outbox(path),
        rate_limit=None, read_timeout=plan.read_timeout,
    )  # fmt: skip
    client.track_lead(**lead(2, 10**9))
    time.sleep(window)  # the same time with the fault on as the SDK's call took
    sandbox.call("clear_faults")
    client.flush(timeout=30)  # deliver now rather than at the breaker's next probe
    client.close()
    customer = lead(2, 10**9)["customer_external_id"]
    if fault.get("stall"):  # a stalled attempt still in the sandbox is counted too
        wait_until(lambda: _settled(sandbox, customer), plan.stall + 30)
    ours = _seen(sandbox, customer)
    return {
        "sdk": {**sdk, "caller_s": round(window, 2), "caller_outcome": sdk_outcome},
        "cms_outbox": {**ours, "caller_s": 0.0, "caller_outcome": "returned"},
    }


def _settled(sandbox: RemoteSandbox, customer: str) -> bool:
    """Whether every request for this customer has its answer: a stalled one gets it (and
    its event is accepted) only when the stall ends."""
    requests = sandbox.call("requests")
    return all(r.status is not None for r in requests if r.customer_external_id == customer)


def _seen(sandbox: RemoteSandbox, customer: str) -> dict[str, int]:
    """How often the sandbox received and accepted this customer's (single) event."""
    received = [r for r in sandbox.call("requests") if r.customer_external_id == customer]
    accepted = [a for a in sandbox.call("accepted") if a.customer_external_id == customer]
    return {"received": len(received), "accepted": len(accepted)}


def main() -> None:
    args = parse_args(__doc__ or "")
    plan = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory() as tmp, remote_sandbox() as sandbox:
        directory = Path(tmp)
        rows = outage_runs(sandbox, directory / "outage.db", plan)
        stall = lost_response(sandbox, directory / "stall.db", plan, {"stall": plan.stall})
        reset = lost_response(sandbox, directory / "reset.db", plan, {"reset": True})
    table(
        f"{plan.calls} calls spread over a {plan.outage:.0f} s outage (concurrent callers)",
        ["client", "median ms/call", "max ms/call", "call outcomes", "lost", "duplicates",
         "all delivered s after recovery"],
        [(name, r["median_call_ms"], r["max_call_ms"],
          ", ".join(f"{k} {v}" for k, v in r["outcomes"].items()), r["lost"], r["duplicates"],
          "-" if r["delivered_s_after_recovery"] is None else r["delivered_s_after_recovery"])
         for name, r in rows.items()],
    )  # fmt: skip
    table(
        f"one event, response lost (read timeout {plan.read_timeout:g} s on both clients)",
        ["fault", "client", "caller s", "caller saw", "received", "accepted"],
        [(fault, name, r["caller_s"], r["caller_outcome"], r["received"], r["accepted"])
         for fault, runs in ((f"stall {plan.stall} s", stall), ("reset", reset))
         for name, r in runs.items()],
    )  # fmt: skip
    print()
    ours, sdk = rows["cms_outbox"], rows["sdk"]
    targets = {
        "lost": target("cms_outbox events lost", ours["lost"], "<=", 0),
        "duplicates": target("cms_outbox duplicates", ours["duplicates"], "<=", 0),
        "lost_response_accepted_once": target(
            "cms_outbox acceptances of a stalled event", stall["cms_outbox"]["accepted"], "<=", 1
        ),
    }
    emit(
        {
            "benchmark": "outage",
            "quick": args.quick,
            "outage_s": plan.outage,
            "outage": rows,
            "lost_response": {"stall": stall, "reset": reset},
            "ratios": {
                "sdk_vs_cms_outbox_call_time": round(
                    sdk["median_call_ms"] / ours["median_call_ms"], 1
                )
            },
            "targets": targets,
        }
    )


if __name__ == "__main__":
    main()
