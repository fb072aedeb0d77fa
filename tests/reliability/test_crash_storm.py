"""Crash storm: a flusher SIGKILLed mid-work, again and again, loses nothing and doubles
nothing.

A writer process enqueues 10,000 events (EVENTS) for 200 customers: deferred setups with
their follow-ups without ``click_id``, standard leads, sales. Meanwhile flusher processes
deliver them and are SIGKILLed 32 times (KILLS), each after a seeded number of observed
deliveries, and restarted at once. Leases are short (2 s) and the sandbox answers after
4 ms, so kills land with requests in flight and rows leased. A last flusher then runs to
completion: every event must be accepted exactly once, each customer's in enqueue order,
none dead. On the SQLite file (read with plain ``sqlite3``) and on MySQL/MariaDB.
"""

from __future__ import annotations

import functools
import random
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from cms_outbox.sandbox import Sandbox

from .conftest import Child, Launcher, integrity, query, states, wait_for, wait_for_drain


class Outbox:
    """The outbox seen from the test: plain ``sqlite3`` on the file, else SQLAlchemy."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite") else None

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        if self.path is not None:
            return query(self.path, sql)
        engine = create_engine(self.url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                return [tuple(row) for row in conn.execute(text(sql))]
        finally:
            engine.dispose()

    def states(self) -> dict[str, int]:
        if self.path is not None:
            return states(self.path)
        rows = self.query("SELECT state, count(*) FROM cms_outbox_events GROUP BY state")
        return {str(state): int(count) for state, count in rows}


def _delivered_or_dead(outbox: Outbox, flusher: Child, target: int) -> bool:
    return outbox.states().get("delivered", 0) >= target or not flusher.alive


SEED = 20250611
EVENTS = 10_000
KILLS = 32
# Each flusher is killed after delivering this many more events: at most 32 x 250 = 8,000 of
# the 10,000, so the last kill still comes before the work is done.
DELIVERIES_PER_KILL = (20, 250)
LEASE = {"lease_seconds": 2.0, "connect_timeout": 0.5, "read_timeout": 1.0}


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def storm_url(request: pytest.FixtureRequest, workdir: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{workdir / 'outbox.db'}"
    return str(request.getfixturevalue("mysql_url"))  # its outbox tables dropped


@pytest.mark.slow
def test_flusher_killed_again_and_again_delivers_every_event_once_in_order(
    launcher: Launcher, storm_url: str, make_sandbox: Callable[..., Sandbox]
) -> None:
    started = time.monotonic()
    rng = random.Random(SEED)
    sandbox = make_sandbox(latency=0.004, seed=SEED)
    url = storm_url
    outbox = Outbox(url)
    writer = launcher.start(
        "writer", "writer", database_url=url, seed=SEED, events=EVENTS, durability="normal"
    )
    writer.wait_for_line("customer-")  # the schema exists: flushers need not race to create it
    options = {"database_url": url, "host": sandbox.url, "workers": 8, "interval": 0.2, **LEASE}

    orphaned = []  # rows each killed flusher left in_flight: its leases, to expire
    owners: set[str] = set()
    for kill in range(KILLS):
        flusher = launcher.start("flusher", f"flusher-{kill}", **options)
        flusher.wait_for_line("ready")
        # Paced by observed progress, not by the clock: each flusher is killed once it has
        # delivered a seeded number of events, so every kill lands mid-work on any machine.
        target = outbox.states().get("delivered", 0) + rng.randint(*DELIVERIES_PER_KILL)
        wait_for(
            functools.partial(_delivered_or_dead, outbox, flusher, target),
            120,
            f"flusher {kill} to deliver up to {target}",
        )
        assert flusher.alive, flusher.tail()
        flusher.kill()
        assert outbox.states().get("delivered", 0) < EVENTS, f"kill {kill} came after the work"
        leases = outbox.query(
            "SELECT lease_owner, count(*) FROM cms_outbox_events WHERE state = 'in_flight' "
            "GROUP BY lease_owner",
        )
        orphaned.append(sum(count for owner, count in leases if owner not in owners))
        owners.update(owner for owner, _ in leases)
    storm = time.monotonic() - started

    assert writer.wait_for_line("done", timeout=120) == f"done {EVENTS}"
    final = launcher.start("flusher", "final", **options)
    wait_for_drain(outbox.states, EVENTS, f"{EVENTS} delivered")
    final.kill(signal.SIGTERM)

    enqueued: dict[str, list[str]] = defaultdict(list)
    roles = {}
    for line in writer.lines()[:-1]:
        customer, event_id, role = line.split()
        enqueued[customer].append(event_id)
        roles[event_id] = role
    assert len(roles) == EVENTS

    accepted = sandbox.accepted
    delivered: dict[str, list[str]] = defaultdict(list)
    for event in accepted:
        assert event.idempotency_key is not None
        delivered[event.customer_external_id].append(event.idempotency_key)
    # Nothing lost, nothing doubled: every event accepted exactly once, by its key.
    assert len(accepted) == EVENTS
    assert {event.idempotency_key for event in accepted} == set(roles)
    assert [key for key in roles if sandbox.accepted_count(key) != 1] == []
    # Per-customer FIFO: each customer's events were accepted in enqueue order, so every
    # deferred follow-up came after its setup (the sandbox would have refused it: 404).
    assert delivered == enqueued
    for customer, keys in delivered.items():
        kinds = [roles[key] for key in keys]
        if kinds[0] == "setup":
            assert set(kinds[1:]) <= {"followup"}, customer
        else:
            assert set(kinds) == {"standard"}, customer
    # No request was refused as out of order (404), doubled (409) or invalid (422).
    refused = [r for r in sandbox.requests if r.status in (404, 409, 422)]
    assert refused == []
    assert outbox.query("SELECT count(*) FROM cms_outbox_attempts WHERE outcome = 'dead'") == [(0,)]
    if outbox.path is not None:
        assert integrity(outbox.path) == "ok"

    sent: dict[str, int] = defaultdict(int)
    for request in sandbox.requests:
        if request.idempotency_key is not None:
            sent[request.idempotency_key] += 1
    resent = sum(1 for count in sent.values() if count > 1)
    # The storm hit work in progress: leases were orphaned and requests lost their answer.
    assert sum(1 for rows in orphaned if rows) >= 1 and resent >= 1
    print(
        f"\ncrash storm: {EVENTS} events, {len(enqueued)} customers, {KILLS} SIGKILLs in "
        f"{storm:.0f}s, {sum(orphaned)} leases orphaned by {sum(1 for r in orphaned if r)} "
        f"kills, {resent} events re-sent ({sum(sent.values())} requests), "
        f"lost 0, doubled 0, dead 0; {time.monotonic() - started:.0f}s in all"
    )
