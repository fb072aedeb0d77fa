"""One delivery pass: lease -> send -> classify -> record, until nothing more is due.

The pass thread does all database work; worker threads only do HTTP. A pass keeps the
pool busy until nothing more is due, the circuit opens, the deadline passes or it is
told to stop; rows it leased but did not send go back unsent, and their tokens go back
too, also when the pass fails. The ``Flusher`` that runs it owns what outlives a pass:
the breaker, the pacer, the totals and the callbacks.

Each worker has a second row leased and queued behind its request, so it starts the
next one the moment an answer arrives rather than after a database round trip, and
answers are recorded half a round per transaction: few, short holds of SQLite's lock.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING

from .errors import OutboxError
from .policy import Verdict, classify
from .store import Attempt, Lease
from .transport import Reply, Transport

if TYPE_CHECKING:
    from .flusher import Flusher

__all__ = ["IDLE_WAIT", "PIPELINE", "Pass"]

logger = logging.getLogger(__name__)

# Seconds a pass without a deadline waits for a request at a time, to notice leave_by().
IDLE_WAIT = 0.25
# Rows leased per worker: one on the wire, one queued behind it.
PIPELINE = 2


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
        self.inflight: dict[Future[Reply | None], Lease] = {}
        # Each request, once answered (or cancelled), lands here: waiting on a queue costs
        # the pass thread one step per answer, where ``wait()`` visits every request.
        self.answered: queue.SimpleQueue[Future[Reply | None]] = queue.SimpleQueue()
        self.unsent: list[int] = []  # rows leased, then not sent: handed back at the end
        self.unspent = 0  # tokens taken this round and not yet gone with a request
        self.halted = False  # set by a worker: send nothing more in this pass
        self.exhausted = False

    def run(self) -> None:
        if not self.store.has_work(self.flusher.clock()):
            return  # idle: no tokens taken, nothing leased, nothing written
        try:
            try:
                self._loop()
            finally:
                self._cancel_queued()
                try:
                    self._drain_inflight()
                finally:
                    # The drain failed (the database) with requests still on the wire: the
                    # flusher records them when they answer, and meanwhile no later pass
                    # hands their rows back to be sent a second time at once.
                    self.flusher.adopt(self.inflight)
                    self.inflight = {}
            # After a failure the next pass hands back what is still leased to us.
            self.store.hand_back(self.flusher.owner, self.unsent)
        except BaseException:
            self._give_back(failing=True)
            raise
        self._give_back(failing=False)

    def _give_back(self, *, failing: bool) -> None:
        """Return the tokens paid for requests never made: rows not sent, and those taken
        for a round that failed before sending (a pass that fails must not waste budget)."""
        count, self.unspent = self.unspent + len(self.unsent), 0
        self.unsent = []
        if not count or not self.paced:
            return
        try:
            self.flusher.pacer.give_back(count)
        except OutboxError as exc:
            if not failing:
                raise
            # The pass's own failure (the database, most likely the same) is what is raised.
            logger.warning(
                "%d rate token(s) of requests this pass never made were not given back (%s): "
                "the shared budget is short by as many requests until it refills", count, exc,
            )  # fmt: skip

    def _loop(self) -> None:
        finished: list[tuple[Attempt, str]] = []
        while True:
            now = self.flusher.clock()
            allowance = self.flusher.breaker.allowance(now)
            stopping = self._stopping() or allowance == 0 or self.halted
            room = 0 if stopping or self.exhausted else self._room(allowance)
            wait_for_token = None
            if room and self.paced:
                # Pay before leasing: a leased row never waits for a token (and its lease).
                grant = self.flusher.pacer.take(room, now)
                room = self.unspent = grant.requests
                wait_for_token = None if room else grant.wait
            if finished or room:
                self._exchange(finished, room, now)  # spends a token per request sent
                finished = []
                if self.unspent:  # rows not due after all, or dead of old age
                    self.flusher.pacer.give_back(self.unspent)
                    self.unspent = 0
            if stopping:
                return
            if not self.inflight:
                # Nothing more is due, or the next token would be waited for in vain (a
                # short script's exit flush must not sit out a token it does not need).
                if wait_for_token is None or not self.store.has_work(now):
                    return
                self._sleep(wait_for_token)
                continue
            finished = self._judge(self._answers(self._wait_time(wait_for_token)))
            while self._keep_collecting(finished):
                finished += self._judge(self._answers(self._wait_time(None)))

    def _keep_collecting(self, finished: list[tuple[Attempt, str]]) -> bool:
        """Whether to wait for more answers before recording them: half a round goes
        into one transaction (one hold of SQLite's write lock, not one per answer) as
        long as the workers have half a round queued, so that none of them waits."""
        half = max(1, self.settings.workers // 2)
        if not finished or len(finished) >= half:
            return False
        if self.flusher.breaker.reason is not None or self._stopping():
            return False
        # Requests beyond one per worker wait in the executor's queue.
        queued = len(self.inflight) + self.flusher.strays - self.settings.workers
        return queued >= half

    def _room(self, allowance: int | None) -> int:
        busy = len(self.inflight) + self.flusher.strays
        if allowance == 1:  # half-open: one probe, alone
            return 0 if busy else 1
        return max(0, self.settings.workers * PIPELINE - busy)

    def _exchange(self, finished: list[tuple[Attempt, str]], room: int, now: float) -> None:
        """Record what finished, lease what fits and send it, each with one of the
        ``unspent`` tokens (a row leased past ``max_age`` is dead-lettered instead)."""
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
        send = functools.partial(self._send, self.flusher.transport())
        for lease in leases:
            if lease not in expired:
                future = executor.submit(send, lease)
                self.inflight[future] = lease
                self.unspent = max(0, self.unspent - 1)  # not sent after all: ``unsent``
                future.add_done_callback(self.answered.put)

    def _send(self, transport: Transport, lease: Lease) -> Reply | None:
        """In a worker: send, unless the pass stopped, or the circuit opened (or is about
        to: a request went unanswered or the token was refused) while the row waited."""
        breaker = self.flusher.breaker
        if self.halted or self._stopping() or breaker.allowance(self.flusher.clock()) == 0:
            return None
        reply = transport.send(lease.kind, lease.event_id, lease.payload)
        if classify(reply.status_code) in (Verdict.OUTAGE, Verdict.AUTH):
            self.halted = True  # before the pass thread has judged it: no burst of failures
        return reply

    def _answers(self, timeout: float) -> list[Future[Reply | None]]:
        """The requests answered since the last call, waiting up to ``timeout`` for one."""
        try:
            done = [self.answered.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                done.append(self.answered.get_nowait())
            except queue.Empty:
                break
        return [future for future in done if future in self.inflight]  # not cancelled

    def _judge(self, done: list[Future[Reply | None]]) -> list[tuple[Attempt, str]]:
        finished = []
        left = list(reversed(done))
        try:
            while left:
                future = left.pop()
                lease = self.inflight.pop(future)
                reply = future.result()
                if reply is None:
                    self.unsent.append(lease.seq)
                    continue
                finished.append((self.flusher.verdict(lease, reply), lease.event_id))
        finally:
            for future in left:  # a verdict failed (the database): the drain takes them
                self.answered.put(future)  # again, instead of waiting for them for ever
        self.exhausted = False  # a finished row may have unblocked its customer's next one
        return finished

    def _cancel_queued(self) -> None:
        """Take back the requests still queued behind the ones on the wire."""
        for future in [future for future in self.inflight if future.cancel()]:
            self.unsent.append(self.inflight.pop(future).seq)

    def _drain_inflight(self) -> None:
        while self.inflight:
            timeout = self._wait_time(None)
            if timeout == 0.0:
                self.flusher.adopt(self.inflight)  # the deadline passed: answers come later
                self.inflight = {}
                return
            finished = self._judge(self._answers(timeout))
            if not finished:
                continue
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
