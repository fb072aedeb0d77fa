"""The sandbox's memory (requests, acceptances, associations) and the rules that decide.

Every mutation happens under one lock, so concurrent duplicates are decided exactly
as a single-threaded service would decide them.
"""

from __future__ import annotations

import dataclasses
import hmac
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from cms_outbox.sandbox.faults import Faults
from cms_outbox.sandbox.limits import Limiter, Limits
from cms_outbox.sandbox.protocol import (
    Problem,
    error_body,
    error_type_for,
    parse_body,
    success_body,
    validate,
)

__all__ = ["Accepted", "Ledger", "Reply", "RequestRecord"]


@dataclass(frozen=True)
class Accepted:
    """One event the sandbox accepted (answered 200 for, replays excluded)."""

    kind: str
    idempotency_key: str | None
    payload: dict[str, Any]
    customer_external_id: str
    click_id: str | None
    received_at: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RequestRecord:
    """One request received on a non-admin path, whatever the answer.

    ``status`` is ``None`` when the connection was dropped without an answer (the
    ``reset`` fault, or a ``stall`` cut short by ``stop()``/``down()``).
    """

    time: float
    path: str
    kind: str | None
    status: int | None
    idempotency_key: str | None
    customer_external_id: str | None
    error_type: str | None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status, JSON body bytes, extra headers."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    error_type: str | None = None


