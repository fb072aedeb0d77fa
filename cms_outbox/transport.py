"""HTTP to the CMS service: one keep-alive ``requests.Session`` per thread, no retries.

A response or a failure comes back as a value; the outbox owns retrying, so
urllib3's own retries are switched off.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

import requests
from requests.adapters import HTTPAdapter

from .__version__ import __version__
from .errors import ConfigurationError

__all__ = ["MAX_BODY", "Reply", "Transport"]

MAX_BODY = 2048  # characters of a response body kept per attempt
PATHS = {"lead": "/track/lead", "sale": "/track/sale"}
# The rate-limit headers pacing reads: the IETF draft's and the de facto X-RateLimit-*.
RATE_HEADERS = frozenset(
    ("ratelimit-policy", "ratelimit", "x-ratelimit-limit", "x-ratelimit-remaining",
     "x-ratelimit-reset")
)  # fmt: skip


@dataclass(frozen=True)
class Reply:
    """One HTTP attempt: the status and (bounded) body, or the error when there was no answer."""

    started_at: float
    duration: float
    status_code: int | None = None
    body: str | None = None
    retry_after: str | None = None
    error: str | None = None
    rate_headers: tuple[tuple[str, str], ...] = ()  # (lower-case name, value) of RateLimit*

    @property
    def finished_at(self) -> float:
        return self.started_at + self.duration


class Transport:
    """Sends wire payloads; safe to share between threads (each gets its own session).

    :param clock: epoch seconds stamped as each reply's start: backoffs and pauses are
        counted from it, on the same clock as the flusher's (tests inject one).
    """

    def __init__(
        self,
        host: str,
        token: str,
        *,
        connect_timeout: float = 3.05,
        read_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._base = host.rstrip("/")
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"cms-outbox/{__version__}",
        }
        # Prepared once per endpoint: ``Session.request`` would re-merge session settings,
        # cookies and headers on every call, which costs more CPU than the HTTP exchange.
        try:
            self._templates = {
                kind: requests.Request("POST", self._base + path, headers=headers).prepare()
                for kind, path in PATHS.items()
            }
        except requests.RequestException as exc:
            raise ConfigurationError(f"host {host!r} is not a usable URL: {exc}") from exc
        self._timeout = (connect_timeout, read_timeout)
        self._clock = clock
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Transport(host={self._base!r})"  # never the token

    def send(self, kind: str, event_id: str, payload: str) -> Reply:
        """POST one event with its Idempotency-Key; never raises for network trouble."""
        request = self._templates[kind].copy()
        body = payload.encode("utf-8")
        request.headers["Idempotency-Key"] = event_id
        request.headers["Content-Length"] = str(len(body))
        request.body = body
        started = self._clock()
        clock = time.perf_counter()
        try:
            response = self._session().send(request, timeout=self._timeout, allow_redirects=False)
        except requests.RequestException as exc:
            return Reply(started, time.perf_counter() - clock, error=_describe(exc))
        return Reply(
            started,
            time.perf_counter() - clock,
            status_code=response.status_code,
            body=response.text[:MAX_BODY],
            retry_after=response.headers.get("Retry-After"),
            rate_headers=tuple(
                (name.lower(), value)
                for name, value in response.headers.items()
                if name.lower() in RATE_HEADERS
            ),
        )

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False  # no proxy or .netrc surprises for a token-bearing client
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session


def _describe(exc: requests.RequestException) -> str:
    """The failure in plain words: urllib3's text (pools, retries, reprs) helps no one."""
    kind = type(exc).__name__
    if isinstance(exc, requests.Timeout):
        return f"{kind}: no answer within the timeout"
    text = str(exc)
    if isinstance(exc, requests.ConnectionError):
        for words, plain in _CONNECTION_FAILURES:
            if words in text:
                return f"{kind}: {plain}"
        return f"{kind}: the connection to the service failed"
    # The message can hold the URL but never the headers, so the token cannot leak here.
    return f"{kind}: {text}"


_CONNECTION_FAILURES = (
    ("Connection refused", "connection refused (nothing listens at the host and port)"),
    ("Name or service not known", "the host name does not resolve"),
    ("Temporary failure in name resolution", "the host name does not resolve (DNS)"),
    ("Connection reset", "the connection was reset by the other side"),
    ("RemoteDisconnected", "the service closed the connection without answering"),
    ("Network is unreachable", "the network is unreachable"),
    ("CERTIFICATE_VERIFY_FAILED", "the service's TLS certificate could not be verified"),
)
