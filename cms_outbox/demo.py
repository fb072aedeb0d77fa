"""``cms-outbox demo``: the whole story on the embedded default, offline, in a few seconds.

A local sandbox plays the CMS service and goes down; events tracked meanwhile are
stored (a standard lead, a deferred setup with two follow-ups that carry no
``click_id``, and a sale); the service comes back and the background flusher
delivers every event exactly once, each customer's in the order they were tracked.
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

from .client import CMSClient
from .results import EventState, TrackResult
from .sandbox import Sandbox
from .status import list_events, outbox_status

__all__ = ["run"]

PAUSE_WORDS = {
    "outage": "the service does not answer; the flusher probes it with one request at a "
    "growing interval and sends the backlog once it answers",
    "auth": "the service rejected the token; every event stays pending until a valid one",
}

TOKEN = "demo-token"
BACKGROUND_GRACE = 1.5  # seconds to let the background flusher's outage probe come round
_Say = Callable[[str], None]


@dataclass(frozen=True)
class _Tracked:
    label: str
    customer: str
    result: TrackResult


def run(
    database_url: str | None = None, *, out: TextIO | None = None, timeout: float = 45.0
) -> int:
    """Play the demo; returns 0 when every event was accepted exactly once, in order."""
    stream = out or sys.stdout

    def say(text: str = "") -> None:
        stream.write(text + "\n")
        stream.flush()

    with tempfile.TemporaryDirectory(prefix="cms-outbox-demo-") as tmp, Sandbox(TOKEN) as sandbox:
        url = database_url or f"sqlite:///{Path(tmp) / 'outbox.db'}"
        sandbox.down()
        say(f"1. The CMS service (a local sandbox at {sandbox.url}) is DOWN.")
        say(f"   Outbox: {url}")
        client = CMSClient(
            TOKEN, sandbox.url, url, flush="background", rate_limit=None, final_flush_timeout=0
        )
        try:
            tracked = _track(client)
            _wait_for_pause(client)
            say("2. Tracked while the service is down; track_* returned at once, all stored:")
            _show_events(client, tracked, say)
            sandbox.up()
            say("3. The service is back UP; the background flusher delivers:")
            delivered = _watch(client, tracked, timeout, say)
            say("4. Final status:")
            status = outbox_status(client.engine)
            counts = ", ".join(f"{state} {count}" for state, count in status.counts.items())
            say(f"   {counts}")
            ok = delivered and _verify(sandbox, tracked, say)
        finally:
            client.close()
    if ok:
        say("OK: every event was accepted exactly once, in per-customer order.")
        return 0
    say("FAILED: see above.")
    return 1


def _track(client: CMSClient) -> list[_Tracked]:
    # Ids unique to this run: a run in the same outbox, even in the same second, must not
    # meet an earlier run's invoices (a repeated sale) or customers (their FIFO, a setup).
    run_id = uuid.uuid4().hex[:6]
    alice, bob = f"alice-{run_id}", f"bob-{run_id}"
    steps: list[tuple[str, str, Callable[[], TrackResult]]] = [
        ("lead signup (standard, click_id)", alice, lambda: client.track_lead(
            event_name="signup", customer_external_id=alice, click_id="clk_alice",
            customer_name="Alice", customer_email="alice@example.com",
        )),
        ("lead signup (deferred setup)", bob, lambda: client.track_lead(
            event_name="signup", customer_external_id=bob, click_id="clk_bob",
            mode="deferred", customer_email="bob@example.com",
        )),
        ("lead trial_started (follow-up, no click_id)", bob, lambda: client.track_lead(
            event_name="trial_started", customer_external_id=bob,
        )),
        ("sale upgrade 19.00 EUR (follow-up, no click_id)", bob, lambda: client.track_sale(
            event_name="upgrade", customer_external_id=bob, invoice_id=f"inv-{bob}",
            amount=1900, currency="EUR",
        )),
        ("sale purchase 49.99 USD (click_id)", alice, lambda: client.track_sale(
            event_name="purchase", customer_external_id=alice, invoice_id=f"inv-{alice}",
            amount=4999, currency="USD", click_id="clk_alice",
        )),
    ]  # fmt: skip
    return [_Tracked(label, customer, call()) for label, customer, call in steps]


def _wait_for_pause(client: CMSClient, seconds: float = 3.0) -> None:
    """Give the background flusher a moment to find the service down (for the story)."""
    deadline = time.monotonic() + seconds
    while outbox_status(client.engine).pause is None and time.monotonic() < deadline:
        time.sleep(0.05)


def _show_events(client: CMSClient, tracked: list[_Tracked], say: _Say) -> None:
    ours = {item.result.event_id: item for item in tracked}
    order = list(ours)
    # By customer (this run's own), not a page of the whole outbox: earlier runs and an
    # application's events may fill any page.
    rows = sorted(
        (
            event
            for customer in dict.fromkeys(item.customer for item in tracked)
            for event in list_events(client.engine, customer=customer, oldest_first=True)
            if event.event_id in ours
        ),
        key=lambda event: order.index(event.event_id),
    )
    say(f"   {'EVENT':<10} {'CUSTOMER':<13} {'WHAT':<48} {'STATE':<8} ATTEMPTS")
    for event in rows:
        label = ours[event.event_id].label
        say(
            f"   {event.event_id[:8]:<10} {event.customer_external_id:<13} {label:<48} "
            f"{event.state:<8} {event.attempts}"
        )
    status = outbox_status(client.engine)
    if status.pause is not None:  # in words: the transport's error is the driver's text
        why = PAUSE_WORDS.get(status.pause.reason, status.pause.reason)
        say(f"   Delivery paused: {why}")


def _watch(client: CMSClient, tracked: list[_Tracked], timeout: float, say: _Say) -> bool:
    started = time.monotonic()
    deadline = started + timeout
    nudged = False
    seen: set[str] = set()
    while True:
        for item in tracked:
            event_id = item.result.event_id
            if event_id in seen:
                continue
            result = client.result(event_id)
            if result.state in (EventState.DELIVERED, EventState.DEAD):
                seen.add(event_id)
                say(
                    f"   {time.monotonic() - started:5.2f}s  {result.state.value:<9} "
                    f"{item.customer:<12} {item.label} (HTTP {result.status_code})"
                )
        if len(seen) == len(tracked):
            return all(client.result(i.result.event_id).success for i in tracked)
        now = time.monotonic()
        if now >= deadline:
            say(f"   gave up after {timeout:.0f}s: {len(tracked) - len(seen)} not delivered")
            return False
        if not nudged and now - started >= BACKGROUND_GRACE:
            # The flusher probes a down service with a growing delay; do not sit it out.
            nudged = True
            client.flush(timeout=max(0.1, deadline - now))
        time.sleep(0.05)


def _verify(sandbox: Sandbox, tracked: list[_Tracked], say: _Say) -> bool:
    ours = [item.result.event_id for item in tracked]
    accepted = [item for item in sandbox.accepted if item.idempotency_key in ours]
    say("5. What the service received, in order, per customer:")
    ok = True
    for customer in dict.fromkeys(item.customer for item in tracked):
        expected = [i.result.event_id for i in tracked if i.customer == customer]
        received = [a for a in accepted if a.customer_external_id == customer]
        say(f"   {customer}:")
        for number, item in enumerate(received, 1):
            payload = item.payload
            via = f"click {item.click_id}" if item.click_id else "no click"
            extra = "" if payload.get("clickId") else " (attributed by the deferred association)"
            say(
                f"     {number}. {item.kind} {payload.get('eventName')}: {via}{extra}"
                if item.kind == "lead"
                else f"     {number}. sale {payload.get('eventName')} {_money(payload)} "
                f"({payload.get('invoiceId')}): {via}{extra}"
            )
        if [a.idempotency_key for a in received] != expected:
            say(f"   ! {customer}'s events arrived out of order or incomplete")
            ok = False
    for event_id in ours:
        count = sandbox.accepted_count(event_id)
        if count != 1:
            say(f"   ! event {event_id} was accepted {count} times")
            ok = False
    return ok


def _money(payload: dict[str, Any]) -> str:
    amount = payload.get("amount")
    cents = f"{amount / 100:.2f}" if isinstance(amount, int) else str(amount)
    return f"{cents} {payload.get('currency')}"
