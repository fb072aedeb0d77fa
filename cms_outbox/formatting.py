"""How reports render: ISO 8601 times, short ages, and dataclasses as JSON-ready dicts.

Times are epoch seconds in the values and ISO 8601 UTC strings (``...Z``) in their
``to_json()``. The JSON keys are a stable interface for scripts (``status --json``,
``events --json``, ``show --json``): keys are only ever added, never renamed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime, timezone
from typing import Any

__all__ = ["format_age", "isoformat", "json_fields"]


def isoformat(moment: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with milliseconds and a ``Z``; None stays None."""
    if moment is None:
        return None
    text = datetime.fromtimestamp(moment, timezone.utc).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def format_age(seconds: float) -> str:
    """A short human duration: ``45s``, ``3m12s``, ``2h05m``, ``4d03h``."""
    whole = int(seconds)
    if seconds < 10 and whole < 10:
        return f"{seconds:.1f}s"
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def json_fields(value: Any, *, times: Sequence[str]) -> dict[str, Any]:
    """A flat dataclass as a JSON-ready dict, with its ``times`` as ISO 8601 strings."""
    return {
        item.name: isoformat(getattr(value, item.name))
        if item.name in times
        else getattr(value, item.name)
        for item in fields(value)
    }
