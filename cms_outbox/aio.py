"""The asyncio face of ``CMSClient``: ``await client.atrack_lead(...)`` and friends.

Each call is the blocking call itself, run in a worker thread (``asyncio.to_thread``):
the same validation, the same durable write before it returns, the same result, while
the event loop stays free during the fsync and any wait for a database lock. A thread
rather than an async driver keeps one code path for every backend, and one transaction
rule: the event is committed when the awaited call returns.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Coroutine
from typing import Any, Callable, TypeVar

from typing_extensions import ParamSpec

__all__ = ["in_thread"]

P = ParamSpec("P")
T = TypeVar("T")


def in_thread(method: Callable[P, T]) -> Callable[P, Coroutine[Any, Any, T]]:
    """An ``async`` twin of ``method`` that runs it in the loop's default executor."""

    @functools.wraps(method)
    async def awaitable(*args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.to_thread(method, *args, **kwargs)

    awaitable.__doc__ = (
        f"``await``-able ``{method.__name__}``: runs it in a worker thread, so the event "
        f"loop never blocks; same arguments, result and errors.\n\n{method.__doc__ or ''}"
    )
    return awaitable
