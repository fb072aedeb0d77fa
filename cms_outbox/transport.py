"""HTTP to the CMS service: one pool of keep-alive connections, no retries.

urllib3 directly, as the official SDK does: ``requests`` on top of it would add a
tenth of a short script's start (its imports) and nothing the outbox uses. A response
or a failure comes back as a value; the outbox owns retrying, so urllib3's own retries
and redirects are switched off.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    LocationParseError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

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
    """Sends wire payloads; safe to share between threads.

    :param connections: keep-alive connections kept open (one per worker sending).
    :param clock: epoch seconds stamped as each reply's start: backoffs and pauses are
        counted from it, on the same clock as the flusher's (tests inject one).
    :raises ConfigurationError: a host that is not a usable URL.
    """

    def __init__(
        self,
        host: str,
        token: str,
        *,
        connect_timeout: float = 3.05,
        read_timeout: float = 10.0,
        connections: int = 8,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._base = host.rstrip("/")
        try:
            url = urllib3.util.parse_url(self._base)
            if url.scheme not in ("http", "https") or not url.host:
                raise LocationParseError(self._base)
        except LocationParseError as exc:
            raise ConfigurationError(f"host {host!r} is not a usable URL: {exc}") from exc
        self._paths = {kind: (url.path or "") + path for kind, path in PATHS.items()}
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"cms-outbox/{__version__}",
        }
        options: dict[str, object] = {}
        if url.scheme == "https":
            options["ca_certs"] = _ca_bundle()
        # Not a PoolManager: there is one host, and no proxy from the environment for a
        # client that carries a token.
        self._pool = urllib3.connection_from_url(
            f"{url.scheme}://{url.netloc}",
            maxsize=connections,
            block=False,
            retries=False,
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            **options,
        )
        self._clock = clock

    def __repr__(self) -> str:
        return f"Transport(host={self._base!r})"  # never the token

    def send(self, kind: str, event_id: str, payload: str) -> Reply:
        """POST one event with its Idempotency-Key; never raises for network trouble."""
        body = payload.encode("utf-8")
        headers = {**self._headers, "Idempotency-Key": event_id, "Content-Length": str(len(body))}
        started = self._clock()
        clock = time.perf_counter()
        try:
            response = self._pool.urlopen(
                "POST", self._paths[kind], body=body, headers=headers, redirect=False
            )
        except HTTPError as exc:
            return Reply(started, time.perf_counter() - clock, error=_describe(exc))
        text = response.data.decode("utf-8", errors="replace")  # JSON is UTF-8 (RFC 8259)
        return Reply(
            started,
            time.perf_counter() - clock,
            status_code=response.status,
            body=text[:MAX_BODY],
            retry_after=response.headers.get("Retry-After"),
            rate_headers=tuple(
                (name.lower(), value)
                for name, value in response.headers.items()
                if name.lower() in RATE_HEADERS
            ),
        )

    def close(self) -> None:
        self._pool.close()


def _ca_bundle() -> str | None:
    """The certificates to trust: certifi's bundle when installed (as the SDK and
    ``requests`` do), else the system's."""
    try:
        import certifi
    except ImportError:
        return None
    return str(certifi.where())


def _describe(exc: HTTPError) -> str:
    """The failure in plain words: urllib3's text (pools, retries, reprs) helps no one."""
    text = str(exc)
    # Before the timeouts: urllib3 counts a refused connection as a connect timeout.
    if isinstance(exc, (NewConnectionError, ProtocolError, SSLError)):
        for words, plain in _CONNECTION_FAILURES:
            if words in text:
                return f"ConnectionError: {plain}"
        return "ConnectionError: the connection to the service failed"
    if isinstance(exc, ConnectTimeoutError):
        return "ConnectTimeout: no answer within the timeout"
    if isinstance(exc, ReadTimeoutError):
        return "ReadTimeout: no answer within the timeout"
    # The message can hold the URL but never the headers, so the token cannot leak here.
    return f"{type(exc).__name__}: {text}"


_CONNECTION_FAILURES = (
    ("Connection refused", "connection refused (nothing listens at the host and port)"),
    ("Name or service not known", "the host name does not resolve"),
    ("Temporary failure in name resolution", "the host name does not resolve (DNS)"),
    ("Connection reset", "the connection was reset by the other side"),
    ("RemoteDisconnected", "the service closed the connection without answering"),
    ("Network is unreachable", "the network is unreachable"),
    ("CERTIFICATE_VERIFY_FAILED", "the service's TLS certificate could not be verified"),
)
