"""The asyncio calls (``atrack_lead``, ``atrack_sale``, ``aflush``, ``aclose``) under a
real event loop: the loop keeps running while a call waits for the database, and the
results, errors and durability are those of the blocking calls."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any, Callable

import pytest

from cms_outbox import CMSClient, EventState, ValidationError
from cms_outbox.sandbox import Sandbox
from tests.conftest import TOKEN

MakeClient = Callable[..., CMSClient]


def test_the_loop_runs_on_while_a_call_waits_for_the_write_lock(
    make_client: MakeClient, sqlite_url: str
) -> None:
    client = make_client()
    blocker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the file's write lock

    async def scenario() -> tuple[int, bool, Any]:
        ticks = 0
        call = asyncio.create_task(client.atrack_lead("signup", "user-1", click_id="c"))
        while ticks < 50:  # 50 turns of the loop while the insert waits in its thread
            await asyncio.sleep(0.01)
            ticks += 1
        waiting = not call.done()
        blocker.rollback()
        return ticks, waiting, await call

    try:
        ticks, waiting, result = asyncio.run(scenario())
    finally:
        blocker.close()
    assert ticks == 50 and waiting  # the call could not finish, the loop went on
    assert result.success and result.state is EventState.PENDING
    assert client.result(result.event_id).state is EventState.PENDING  # stored, durable


def test_async_calls_validate_deduplicate_and_deliver_like_the_blocking_ones(
    make_client: MakeClient, sandbox: Sandbox
) -> None:
    client = make_client(token=TOKEN, host=sandbox.url, rate_limit=None)

    async def scenario() -> set[str]:
        with pytest.raises(ValidationError) as invalid:
            await client.atrack_sale("purchase", "user-1", "inv-1", 49.99, "USD")  # type: ignore[arg-type]
        assert invalid.value.field == "amount"
        assert client.store.count_by_state() == {}  # nothing written
        sale = await client.atrack_sale("purchase", "user-1", "inv-1", 4999, "USD", "c")
        again = await client.atrack_sale("purchase", "user-1", "inv-1", 4999, "USD", "c")
        assert again == sale
        lead = await client.atrack_lead("signup", "user-2", click_id="c")
        report = await client.aflush()
        assert report.delivered == 2
        assert client.result(lead.event_id).state is EventState.DELIVERED
        await client.aclose()
        return {sale.event_id, lead.event_id}

    stored = asyncio.run(scenario())
    assert sorted(item.idempotency_key or "" for item in sandbox.accepted) == sorted(stored)
