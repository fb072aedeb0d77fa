"""One delivery pass: lease -> send -> classify -> record, until nothing more is due.

The pass thread does all database work; worker threads only do HTTP. A pass keeps the
pool busy until nothing more is due, the circuit opens, the deadline passes or it is
told to stop; rows it leased but did not send go back unsent. The ``Flusher`` that runs
it owns what outlives a pass: the breaker, the pacer, the totals and the callbacks.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import TYPE_CHECKING

from .store import Attempt, Lease
from .transport import Reply

if TYPE_CHECKING:
    from .flusher import Flusher

__all__ = ["IDLE_WAIT", "Pass"]

# Seconds a pass without a deadline waits for a request at a time, to notice leave_by().
IDLE_WAIT = 0.25


class Pass:
    """The state of one pass; lives only inside ``Flusher.run_pass``."""

    def __init__(
        self, flusher: Flusher, deadline: float | None, stop: threading.Event | None
    ) -> None:
        self.flusher = flusher
        self.settings = flusher.settings
        self.store = flusher.store
        self.deadline = deadline
        self.stop = stop or threading.Event()
        self.paced = flusher.pacer.paced
        self.inflight: dict[Future[Reply], Lease] = {}
        self.exhausted = False

    def run(self) -> None:
        if not self.store.has_work(self.flusher.clock()):
            return  # idle: no tokens taken, nothing leased, nothing written
        try:
            self._loop()
        finally:
            self._drain_inflight()

    def _loop(self) -> None:
        finished: list[tuple[Attempt, str]] = []
        while True:
            now = self.flusher.clock()
            allowance = self.flusher.breaker.allowance(now)
            stopping = self._stopping() or allowance == 0
            room = 0 if stopping or self.exhausted else self._room(allowance)
            wait_for_token = None
            if room and self.paced:
                # Pay before leasing: a leased row never waits for a token (and its lease).
                grant = self.flusher.pacer.take(room, now)
                room = grant.requests
                wait_for_token = None if room else grant.wait
            if finished or room:
                leased = self._exchange(finished, room, now)
                finished = []
                if room > leased and self.paced:
                    self.flusher.pacer.give_back(room - leased)
            if stopping:
                return
            if not self.inflight:
                # Nothing more is due, or the next token would be waited for in vain (a
                # short script's exit flush must not sit out a token it does not need).
                if wait_for_token is None or not self.store.has_work(now):
                    return
                self._sleep(wait_for_token)
                continue
            done, _ = wait(
                self.inflight, timeout=self._wait_time(wait_for_token), return_when=FIRST_COMPLETED
            )
            finished = self._judge(done)

    def _room(self, allowance: int | None) -> int:
        busy = len(self.inflight) + self.flusher.strays
        if allowance == 1:  # half-open: one probe, alone
            return 0 if busy else 1
        return max(0, self.settings.workers - busy)

    def _exchange(self, finished: list[tuple[Attempt, str]], room: int, now: float) -> int:
        """Record what finished, lease what fits and send it; returns how many were leased."""
        attempts = [attempt for attempt, _ in finished]
        applied, leases = self.store.exchange(
            self.flusher.owner,
            attempts,
            room,
            now,
            self.settings.lease_duration,
            redact=self.settings.redact_after_delivery,
        )
        self.flusher.account(finished, applied)
        if room:
            self.exhausted = len(leases) < room
        expired = [lease for lease in leases if now - lease.created_at > self.settings.max_age]
        if expired:
            dead = [(self.flusher.expired(lease, now), lease.event_id) for lease in expired]
            self.flusher.account(dead, self.store.record(self.flusher.owner, [o for o, _ in dead]))
        executor = self.flusher.executor()
        transport = self.flusher.transport()
        for lease in leases:
            if lease not in expired:
                future = executor.submit(transport.send, lease.kind, lease.event_id, lease.payload)
                self.inflight[future] = lease
        return len(leases)

    def _judge(self, done: set[Future[Reply]]) -> list[tuple[Attempt, str]]:
        finished = []
        for future in done:
            lease = self.inflight.pop(future)
            finished.append((self.flusher.verdict(lease, future.result()), lease.event_id))
        self.exhausted = False  # a finished row may have unblocked its customer's next one
        return finished

    def _drain_inflight(self) -> None:
        while self.inflight:
            timeout = self._wait_time(None)
            if timeout == 0.0:
                self.flusher.adopt(self.inflight)  # the deadline passed: answers come later
                self.inflight = {}
                return
            done, _ = wait(self.inflight, timeout=timeout, return_when=FIRST_COMPLETED)
            if not done:
                continue
            finished = self._judge(done)
            applied = self.store.record(
                self.flusher.owner,
                [attempt for attempt, _ in finished],
                redact=self.settings.redact_after_delivery,
            )
            self.flusher.account(finished, applied)

    def _deadline(self) -> float | None:
        leave_at = self.flusher.leave_at
        if self.deadline is None or leave_at is None:
            return self.deadline if leave_at is None else leave_at
        return min(self.deadline, leave_at)

    def _wait_time(self, wanted: float | None) -> float:
        """How long to wait for a request now: ``wanted`` capped by the deadline."""
        deadline = self._deadline()
        cap = IDLE_WAIT if deadline is None else max(0.0, deadline - time.monotonic())
        return cap if wanted is None else min(wanted, cap)

    def _stopping(self) -> bool:
        if self.stop.is_set():
            return True
        deadline = self._deadline()
        return deadline is not None and time.monotonic() >= deadline

    def _sleep(self, seconds: float) -> None:
        self.stop.wait(self._wait_time(seconds) if self._deadline() is not None else seconds)
