"""Argument types: each turns one flag's text into its value, or says in words why not.

argparse shows the message after the option's name, in the one-line usage error of
``Parser``: ``argument --limit: must be >= 1, got 0``.
"""

from __future__ import annotations

import argparse
import re

from ..pacing import AUTO, RateLimit
from ..status.health import ANY, NEW, Limit

__all__ = [
    "duration",
    "fixed_port",
    "health_limit",
    "non_negative_int",
    "optional_duration",
    "port",
    "positive_float",
    "positive_int",
    "rate_limit",
]

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(s|m|h|d|w)?")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def duration(text: str) -> float:
    """``30s``, ``10m``, ``2h``, ``7d``, ``1w`` or ``0``, as seconds.

    A number other than 0 needs its unit: ``purge --delivered-older-than 7`` meant seven
    seconds, and deleted every delivered event of the last week.
    """
    if text.strip().startswith("-"):
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: a duration cannot be negative"
        )
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use a number with s, m, h, d or w (e.g. 30s, 10m, 7d)"
        )
    number, unit = match.groups()
    if unit is None and float(number) != 0:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: give its unit, e.g. {number}s, {number}m, "
            f"{number}h or {number}d"
        )
    return float(number) * _UNITS[unit or "s"]


def optional_duration(text: str) -> float | None:
    """A ``duration``, or ``never`` for no limit."""
    return None if text.strip().lower() == "never" else duration(text)


def positive_int(text: str) -> int:
    return _int(text, minimum=1)


def rate_limit(text: str) -> RateLimit:
    if text.strip().lower() == "auto":
        return AUTO
    return RateLimit.parse(_int(text, minimum=0))


def non_negative_int(text: str) -> int:
    return _int(text, minimum=0)


def port(text: str) -> int:
    """A TCP port to listen on; 0 lets the system pick a free one."""
    return _port(text, minimum=0)


def fixed_port(text: str) -> int:
    """A TCP port a client is told in advance (a scraper's target), so not 0."""
    return _port(text, minimum=1)


def _port(text: str, *, minimum: int) -> int:
    # Out of range, waitress served on the port modulo 65536 and socketserver raised.
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}") from None
    if not minimum <= value <= 65535:
        raise argparse.ArgumentTypeError(
            f"must be a port number from {minimum} to 65535, got {value}"
        )
    return value


def health_limit(text: str) -> Limit:
    """``new``, ``any`` or a count >= 0."""
    word = text.strip().lower()
    if word in (NEW, ANY):
        return word
    try:
        return non_negative_int(word)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"invalid limit {text!r}: use a number, 'new' or 'any'"
        ) from None


def _int(text: str, *, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value
