"""Flapping network: a service that comes and goes and misbehaves in between gets every
event exactly once, in order, with nothing dead-lettered and without being hammered.

A flusher process delivers EVENTS events while a thread takes the sandbox down and up
FLAPS times, a few hundred milliseconds each way, and between flaps sets a seeded mix of
faults: 500s, 503s and 429s with ``Retry-After``, connections reset without an answer,
stalls longer than the read timeout, and slow answers.
"""

from __future__ import annotations

import math
import random
import signal
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import pytest

from cms_outbox import CMSClient
from cms_outbox.sandbox import Sandbox

from .conftest import Launcher, integrity, query, states, wait_for_drain
from .programs import call, story

SEED = 7301
EVENTS = 600
CUSTOMERS = 60
FLAPS = 12
WORKERS = 8
OPTIONS = {"workers": WORKERS, "interval": 0.2, "lease_seconds": 2.0, "connect_timeout": 0.5,
           "read_timeout": 1.0}  # fmt: skip
FAULTS: dict[str, dict[str, Any]] = {
    "500": {"error_rate": 0.5, "error_status": 500},
    "503": {"error_rate": 0.5, "error_status": 503, "retry_after": "1"},
    "429": {"error_rate": 0.5, "error_status": 429, "retry_after": "1"},
    "reset": {"reset": True},
    "stall": {"stall": 1.5},  # longer than the read timeout: every request times out
    "slow": {"latency": 0.3},
}
# Windows in which the service never answers: the circuit breaker must keep the flusher
# to the requests already in flight plus one probe per (at least) half a second.
SILENT = ("down", "reset", "stall")
PROBE_GAP = 0.5  # the shortest delay the breaker waits before probing


def flap(sandbox: Sandbox, rng: random.Random, windows: list[tuple[str, float, float]]) -> None:
    """Down, then up with one kind of fault; every kind twice, in a seeded order."""
    kinds = sorted(FAULTS) * (FLAPS // len(FAULTS))
    rng.shuffle(kinds)
    for fault in kinds:
        started = time.time()
        sandbox.down()
        time.sleep(rng.uniform(0.2, 0.4))
        windows.append(("down", started, time.time()))
        sandbox.clear_faults()
        sandbox.set_faults(**FAULTS[fault])
        started = time.time()
        sandbox.up()
        # A stall lasts past the read timeout, so that requests in it do time out.
        time.sleep(rng.uniform(1.3, 1.8) if fault == "stall" else rng.uniform(0.8, 1.6))
        windows.append((fault, started, time.time()))
    sandbox.clear_faults()


@pytest.mark.slow
def test_flapping_service_gets_every_event_once_in_order_without_being_hammered(
    launcher: Launcher, workdir: Path, make_sandbox: Callable[..., Sandbox]
) -> None:
    began = time.monotonic()
    rng = random.Random(SEED)
    sandbox = make_sandbox(latency=0.002, seed=SEED)
    path = workdir / "outbox.db"
    url = f"sqlite:///{path}"
    enqueued: dict[str, list[str]] = defaultdict(list)
    with CMSClient(database_url=url, flush="off", durability="normal") as writer:
        for spec in story(SEED, EVENTS, CUSTOMERS):
            enqueued[spec["customer_external_id"]].append(call(writer, spec))
    ids = {event_id for keys in enqueued.values() for event_id in keys}

    flusher = launcher.start("flusher", "flusher", database_url=url, host=sandbox.url, **OPTIONS)
    flusher.wait_for_line("ready")
    windows: list[tuple[str, float, float]] = []
    errors: list[BaseException] = []

    def chaos() -> None:
        try:
            flap(sandbox, rng, windows)
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)
        finally:
            sandbox.up()

    thread = threading.Thread(target=chaos, name="flapping")
    thread.start()
    thread.join(timeout=120)  # its sleeps add up to about 20 s: only a hang takes this long
    assert not thread.is_alive() and errors == []
    delivered_during_chaos = states(path).get("delivered", 0)
    wait_for_drain(lambda: states(path), EVENTS, f"{EVENTS} events delivered")
    flusher.kill(signal.SIGTERM)

    # Exactly once, in order, nothing dead: every key accepted once, each customer's events
    # in enqueue order (a follow-up sent before its setup would have been refused: dead).
    accepted = sandbox.accepted
    assert len(accepted) == EVENTS
    assert {event.idempotency_key for event in accepted} == ids
    assert [key for key in ids if sandbox.accepted_count(key) != 1] == []
    order: dict[str, list[str]] = defaultdict(list)
    for event in accepted:
        order[event.customer_external_id].append(str(event.idempotency_key))
    assert order == enqueued
    assert query(path, "SELECT count(*) FROM cms_outbox_attempts WHERE outcome = 'dead'") == [(0,)]
    assert integrity(path) == "ok"

    # Bounded while silent: requests that reached the sandbox (reset, stall) or attempts the
    # flusher recorded (down: refused before reaching it) per window stay within the
    # requests in flight when it began plus one probe per PROBE_GAP.
    requests = sandbox.requests
    attempts = [row[0] for row in query(path, "SELECT started_at FROM cms_outbox_attempts")]
    silent = []
    for kind, start, end in windows:
        if kind not in SILENT:
            continue
        if kind == "down":
            seen = sum(1 for at in attempts if start <= at <= end)
        else:
            seen = sum(1 for request in requests if start <= request.time <= end)
        bound = WORKERS + 1 + math.ceil((end - start) / PROBE_GAP)
        assert seen <= bound, f"{seen} requests in a {end - start:.2f}s {kind} window"
        silent.append(seen)
    assert silent, "the seeded schedule has no silent window"

    by_kind: dict[str, int] = defaultdict(int)
    for kind, _, _ in windows:
        by_kind[kind] += 1
    statuses: dict[str, int] = defaultdict(int)
    for request in requests:
        statuses[str(request.status)] += 1
    outcomes = dict(query(path, "SELECT outcome, count(*) FROM cms_outbox_attempts GROUP BY 1"))
    silences = dict(  # attempts without an answer, by error: refused, reset, timed out
        query(
            path,
            "SELECT substr(error, 1, instr(error, ':') - 1), count(*) "
            "FROM cms_outbox_attempts WHERE status_code IS NULL GROUP BY 1",
        )
    )
    # The seeded mix was met: retryable answers and silences both reached the flusher.
    assert {"500", "503", "429"} & set(statuses) and silences
    print(
        f"\nflapping network: {EVENTS} events, {FLAPS} down/up flaps, windows "
        f"{dict(sorted(by_kind.items()))}, {delivered_during_chaos} delivered during the "
        f"chaos, {len(requests)} requests reached the sandbox ({len(attempts)} attempts "
        f"recorded), at most {max(silent)} per silent window, lost 0, doubled 0, dead 0; "
        f"{time.monotonic() - began:.0f}s\n  statuses {dict(statuses)}, outcomes {outcomes}, "
        f"no answer {silences}"
    )
