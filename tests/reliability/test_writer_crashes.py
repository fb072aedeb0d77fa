"""Writer crashes: a process SIGKILLed in the middle of ``track_lead`` loses no event whose
call returned, leaves no half-written row and no damaged file.

Each writer calls ``track_lead`` in a loop (``durability="full"``, the default) and prints
the event id once the call has returned; two writers share the file, so a kill also lands
while the other one waits for the write lock. The event being stored at the moment of the
kill may or may not be there (its call never returned), never anything else.
"""

from __future__ import annotations

import functools
import json
import random
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from cms_outbox import CMSClient, EventState, migrate
from cms_outbox.sandbox.protocol import validate

from .conftest import Child, Launcher, integrity, query, wait_for


def _returned(child: Child, count: int) -> bool:
    return len(child.lines()) >= count


SEED = 4242
ROUNDS = 8  # two writers per round, both killed: 16 SIGKILLs
SCHEMA_KILL_DELAYS = [n * 0.02 for n in range(12)]  # seconds after the fork
HEAD = migrate.head_revision()


def stored_ids(url: str, customer: str) -> list[str]:
    """The customer's stored event ids: plain ``sqlite3`` on the file, else SQLAlchemy."""
    sql = "SELECT event_id FROM cms_outbox_events WHERE customer_external_id = {} ORDER BY id"
    if url.startswith("sqlite:///"):
        rows = query(Path(url.removeprefix("sqlite:///")), sql.format("?"), customer)
        return [str(row[0]) for row in rows]
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            found = conn.execute(text(sql.format(":customer")), {"customer": customer})
            return [str(event_id) for event_id in found.scalars()]
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def writers_url(request: pytest.FixtureRequest, workdir: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{workdir / 'outbox.db'}"
    return str(request.getfixturevalue("mysql_url"))  # its outbox tables dropped


def test_writers_killed_mid_call_keep_every_returned_event(
    launcher: Launcher, writers_url: str
) -> None:
    rng = random.Random(SEED)
    url = writers_url
    path = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
    writers: dict[str, Child] = {}
    for round_ in range(ROUNDS):
        pair = [f"writer-{round_}-{side}" for side in "ab"]
        children = [
            launcher.start("lead_loop", customer, database_url=url, customer=customer)
            for customer in pair
        ]
        for customer, child in zip(pair, children):
            child.wait_for_line("ready")
            writers[customer] = child
        for child in rng.sample(children, 2):
            # Killed after a seeded number of returned calls (progress, not the clock), so
            # the kill always lands while the writer is busy in its next call.
            returned = len(child.lines()) + rng.randint(1, 12)
            wait_for(functools.partial(_returned, child, returned), 60, "returned calls")
            child.kill()

    if path is not None:
        assert integrity(path) == "ok"
    unprinted = 0  # writers whose last event was stored but its call never returned
    printed_ids: list[str] = []
    for customer, child in writers.items():
        printed = child.lines()[1:]  # after "ready": one event id per returned call
        stored = stored_ids(url, customer)
        # What was printed is stored, in order; at most the call cut short is there too.
        assert stored[: len(printed)] == printed, customer
        assert len(stored) - len(printed) in (0, 1), customer
        unprinted += len(stored) - len(printed)
        printed_ids += printed
    assert len(printed_ids) >= ROUNDS  # the writers did write between the kills

    with CMSClient(database_url=url, flush="off") as client:
        results = [client.result(event_id) for event_id in printed_ids]
    assert {(r.state, r.success) for r in results} == {(EventState.PENDING, True)}
    # No half-written row: every stored event is complete and valid on the wire (checked
    # by the sandbox's own, independent rules).
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT kind, payload FROM cms_outbox_events")).all()
    finally:
        engine.dispose()
    for kind, payload in rows:
        validate(kind, json.loads(payload))
    assert len(rows) == len(printed_ids) + unprinted
    if path is not None:
        assert integrity(path) == "ok"
    print(
        f"\nwriter crashes: {ROUNDS * 2} SIGKILLs mid-track_lead, {len(printed_ids)} returned "
        f"events all stored, {unprinted} stored but unreported (the call cut short), lost 0"
    )


def test_writers_killed_while_creating_the_schema_leave_usable_outboxes(
    launcher: Launcher, workdir: Path
) -> None:
    """A first start migrates the file; a kill at any moment of it leaves a usable outbox.

    One fresh file per kill, killed a little later each time, so that the ladder of kills
    covers creating the file, the Alembic transaction and the first ``track_lead``.
    """
    unmigrated = 0
    for kill, delay in enumerate(SCHEMA_KILL_DELAYS):
        path = workdir / f"outbox-{kill}.db"
        url = f"sqlite:///{path}"
        child = launcher.start("lead_loop", f"schema-{kill}", database_url=url, customer="x")
        time.sleep(delay)
        child.kill()
        if path.exists():
            assert integrity(path) == "ok"
            unmigrated += not query(path, "SELECT name FROM sqlite_master WHERE name = ?",
                                    "cms_outbox_events")  # fmt: skip
        with CMSClient(database_url=url, flush="off") as client:
            event_id = client.track_lead("signup", "after", click_id="c").event_id
            assert client.result(event_id).state is EventState.PENDING
        assert integrity(path) == "ok"
        assert query(path, "SELECT count(*) FROM cms_outbox_control") == [(1,)]
        assert query(path, "SELECT version_num FROM cms_outbox_alembic_version") == [(HEAD,)]
    print(f"\nschema kills: {len(SCHEMA_KILL_DELAYS)}, {unmigrated} left a file without tables")