def error_reply(
    status: int,
    message: str,
    type_: str | None = None,
    details: dict[str, Any] | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> Reply:
    type_ = type_ or error_type_for(status)
    return Reply(status, error_body(status, message, type_, details), headers, type_)


def _problem_reply(problem: Problem, extra: dict[str, Any] | None = None) -> Reply:
    details = {**problem.details(), **(extra or {})}
    return error_reply(problem.status, problem.message, problem.type, details)


class _Slot:
    """A request's record, replaced once its answer is known (arrival order is kept)."""

    __slots__ = ("record",)

    def __init__(self, record: RequestRecord) -> None:
        self.record = record


class Ledger:
    """State and decisions of the fake service; thread-safe."""

    def __init__(
        self,
        token: str,
        limits: Limits,
        baseline: Faults,
        seed: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """:param clock: epoch seconds, for the rate limit's windows and its headers."""
        self.lock = threading.Lock()
        self._expected = f"Bearer {token}".encode()
        self._limiter = Limiter(limits)
        self._baseline = baseline
        self._seed = seed
        self._clock = clock
        self._faults = baseline
        self._rng = random.Random(seed)
        self._slots: list[_Slot] = []
        self._accepted: list[Accepted] = []
        self._replies: dict[str, bytes] = {}
        self._key_counts: dict[str, int] = {}
        self._invoices: set[str] = set()
        self._associations: dict[str, str] = {}

    # -- views ---------------------------------------------------------------------

    @property
    def accepted(self) -> list[Accepted]:
        with self.lock:
            return list(self._accepted)

    @property
    def requests(self) -> list[RequestRecord]:
        with self.lock:
            return [slot.record for slot in self._slots]

    def accepted_count(self, idempotency_key: str) -> int:
        with self.lock:
            return self._key_counts.get(idempotency_key, 0)

    # -- faults --------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        with self.lock:
            return self._faults

    def update_faults(self, update: Callable[[Faults], Faults]) -> Faults:
        with self.lock:
            self._faults = update(self._faults)
            return self._faults

    def clear_faults(self) -> None:
        with self.lock:
            self._faults = self._baseline

    def reset(self) -> None:
        with self.lock:
            self._faults = self._baseline
            self._rng = random.Random(self._seed)
            self._slots = []
            self._accepted = []
            self._replies = {}
            self._key_counts = {}
            self._invoices = set()
            self._associations = {}
            self._limiter.reset()

    # -- rate limit ----------------------------------------------------------------

    @property
    def limits(self) -> Limits:
        with self.lock:
            return self._limiter.limits

    def update_limits(self, update: Callable[[Limits], Limits]) -> Limits:
        """Change the rate limit while running; requests already counted stay counted."""
        with self.lock:
            self._limiter.limits = update(self._limiter.limits)
            return self._limiter.limits

    # -- request records -----------------------------------------------------------

    def arrive(self, path: str, kind: str | None, key: str | None, customer: str | None) -> _Slot:
        slot = _Slot(RequestRecord(time.time(), path, kind, None, key, customer, None))
        with self.lock:
            self._slots.append(slot)
        return slot

    def settle(self, slot: _Slot, status: int | None, error_type: str | None) -> None:
        with self.lock:
            slot.record = dataclasses.replace(slot.record, status=status, error_type=error_type)

    # -- decisions -----------------------------------------------------------------

    def decide(self, kind: str, authorization: str | None, key: str | None, raw: bytes) -> Reply:
        """Answer an authenticated-or-not ``/track/<kind>`` request whose delays are done.

        Order: auth (401), rate limit (429), injected status, JSON (400) and
        validation (422), idempotent replay, deferred resolution (404/422), invoice
        dedupe (409), accept.
        """
        if authorization is None or not hmac.compare_digest(
            authorization.encode("utf-8", "replace"), self._expected
        ):
            return error_reply(
                401,
                "invalid or missing bearer token",
                headers=(("WWW-Authenticate", 'Bearer realm="cms"'),),
            )
        with self.lock:
            allowed, headers = self._limiter.admit(self._clock())
            if not allowed:
                limits = self._limiter.limits
                return error_reply(
                    429,
                    f"rate limit exceeded: {limits.requests} requests per {limits.window:g}s",
                    details={"limit": limits.requests, "window": limits.window,
                             "retryAfter": int(dict(headers)["Retry-After"])},
                    headers=headers,
                )  # fmt: skip
            injected = self._injected_status()
        reply = injected or self._answer(kind, key, raw)
        if headers:
            reply = dataclasses.replace(reply, headers=reply.headers + headers)
        return reply

    def _answer(self, kind: str, key: str | None, raw: bytes) -> Reply:
        try:
            payload = parse_body(raw)
            validate(kind, payload)
        except Problem as problem:
            return _problem_reply(problem)
        with self.lock:
            return self._accept(kind, key, payload)

    def _injected_status(self) -> Reply | None:
        faults = self._faults
        status: int | None = None
        if faults.force_status is not None:
            status = faults.force_status
            if faults.force_count is not None:
                remaining = faults.force_count - 1
                self._faults = dataclasses.replace(
                    faults,
                    force_status=None if remaining == 0 else faults.force_status,
                    force_count=None if remaining == 0 else remaining,
                )
        elif faults.error_rate > 0 and self._rng.random() < faults.error_rate:
            status = faults.error_status
        if status is None:
            return None
        headers: tuple[tuple[str, str], ...] = ()
        if status in (429, 503) and faults.retry_after is not None:
            headers = (("Retry-After", faults.retry_after),)
        return error_reply(
            status, f"injected fault: HTTP {status}", details={"injected": True}, headers=headers
        )

    def _accept(self, kind: str, key: str | None, payload: dict[str, Any]) -> Reply:
        if key is not None and key in self._replies:
            return Reply(200, self._replies[key])  # idempotent replay: same answer, no new event
        customer: str = payload["customerExternalId"]
        click_id: str | None = payload.get("clickId")
        association = self._associations.get(customer)
        deferred_setup = kind == "lead" and payload.get("mode") == "deferred"
        if deferred_setup:
            resolved = click_id
        elif click_id is None:
            if association is None:
                return error_reply(
                    404,
                    f"no deferred association for customer {customer!r}",
                    "not_found",
                    {"customerExternalId": customer},
                )
            resolved = association
        elif association is not None:
            return error_reply(
                422,
                f"customer {customer!r} already has a deferred association; "
                "send follow-up events without clickId",
                "duplicate_attribution",
                {"field": "clickId", "customerExternalId": customer},
            )
        else:
            resolved = click_id
        if kind == "sale" and payload["invoiceId"] in self._invoices:
            invoice = payload["invoiceId"]
            return error_reply(
                409,
                f"invoice {invoice!r} was already tracked",
                "duplicate",
                {"field": "invoiceId", "invoiceId": invoice},
            )
        body = success_body(kind, payload)
        if deferred_setup and click_id is not None:
            self._associations.setdefault(customer, click_id)  # a repeat keeps the first
        if kind == "sale":
            self._invoices.add(payload["invoiceId"])
        if key is not None:
            self._replies[key] = body
            self._key_counts[key] = self._key_counts.get(key, 0) + 1
        self._accepted.append(Accepted(kind, key, payload, customer, resolved, time.time()))
        return Reply(200, body)
