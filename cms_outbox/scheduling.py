"""APScheduler 3 glue: flusher passes in the background or as a daemon, woken at once.

The pass job is a one-shot ``date`` job that schedules its successor when it
ends, so two runs never overlap and APScheduler never skips (and warns about) a
run. ``wake()`` moves the pending run to now; a wake while a pass runs makes the
pass go round once more, so an event enqueued at any moment is picked up at once.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.job import Job
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_STOPPED, BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler

from .errors import OutboxError

__all__ = ["FlushScheduler"]

logger = logging.getLogger(__name__)
# APScheduler logs at INFO every job it adds, runs, finishes and removes: with a one-shot
# pass job each interval (and the daemon's stop watcher five times a second), an
# application logging at INFO would get several lines a second of it. Our schedulers and
# their executor log to loggers of their own, under "apscheduler" so that the
# application's settings for it apply, and those routine lines pass only where DEBUG does.
_SCHEDULER_LOGGER = "apscheduler.scheduler.cms_outbox"
_EXECUTOR = "cms_outbox"  # APScheduler logs its runs as apscheduler.executors.<alias>


class _RoutineAtDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or logging.getLogger(record.name).isEnabledFor(
            logging.DEBUG
        )


_ROUTINE = _RoutineAtDebug()
for _name in (_SCHEDULER_LOGGER, f"apscheduler.executors.{_EXECUTOR}"):
    logging.getLogger(_name).addFilter(_ROUTINE)
ERROR_LOG_EVERY = 60.0  # seconds between repeats of the same failing-pass log line
MAX_RETRY_DELAY = 30.0  # seconds between passes while they keep failing


class _StopSafe:
    """APScheduler 3 races its own shutdown: a job run that ends as ``shutdown()`` begins
    makes the scheduler thread look for the job among the not-yet-started ones and print
    ``JobLookupError``, or submit to an executor already shut down. Processing jobs
    under the job store lock, and not at all once stopped, closes that window."""

    _jobstores_lock: Any
    state: int

    def _process_jobs(self) -> float | None:
        with self._jobstores_lock:  # reentrant; shutdown() takes it too
            if self.state == STATE_STOPPED:
                return None
            try:
                return super()._process_jobs()  # type: ignore[misc, no-any-return]
            except JobLookupError:
                if self.state == STATE_STOPPED:
                    return None
                raise


class _BackgroundScheduler(_StopSafe, BackgroundScheduler):  # type: ignore[misc]
    pass


class _BlockingScheduler(_StopSafe, BlockingScheduler):  # type: ignore[misc]
    pass


class FlushScheduler:
    """Runs ``run_pass(stop)`` now, every ``interval`` seconds, and whenever woken."""

    def __init__(
        self,
        run_pass: Callable[[threading.Event], Any],
        *,
        interval: float,
        maintenance: Callable[[], Any] | None = None,
        maintenance_interval: float = 3600.0,
        listen: Callable[[Callable[[], None], threading.Event], None] | None = None,
        in_flight: Callable[[], int] = lambda: 0,
        beat: Callable[[], None] | None = None,
    ) -> None:
        """:param listen: blocks calling its first argument on every outside wake-up
        signal (PostgreSQL NOTIFY) until its second is set; run in a thread.
        :param in_flight: how many requests await an answer (for the stop line).
        :param beat: called before each run of passes (a heartbeat that limits itself)."""
        self._run_pass = run_pass
        self._beat = beat
        self._in_flight = in_flight
        self._listen = listen
        self._interval = interval
        self._maintenance = maintenance
        self._maintenance_interval = maintenance_interval
        self._reset_state()

    def _reset_state(self) -> None:
        self._lock = threading.Lock()
        self.stop_event = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._scheduler: BaseScheduler | None = None
        self._next: Job | None = None
        self._running = False
        self._dirty = False
        self._woken = False
        self._last_error: tuple[str, float] = ("", 0.0)
        self._failures = 0

    @property
    def started(self) -> bool:
        return self._scheduler is not None and not self.stop_event.is_set()

    def start(self) -> None:
        """Start a ``BackgroundScheduler`` in this process; returns at once."""
        self._scheduler = _BackgroundScheduler(**_options())
        self._add_jobs(self._scheduler)
        self._scheduler.start()
        self._start_listening()

    def run_forever(self, grace: float) -> None:
        """Run a ``BlockingScheduler`` until ``stop_event`` is set, then end within ``grace``.

        Signal handlers should only set ``stop_event``: a watcher job shuts the
        scheduler down, the running pass stops leasing, finishes its requests and
        hands unsent rows back.
        """
        scheduler = self._scheduler = _BlockingScheduler(**_options())
        self._add_jobs(scheduler)

        def watch() -> None:
            if self.stop_event.is_set():
                scheduler.shutdown(wait=False)

        scheduler.add_job(
            watch, "interval", seconds=0.2, max_instances=1, coalesce=True, executor=_EXECUTOR
        )
        self._start_listening()
        scheduler.start()
        if self._idle.is_set():
            logger.info("stopping: no delivery in progress")
        else:
            requests = self._in_flight()
            logger.info(
                "stopping: leasing nothing more; waiting up to %.0fs for %d request%s in "
                "flight to be answered and recorded",
                grace, requests, "" if requests == 1 else "s",
            )  # fmt: skip
        if not self._idle.wait(grace):
            logger.warning("the last pass did not end within %.0fs; its leases will expire", grace)

    def wake(self) -> None:
        """Run a pass now (cheap when one is already running or due)."""
        with self._lock:
            if self._running:
                self._dirty = True
                return
            job = self._next
            if job is None or self._woken:
                return
            self._woken = True
        try:
            job.modify(next_run_time=datetime.now(timezone.utc))
        except JobLookupError:
            pass  # it has just started and will see the new row

    def stop(self, timeout: float) -> bool:
        """Stop passes; wait up to ``timeout`` for the running one. Returns True when idle."""
        self.stop_event.set()
        scheduler, self._scheduler = self._scheduler, None
        idle = self._idle.wait(timeout)
        if scheduler is not None and scheduler.running:
            scheduler.shutdown(wait=False)
        return idle

    def after_fork_in_child(self) -> None:
        """In a forked child the scheduler's threads are gone: start afresh if we were started."""
        was_started = self.started
        self._reset_state()
        if was_started:
            self.start()

    def _start_listening(self) -> None:
        if self._listen is not None:
            listen = self._listen
            thread = threading.Thread(
                target=listen, args=(self.wake, self.stop_event), name="cms-outbox-listen",
                daemon=True,
            )  # fmt: skip
            thread.start()

    def _add_jobs(self, scheduler: BaseScheduler) -> None:
        self._next = scheduler.add_job(
            self._job, "date", run_date=_now(), misfire_grace_time=None, executor=_EXECUTOR
        )
        if self._maintenance is not None:
            scheduler.add_job(
                self._guarded(self._maintenance),
                "interval",
                seconds=self._maintenance_interval,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
                executor=_EXECUTOR,
            )

    def _job(self) -> None:
        with self._lock:
            self._running = True
            self._dirty = False
            self._woken = False
            self._next = None
            self._idle.clear()
        try:
            if self._beat is not None and not self.stop_event.is_set():
                self._guarded(self._beat)()
            while not self.stop_event.is_set():
                self._guarded(lambda: self._run_pass(self.stop_event))()
                with self._lock:
                    if not self._dirty:
                        break
                    self._dirty = False
        finally:
            with self._lock:
                self._running = False
                scheduler = self._scheduler
                if scheduler is not None and not self.stop_event.is_set():
                    # After failed passes (database down), retry less and less often.
                    delay = min(self._interval * 2 ** min(self._failures, 10), MAX_RETRY_DELAY)
                    self._next = scheduler.add_job(
                        self._job,
                        "date",
                        run_date=_now() + timedelta(seconds=max(delay, self._interval)),
                        misfire_grace_time=None,
                        executor=_EXECUTOR,
                    )
                self._idle.set()

    def _guarded(self, work: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            try:
                work()
            except OutboxError as exc:
                self._failures += 1
                self._log_failure(exc)
            except Exception:
                self._failures += 1
                logger.exception("flusher pass failed unexpectedly")
            else:
                if self._failures:
                    logger.warning("flusher passes succeed again after %d failures", self._failures)
                    self._failures = 0

        return run

    def _log_failure(self, exc: OutboxError) -> None:
        message = str(exc)
        last, at = self._last_error
        now = time.monotonic()
        if message != last or now - at >= ERROR_LOG_EVERY:
            logger.error("flusher pass failed: %s (the next pass tries again)", message)
            self._last_error = (message, now)


def _options() -> dict[str, Any]:
    return {
        "timezone": timezone.utc,
        "logger": logging.getLogger(_SCHEDULER_LOGGER),
        "executors": {_EXECUTOR: ThreadPoolExecutor()},
    }


def _now() -> datetime:
    return datetime.now(timezone.utc)
