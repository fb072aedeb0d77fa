"""``CMSClient``: the official SDK's calls, made durable; its parts are built by ``wiring``."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable

from sqlalchemy import Engine

from . import aio, config, lifecycle
from .errors import ClientClosed, EventNotFound, InvoiceConflict, ValidationError
from .events import Event, build_lead, build_sale, sale_differences, seconds
from .flusher import Callback
from .pacing import RateLimit
from .results import EventState, FlushReport, TrackResult, result_of_row, stored_result
from .store import AppConnection
from .upkeep import Upkeep
from .wiring import Wiring

if TYPE_CHECKING:
    from .scheduling import FlushScheduler
    from .status import Stats

__all__ = ["CMSClient"]

WAIT_IN_A_TRANSACTION = (
    "cannot be combined with connection=: the event exists only once your transaction "
    "commits, after this call returns; call client.result(event_id) after the commit"
)


class CMSClient(Upkeep):
    """Drop-in for the official SDK's ``CMSClient`` that never loses or doubles an event.

    ``track_lead``/``track_sale`` validate and store the event in one transaction and
    return at once; a flusher delivers it. With ``database_url`` the client creates
    (and on ``close()`` disposes of) its own engine; an ``engine=`` passed in is used
    as it is and never disposed of.

    :param token: bearer token (default: env ``CMS_BEARER_TOKEN``); not needed with
        ``flush="off"`` in a process that only enqueues.
    :param host: API base (default: env ``CMS_HOST``, else ``https://api.cme.sh``).
    :param database_url: outbox database (default: env ``CMS_OUTBOX_URL``, else
        ``sqlite:///cms_outbox.db``).
    :param engine: an SQLAlchemy ``Engine`` of the application's instead of
        ``database_url``; used as it is and never disposed of.
    :param create_directories: create a SQLite outbox's missing parent directories; by
        default a missing directory raises ``DirectoryNotFound`` (a mistyped path must
        not become a new, empty outbox).
    :param flush: ``"background"`` delivers from this process; ``"off"`` only when
        ``flush()`` is called (or a ``cms-outbox run`` daemon delivers).
    :param rate_limit: ``"auto"`` (default) paces every flusher of this outbox together
        at the limit the service advertises or teaches by its 429s, starting from the
        documented 60/min; a number of requests per minute replaces that start and is a
        ceiling never exceeded; ``None`` or ``0`` for no pacing.
    :param workers: concurrent requests of this client's flusher.
    :param durability: ``"full"`` fsyncs every enqueue (survives power loss),
        ``"normal"`` trades that for speed (SQLite).
    :param auto_migrate: bring the tables to the current schema; with False only check.
    :param interval: seconds between the background flusher's passes when idle (an
        enqueue wakes it at once).
    :param max_age: seconds after which an event still not delivered is dead-lettered
        (default: 30 days); the only way retries end.
    :param retention: seconds delivered events are kept before the hourly purge
        (default: 7 days; dead ones: 30 days).
    :param connect_timeout: seconds to connect to the service (default: 3.05).
    :param read_timeout: seconds to wait for its answer (default: 10).
    :param lease_seconds: how long a leased event stays this flusher's before another
        may take it (default: twice one attempt's timeouts plus 15 s); must outlive one
        attempt.
    :param final_flush_timeout: seconds ``close()`` (and interpreter exit) spends
        delivering what is due (default: 5; 0 for none).
    :param allow_insecure: allow ``http://`` to a host that is not loopback (the token
        would travel in clear text).
    :param redact_after_delivery: drop the customer's name, email and avatar from the
        stored payload once delivered.
    :param on_delivered: called with the ``TrackResult`` of each event this client's
        flusher delivers (in the flusher's thread; an exception is logged).
    :param on_dead: the same for each event it dead-letters.
    :param clock: the current time as an aware ``datetime``; event timestamps, due
        times, ``max_age``, retention and ``stats()`` read it (tests inject one).
    :raises ConfigurationError: a setting that cannot work.
    :raises SchemaError: the database is not at this version's schema.
    """

    def __init__(
        self,
        token: str | None = None,
        host: str | None = None,
        database_url: str | None = None,
        *,
        engine: Engine | None = None,
        create_directories: bool = False,
        flush: str = "background",
        rate_limit: int | str | RateLimit | None = "auto",
        workers: int = 8,
        durability: str = "full",
        auto_migrate: bool = True,
        interval: float = 1.0,
        max_age: float | None = None,
        retention: float | None = None,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        lease_seconds: float | None = None,
        final_flush_timeout: float | None = None,
        allow_insecure: bool = False,
        redact_after_delivery: bool = False,
        on_delivered: Callback | None = None,
        on_dead: Callback | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.settings = config.resolve(
            token=token,
            host=host,
            database_url=database_url,
            create_directories=create_directories,
            flush=flush,
            rate_limit=RateLimit.parse(rate_limit),
            workers=workers,
            durability=durability,
            auto_migrate=auto_migrate,
            interval=interval,
            max_age=max_age,
            retention=retention,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            lease_seconds=lease_seconds,
            final_flush_timeout=final_flush_timeout,
            allow_insecure=allow_insecure,
            redact_after_delivery=redact_after_delivery,
        )
        self._clock = clock
        self._closed = False
        self._close_lock = threading.RLock()  # a signal handler may close mid-close
        self._close_deferred = False
        self._flushed = False  # flush() was called: this client took on delivery
        self._wiring = Wiring(
            self.settings, engine, clock=self._now, on_delivered=on_delivered, on_dead=on_dead
        )
        self.engine, self.store = self._wiring.engine, self._wiring.store
        self.flusher = self._wiring.flusher
        self._scheduler: FlushScheduler | None = None
        if self.settings.flush == "background":
            self._scheduler = self._new_scheduler()
            self._scheduler.start()
        lifecycle.register(self)

    def _new_scheduler(self, kind: str = "client") -> FlushScheduler:
        """Passes of this client's flusher, woken by NOTIFY, with hourly purges and a
        heartbeat (or a daemon's: ``kind="daemon"``)."""
        return self._wiring.new_scheduler(maintenance=self.purge_expired, kind=kind)

    def __repr__(self) -> str:
        return (
            f"CMSClient(host={self.settings.host!r}, database={self.engine.url!r}, "
            f"flush={self.settings.flush!r})"
        )

    def __enter__(self) -> CMSClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the official SDK's calls ------------------------------------------------------

    def track_lead(
        self,
        event_name: str,
        customer_external_id: str,
        click_id: str | None = None,
        customer_name: str | None = None,
        customer_email: str | None = None,
        customer_avatar: str | None = None,
        timestamp: datetime | str | None = None,
        mode: str | None = None,
        *,
        connection: AppConnection | None = None,
        wait: float | None = None,
    ) -> TrackResult:
        """Store a lead event for delivery; returns once it is durable.

        :param mode: ``"deferred"`` with ``click_id`` stores the click/customer
            association; later events of that customer omit ``click_id``.
        :param connection: the application's SQLAlchemy ``Connection`` or ``Session``, or
            Django's connection inside ``transaction.atomic()``: the event is inserted in
            its transaction and exists only if it commits.
        :param wait: seconds to try delivering before returning; the result then
            carries the service's answer (the event stays stored if it cannot be sent).
            Not with ``connection``: the event exists only once that commits.
        :raises ValidationError: bad input, naming the field (``wait`` given with
            ``connection``); nothing was written.
        :raises StorageError: the database failed; nothing was written.
        """
        self._check_open()
        event = build_lead(
            event_name, customer_external_id, click_id, customer_name, customer_email,
            customer_avatar, timestamp, mode, now=self._clock(),
        )  # fmt: skip
        return self._enqueue(event, connection, wait)

    def track_sale(
        self,
        event_name: str,
        customer_external_id: str,
        invoice_id: str,
        amount: int,
        currency: str,
        click_id: str | None = None,
        customer_name: str | None = None,
        customer_email: str | None = None,
        customer_avatar: str | None = None,
        timestamp: datetime | str | None = None,
        *,
        connection: AppConnection | None = None,
        wait: float | None = None,
    ) -> TrackResult:
        """Store a sale event for delivery; returns once it is durable.

        ``amount`` is an ``int`` in cents; ``currency`` 3 letters, sent upper-case
        (``"usd"`` as ``"USD"``). A second sale with an ``invoice_id`` already
        in the outbox stores nothing and returns the existing event's result.
        ``connection`` and ``wait`` are ``track_lead``'s.

        :raises InvoiceConflict: ``invoice_id`` is stored with another customer, amount
            or currency; nothing was written.
        :raises ValidationError: bad input, naming the field; nothing was written.
        :raises StorageError: the database failed; nothing was written.
        """
        self._check_open()
        event = build_sale(
            event_name, customer_external_id, invoice_id, amount, currency, click_id,
            customer_name, customer_email, customer_avatar, timestamp, now=self._clock(),
        )  # fmt: skip
        return self._enqueue(event, connection, wait)

    def _enqueue(
        self, event: Event, connection: AppConnection | None, wait: float | None
    ) -> TrackResult:
        if wait is not None:
            wait = seconds("wait", wait)
            if connection is not None:  # it would wait for a row no one else can see yet
                raise ValidationError("wait", WAIT_IN_A_TRANSACTION)
        stored = self.store.insert(event, connection)
        if (existing := stored.existing) is not None:  # the unique index decided; compare
            differences = sale_differences(event, existing["payload"])
            if differences is not None:
                raise InvoiceConflict(existing["invoice_id"], differences, existing["event_id"])
            return result_of_row(existing)
        if self._scheduler is not None and stored.state is EventState.PENDING:
            self._scheduler.wake()
        if wait is not None and stored.state is EventState.PENDING:
            return self._wiring.wait_for(event.event_id, wait, alone=self._scheduler is None)
        return stored_result(event.event_id, stored.state)

    # -- delivery and inspection ------------------------------------------------------

    def flush(self, timeout: float | None = None) -> FlushReport:
        """Deliver everything due now; return what happened and what is left.

        Does not sit out backoff or an outage: with the service down it sends one
        probe and returns. With ``timeout`` it returns on time whatever the service
        does: a request still unanswered then finishes in the background and its
        outcome is recorded when it arrives. The report counts what was delivered
        meanwhile by any pass of this client, the background flusher's included.

        :raises ConfigurationError: no token to send with.
        :raises ValidationError: ``timeout`` is not a number of seconds >= 0.
        """
        self._check_open()
        if timeout is not None:
            timeout = seconds("timeout", timeout)
        self._flushed = True
        deadline = None if timeout is None else time.monotonic() + timeout
        return self.flusher.run_pass(deadline=deadline, probe=True)

    # -- asyncio: the same calls, awaited, in a worker thread (see ``cms_outbox.aio``) -------

    atrack_lead = aio.in_thread(track_lead)
    atrack_sale = aio.in_thread(track_sale)
    aflush = aio.in_thread(flush)

    def result(self, event_id: str) -> TrackResult:
        """The current ``TrackResult`` of any stored event.

        :raises EventNotFound: no such event in the outbox.
        """
        self._check_open()
        row = self.store.get(event_id)
        if row is None:
            raise EventNotFound(f"event {event_id!r} is not in the outbox")
        return result_of_row(row)

    def purge_expired(self) -> int:
        """Delete delivered and dead events older than the retention periods; how many."""
        return self._wiring.purge_expired(self._now())

    def stats(self) -> Stats:
        """Counters and gauges of this client's outbox, for dashboards and metrics.

        ``enqueued``, ``delivered``, ``retried`` and ``dead`` count what happened in the
        outbox (all its writers and flushers) since this client started and never
        decrease, not even across purges; ``pending`` and ``oldest_pending_age`` are now.

        :raises StorageError: the database failed.
        """
        self._check_open()
        return self._wiring.activity.stats(self._now())

    # -- lifecycle ------------------------------------------------------------------

    def close(self) -> None:
        """Stop the background flusher gracefully: a bounded final flush, then release.

        Returns within ``final_flush_timeout`` (at least one second, for requests
        already in flight) whatever the service does; a request still unanswered then
        is abandoned and its event sent again once its lease expires. Idempotent, and
        safe from any thread or a signal handler. Events not delivered stay stored for
        next time, and one WARNING line says how many and where.
        """
        with self._close_lock:
            if self._closed and not self._close_deferred:
                return
            self._closed = True
            # From a signal handler that interrupted this thread inside a write or a pass, any
            # wait would wait for itself: stop new work, finish at exit or the next close().
            self._close_deferred = self.store.busy_here or self.flusher.busy_here
            if self._close_deferred:
                if self._scheduler is not None:
                    self._scheduler.stop_event.set()
                return
        self._wiring.shut_down(
            self._scheduler, announce=self._scheduler is not None or self._flushed
        )

    aclose = aio.in_thread(close)

    @property
    def outbox(self) -> str:
        """The outbox database's URL, without credentials (for messages)."""
        return self._wiring.outbox

    def _now(self) -> float:
        """The injected clock as epoch seconds: event times, due times, retention."""
        return self._clock().timestamp()

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed("this CMSClient is closed")

    def _before_fork(self) -> None:
        self._wiring.before_fork(None if self._closed else self.settings.attempt_timeout + 1)

    def _after_fork_in_parent(self) -> None:
        self._wiring.after_fork_in_parent()

    def _after_fork_in_child(self) -> None:
        self._wiring.after_fork_in_child(self._scheduler, closed=self._closed)
