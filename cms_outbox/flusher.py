"""The ``Flusher``: runs delivery passes (``delivery_pass``) and owns what outlives one.

It judges each reply (``policy.decide``), keeps the circuit breaker and the pacing
(``pacer``), publishes pauses, counts totals and runs the callbacks.

A deadline is kept whatever the service does: a pass whose deadline passes while
requests are in flight (a stalled server) returns and leaves them to finish in the
background; each one's attempt is recorded when it arrives, by the worker thread
that sent it, and its row stays leased (FIFO holds its customer) until then.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Callable

from .advert import parse_advert
from .config import Settings
from .delivery_pass import Pass
from .errors import ConfigurationError, OutboxError
from .pacer import Pacer
from .pauses import Pauses
from .policy import Answer, Decision, Rules, decide, expiry
from .queries import PAUSED_OUTCOMES
from .results import EventState, FlushReport, TrackResult, parse_body
from .store import Attempt, Lease, Store
from .transport import Reply, Transport

__all__ = ["Flusher"]

logger = logging.getLogger(__name__)
Callback = Callable[[TrackResult], Any]
_TOTALS = {EventState.DELIVERED: "delivered", EventState.DEAD: "dead"}


class Flusher:
    """Delivers an outbox's due events; one pass at a time per instance."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        on_delivered: Callback | None = None,
        on_dead: Callback | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.on_delivered = on_delivered
        self.on_dead = on_dead
        self.clock = clock
        self.rng = rng or random.Random()
        self.pauses = Pauses(store, self.rng)
        self.breaker = self.pauses.breaker
        self.owner = _new_owner()
        self._transport: Transport | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._pass_lock = threading.Lock()
        self._pass_thread: int | None = None
        self.pacer = Pacer(store, settings.rate_limit)
        self._current: Pass | None = None
        # Attempts recorded by every pass of this flusher, a failed pass's included.
        self.totals = {"delivered": 0, "retried": 0, "dead": 0}
        # Requests a pass left in flight at its deadline; recorded as their answers come.
        self._strays: dict[Future[Reply | None], Lease] = {}
        self._verdicts = threading.Lock()  # breaker, pacing and totals: pass and strays
        self.leave_at: float | None = None
        # A pass or a late answer failed (database error) and may have left rows leased
        # to us, unsent or unrecorded: the next pass hands them back. Otherwise nothing is
        # ours but what is in flight, and a pass starts without a write.
        self._stranded = False

    # -- lifecycle --------------------------------------------------------------------

    def close(self, deadline: float | None = None) -> None:
        """Release threads and sessions.

        :param deadline: ``time.monotonic()`` until which to wait for requests still in
            flight. One answering later is still recorded when it arrives (at interpreter
            exit, before the process ends); one that never does leaves its row leased
            until the lease expires, then it is sent again under the same Idempotency-Key.
        """
        strays = list(self._strays)
        if strays and deadline is not None:
            wait(strays, timeout=max(0.0, deadline - time.monotonic()))
        abandoned = bool(self._strays)
        if abandoned:
            logger.info("%d requests still in flight at close", len(self._strays))
        if self._executor is not None:
            # With a deadline, never wait for the workers: a pass that has not yet handed
            # its requests over (it does so at the same deadline) would hold us up to a
            # whole read timeout. The workers end with their request.
            wait_for_workers = deadline is None and not abandoned
            self._executor.shutdown(wait=wait_for_workers, cancel_futures=True)
            self._executor = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def after_fork_in_child(self) -> None:
        """In a forked child: fresh owner token, sessions, threads and locks."""
        self.owner = _new_owner()
        self._transport = None
        self._executor = None
        self._pass_lock = threading.Lock()
        self.pauses.after_fork()
        self._strays = {}
        self._verdicts = threading.Lock()
        self._stranded = False
        self.pacer = Pacer(self.store, self.settings.rate_limit)

    def leave_by(self, deadline: float) -> None:
        """Make the running pass (and any later one) end by ``deadline`` (``time.monotonic()``),
        leaving its requests in flight to finish in the background."""
        self.leave_at = deadline

    def before_fork(self, timeout: float) -> bool:
        """Wait for the running pass and keep new ones from starting (around ``fork()``)."""
        return self._pass_lock.acquire(timeout=timeout)

    def after_fork_in_parent(self) -> None:
        self._pass_lock.release()

    @property
    def busy(self) -> bool:
        return self._pass_lock.locked()

    @property
    def busy_here(self) -> bool:
        """A pass runs in this very thread (seen from a signal handler that interrupted it)."""
        return self._pass_thread == threading.get_ident()

    # -- one pass ------------------------------------------------------------------------

    def run_pass(
        self,
        *,
        deadline: float | None = None,
        stop: threading.Event | None = None,
        probe: bool = False,
    ) -> FlushReport:
        """Send everything due now; return what happened by the time it returns.

        The report counts every attempt this flusher recorded meanwhile: those of
        another pass that was running (waited for until ``deadline`` at most) and of
        requests an earlier pass left in flight.

        :param deadline: ``time.monotonic()`` by which to return: nothing new is leased
            after it, and requests still in flight are left to finish in the background.
        :param stop: set to stop leasing; in-flight requests still finish and are recorded.
        :param probe: allow one probe at once even if the circuit is open (explicit flush).
        :raises ConfigurationError: no token to send with.
        :raises StorageError: the database failed (leases simply expire).
        """
        before = dict(self.totals)
        if deadline is None:
            self._pass_lock.acquire()
        elif not self._pass_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return self._report(before)  # another pass is still running: report its work
        self._pass_thread = threading.get_ident()
        try:
            if self._stranded and not self._strays:
                # Passes never overlap: a row still leased by us was stranded by a pass that
                # failed; hand it back rather than wait out its lease (unless locked: later).
                self.store.hand_back(self.owner)
                self._stranded = self.store.count_leased_by(self.owner) > 0
            if probe:
                self.breaker.probe_now()
            self._current = Pass(self, deadline, stop)
            self._current.run()
        except BaseException:
            self._stranded = True
            raise
        finally:
            self._current = None
            self._pass_thread = None
            self._pass_lock.release()
        return self._report(before)

    def _report(self, before: dict[str, int]) -> FlushReport:
        counts = self.store.count_by_state()
        delivered, retried, dead = (self.totals[key] - before[key] for key in before)
        return FlushReport(
            delivered=delivered,
            retried=retried,
            dead=dead,
            pending=counts.get("pending", 0) + counts.get("in_flight", 0),
            blocked=counts.get("blocked", 0),
            paused=self.breaker.paused,
        )

    @property
    def strays(self) -> int:
        """Requests left in flight by a pass that returned at its deadline."""
        return len(self._strays)

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered: the running pass's and the strays."""
        current = self._current
        return len(self._strays) + (0 if current is None else len(current.inflight))

    def adopt(self, inflight: dict[Future[Reply | None], Lease]) -> None:
        """Take over requests a pass leaves in flight: each is recorded when it answers."""
        self._strays.update(inflight)
        for future in inflight:
            future.add_done_callback(self._finish_stray)

    def _finish_stray(self, future: Future[Reply | None]) -> None:
        try:
            self._record_stray(future)
        finally:
            # Only once recorded: a pass hands stranded rows back only when no stray is left.
            self._strays.pop(future, None)

    def _record_stray(self, future: Future[Reply | None]) -> None:
        lease = self._strays.get(future)
        if lease is None or future.cancelled():
            return
        try:
            reply = future.result()
            if reply is None:  # not sent after all: the pass had ended
                try:
                    self.store.hand_back(self.owner, [lease.seq])
                except OutboxError:
                    self._give_back_token(lease, failing=True)  # never made: paid for or not
                    raise
                self._give_back_token(lease, failing=False)
                return
            attempt = self.verdict(lease, reply)
            applied = self.store.record(
                self.owner, [attempt], redact=self.settings.redact_after_delivery
            )
            self.account([(attempt, lease.event_id)], applied)
        except OutboxError as exc:
            self._stranded = True
            logger.warning(
                "the late answer for event %s was not recorded (%s); it is sent again "
                "once its lease expires",
                lease.event_id,
                exc,
            )

    def _give_back_token(self, lease: Lease, *, failing: bool) -> None:
        """Return the token of a late request that was never made, also when handing its
        row back failed: that failure is the one raised, and this one is logged."""
        if not self.pacer.paced:
            return
        try:
            self.pacer.give_back(1)
        except OutboxError as exc:
            if not failing:
                raise
            logger.warning(
                "the rate token of event %s's request, never made, was not given back (%s): "
                "the shared budget is one request short until it refills", lease.event_id, exc,
            )  # fmt: skip

    def verdict(self, lease: Lease, reply: Reply) -> Attempt:
        """``judge`` under the lock shared with late answers (breaker and pacing state)."""
        with self._verdicts:
            return self.judge(lease, reply, self.clock())

    def account(self, finished: list[tuple[Attempt, str]], applied: list[bool]) -> None:
        """Count recorded attempts in ``totals``, run the callbacks of final ones and log
        dead ones: once committed, never for a record that rolled back (it is sent again)."""
        for (attempt, event_id), ok in zip(finished, applied):
            if not ok:
                logger.warning(
                    "lease of event %s expired before its result was recorded; "
                    "the newer outcome stands",
                    event_id,
                )
                continue
            if attempt.outcome not in PAUSED_OUTCOMES:  # handed back for a pause: not retried
                with self._verdicts:
                    self.totals[_TOTALS.get(attempt.state, "retried")] += 1
            logger.debug("event %s: %s (HTTP %s)", event_id, attempt.outcome, attempt.status_code)
            if attempt.state is EventState.DEAD:
                logger.warning("event %s dead-lettered: %s", event_id, attempt.error)
            self.notify(attempt, event_id)

    def transport(self) -> Transport:
        if self._transport is None:
            if not self.settings.token:
                raise ConfigurationError(
                    "cannot deliver without a token: pass token= or set CMS_BEARER_TOKEN"
                )
            self._transport = Transport(
                self.settings.host,
                self.settings.token,
                connect_timeout=self.settings.connect_timeout,
                read_timeout=self.settings.read_timeout,
                connections=self.settings.workers,
                clock=self.clock,
            )
        return self._transport

    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                self.settings.workers, thread_name_prefix="cms-outbox-send"
            )
        return self._executor

    # -- verdicts --------------------------------------------------------------------

    def judge(self, lease: Lease, reply: Reply, now: float) -> Attempt:
        """Turn one reply into the attempt to record, updating breaker and pacing."""
        finished = reply.finished_at
        answer = Answer(
            status_code=reply.status_code,
            finished_at=finished,
            error=reply.error or _server_error(reply),
            retry_after=reply.retry_after,
            advert=parse_advert(dict(reply.rate_headers), finished),
        )
        decision = decide(answer, lease.attempts, lease.created_at, now, self.rules, self.rng)
        if decision.breaker is not None:
            self.pauses.failed(decision.breaker, now, decision.error)
        else:
            self.pauses.answered(now)
        if self.pacer.paced:
            if decision.pause_until is not None:
                self.pacer.refused(now, decision.pause_until, decision.advert)
            else:
                self.pacer.heard(decision.advert)
        return _attempt(lease, reply, decision)

    @property
    def rules(self) -> Rules:
        return Rules(max_age=self.settings.max_age, max_backoff=self.settings.max_backoff)

    def expired(self, lease: Lease, now: float) -> Attempt:
        decision = expiry(now - lease.created_at)
        return Attempt(
            seq=lease.seq,
            state=decision.state,
            outcome=decision.outcome,
            started_at=now,
            duration=0.0,
            error=decision.error,
        )

    def notify(self, attempt: Attempt, event_id: str) -> None:
        """Run the user's callback for a final attempt; its failure is logged, not raised."""
        callback = {EventState.DELIVERED: self.on_delivered, EventState.DEAD: self.on_dead}.get(
            attempt.state
        )
        if callback is None:
            return
        result = TrackResult(
            success=attempt.state is EventState.DELIVERED,
            event_id=event_id,
            state=attempt.state,
            error=attempt.error,
            status_code=attempt.status_code,
            data=parse_body(attempt.response),
        )
        try:
            callback(result)
        except Exception:
            logger.exception("the %s callback failed for event %s", attempt.state.value, event_id)


def _attempt(lease: Lease, reply: Reply, decision: Decision) -> Attempt:
    return Attempt(
        seq=lease.seq,
        state=decision.state,
        outcome=decision.outcome,
        started_at=reply.started_at,
        duration=reply.duration,
        status_code=reply.status_code,
        error=decision.error,
        response=reply.body,
        next_attempt_at=decision.next_attempt_at,
        counts=decision.counts,
    )


def _server_error(reply: Reply) -> str | None:
    if reply.status_code is None or 200 <= reply.status_code < 300:
        return None
    body = parse_body(reply.body)
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return f"HTTP {reply.status_code}: {body['error']}"
    return f"HTTP {reply.status_code}"


def _new_owner() -> str:
    return uuid.uuid4().hex
