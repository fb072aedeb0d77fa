"""Settings, and the one function that reads the environment.

Explicit arguments win, then ``CMS_*`` environment variables, then defaults.
Everything below ``resolve`` takes a frozen ``Settings``; nothing else in the
library looks at ``os.environ``.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigurationError
from .pacing import AUTO, RateLimit

__all__ = ["DEFAULT_DATABASE_URL", "DEFAULT_HOST", "Settings", "dashboard_password", "resolve"]

DEFAULT_HOST = "https://api.cme.sh"
DEFAULT_DATABASE_URL = "sqlite:///cms_outbox.db"
DAY = 86400.0


@dataclass(frozen=True)
class Settings:
    """Validated configuration of one client or daemon; ``repr`` masks the token."""

    token: str | None = field(default=None, repr=False)
    host: str = DEFAULT_HOST
    database_url: str = DEFAULT_DATABASE_URL
    create_directories: bool = False  # a SQLite outbox's missing directories: error or create
    flush: str = "background"
    rate_limit: RateLimit = AUTO  # built from "auto", an int or 0/None by RateLimit.parse
    workers: int = 8
    durability: str = "full"
    auto_migrate: bool = True
    interval: float = 1.0
    batch_size: int = 100
    connect_timeout: float = 3.05
    read_timeout: float = 10.0
    lease_seconds: float | None = None
    max_age: float = 30 * DAY
    retention: float = 7 * DAY
    dead_retention: float = 30 * DAY
    max_backoff: float = 300.0
    final_flush_timeout: float = 5.0
    allow_insecure: bool = False
    redact_after_delivery: bool = False

    def __post_init__(self) -> None:
        _check_choice("flush", self.flush, ("background", "off"))
        _check_choice("durability", self.durability, ("full", "normal"))
        object.__setattr__(self, "rate_limit", RateLimit.parse(self.rate_limit))
        # Type first: a "8" or 2.5 from a config file must fail here, not as a TypeError later.
        for name in ("workers", "batch_size"):
            _check_number(name, getattr(self, name), integer=True)
        for name in _SECONDS:
            _check_number(name, getattr(self, name))
        for name in ("workers", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in (
            "interval",
            "connect_timeout",
            "read_timeout",
            "max_age",
            "retention",
            "dead_retention",
            "max_backoff",
        ):
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.final_flush_timeout < 0:
            raise ConfigurationError("final_flush_timeout must be >= 0")
        if self.lease_seconds is not None and self.lease_seconds <= self.attempt_timeout:
            raise ConfigurationError(
                f"lease_seconds ({self.lease_seconds}) must outlive one HTTP attempt "
                f"(connect_timeout + read_timeout = {self.attempt_timeout})"
            )
        _check_host(self.host, self.allow_insecure)
        if self.token and not all("!" <= c <= "~" for c in self.token):
            # Never quoted: an error message ends up in logs.
            raise ConfigurationError(
                "token must be printable ASCII without spaces or line breaks: it travels "
                "in the Authorization header"
            )
        if self.flush == "background" and not self.token:
            raise ConfigurationError(
                "no token: pass token= or set CMS_BEARER_TOKEN, "
                "or use flush='off' in a process that only enqueues"
            )

    @property
    def attempt_timeout(self) -> float:
        """The longest one HTTP attempt can take."""
        return self.connect_timeout + self.read_timeout

    @property
    def lease_duration(self) -> float:
        """How long a leased row stays ours: one attempt plus a generous margin."""
        if self.lease_seconds is not None:
            return self.lease_seconds
        return 2 * self.attempt_timeout + 15.0


_SECONDS = (
    "interval", "connect_timeout", "read_timeout", "lease_seconds", "max_age", "retention",
    "dead_retention", "max_backoff", "final_flush_timeout",
)  # fmt: skip


_OPTIONAL = ("lease_seconds",)  # None means "the default lease"


def _check_number(name: str, value: object, *, integer: bool = False) -> None:
    if value is None and name in _OPTIONAL:
        return
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        wanted = "an integer" if integer else "a number"
        raise ConfigurationError(f"{name} must be {wanted}, got {value!r}")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigurationError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_host(host: str, allow_insecure: bool) -> None:
    if not isinstance(host, str):
        raise ConfigurationError(f"host must be an http(s) URL, got {host!r}")
    try:
        parts = urlsplit(host)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise ConfigurationError(f"host must be an http(s) URL, got {host!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"host must be an http(s) URL, got {host!r}")
    if parts.scheme == "http" and not allow_insecure and not _is_loopback(parts.hostname):
        raise ConfigurationError(
            f"refusing plain http:// to non-loopback host {parts.hostname!r}: "
            "the bearer token would travel in clear text: use https:// (the command line "
            "sends plain http:// only to a loopback host; CMSClient takes allow_insecure=True)"
        )


def _is_loopback(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def resolve(environ: Mapping[str, str] | None = None, **explicit: Any) -> Settings:
    """Build ``Settings`` from explicit values (None means unset), then the environment.

    ``rate_limit`` arrives as a ``RateLimit``: the public ``None`` (no pacing) is turned
    into one by the caller, so None here always means unset.

    :raises ConfigurationError: for a setting that cannot work.
    """
    env = os.environ if environ is None else environ
    values = {key: value for key, value in explicit.items() if value is not None}
    fallbacks = {
        "token": "CMS_BEARER_TOKEN",
        "host": "CMS_HOST",
        "database_url": "CMS_OUTBOX_URL",
    }
    for key, variable in fallbacks.items():
        if key not in values and env.get(variable):
            values[key] = env[variable]
    return Settings(**values)


def dashboard_password(environ: Mapping[str, str] | None = None) -> str | None:
    """The dashboard's own password, from ``CMS_OUTBOX_UI_PASSWORD`` (never a flag).

    :raises ConfigurationError: it is the CMS bearer token, which must never double as one.
    """
    env = os.environ if environ is None else environ
    password = env.get("CMS_OUTBOX_UI_PASSWORD") or None
    if password is not None and password == env.get("CMS_BEARER_TOKEN"):
        raise ConfigurationError(
            "CMS_OUTBOX_UI_PASSWORD must not be the CMS bearer token: give the dashboard "
            "a password of its own"
        )
    return password
