"""Reads never wait for writers: every read-only path answers while the application holds
a write transaction open on the outbox (the transactional outbox's ordinary day).

The writer is real: the application's own engine, inside an open transaction that stored
an event with ``connection=`` and touched every stored row. On SQLite it holds the write
lock (checked); on PostgreSQL it holds row locks on every event and the control row. The
readers get a short busy timeout (SQLite) or lock timeout (PostgreSQL), so a read that
waited for the writer would fail in a second instead of hanging for 30.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, update
from sqlalchemy.engine import make_url

from cms_outbox import CMSClient, database
from cms_outbox.cli import main
from cms_outbox.schema import control, events
from cms_outbox.status import ActivityTracker

COMMITTED = 3
DRIVER_WORDS = ("sqlite3.", "sqlalchemy", "psycopg.", "OperationalError", "[SQL", "Traceback")


@pytest.fixture
def reader_url(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The outbox URL for readers: waiting for any lock fails fast instead of hanging."""
    monkeypatch.setattr(database, "BUSY_TIMEOUT", 0.5)
    return _fail_fast_on_locks(database_url)


def _fail_fast_on_locks(url: str) -> str:
    if not url.startswith("postgresql"):
        return url
    with_timeout = make_url(url).update_query_dict({"options": "-c lock_timeout=500"})
    return with_timeout.render_as_string(hide_password=False)


@pytest.fixture
def seeded(database_url: str) -> list[str]:
    with CMSClient(database_url=database_url, flush="off") as client:
        return [
            client.track_lead("signup", f"user_{i}", click_id=f"clk_{i}").event_id
            for i in range(COMMITTED)
        ]


@pytest.fixture
def open_write_transaction(database_url: str, seeded: list[str]) -> Iterator[Connection]:
    """The application's transaction: an event stored with ``connection=``, every row
    touched, the control row too; left open for the whole test, then rolled back."""
    app = create_engine(database_url)
    with CMSClient(database_url=database_url, flush="off") as writer, app.connect() as conn:
        conn.begin()
        writer.track_lead("signup", "uncommitted", click_id="clk_x", connection=conn)
        conn.execute(update(events).values(attempts=events.c.attempts))
        conn.execute(update(control).values(name=control.c.name))
        if app.dialect.name == "sqlite":
            _assert_write_lock_is_held(str(app.url.database))
        yield conn
        conn.rollback()
    app.dispose()


def _assert_write_lock_is_held(path: str) -> None:
    probe = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            probe.execute("BEGIN IMMEDIATE")
    finally:
        probe.close()


def read(call: Any, *args: Any) -> Any:
    """``call(*args)`` behind the writer: with the readers' short lock timeouts, a read
    that waited for it raises instead of answering, whatever the machine's speed."""
    return call(*args)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = read(main, list(args))
    captured = capsys.readouterr()
    output = captured.out + captured.err
    for word in DRIVER_WORDS:
        assert word not in output, output
    return code, captured.out


@pytest.mark.usefixtures("open_write_transaction")
def test_cli_reads_answer_behind_an_open_write_transaction(
    reader_url: str, seeded: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run_cli(capsys, "status", "--json", "--database-url", reader_url)
    assert code == 0, out
    status = json.loads(out)
    assert status["counts"]["pending"] == COMMITTED  # the committed counts, not the open ones
    assert status["pending_due"] == COMMITTED
    assert status["pause"] is None

    code, out = run_cli(capsys, "health", "--database-url", reader_url)
    assert (code, out.split(":")[0]) == (0, "ok")

    code, out = run_cli(capsys, "events", "--json", "--database-url", reader_url)
    assert code == 0
    assert sorted(event["event_id"] for event in json.loads(out)) == sorted(seeded)

    code, out = run_cli(capsys, "show", seeded[0], "--json", "--database-url", reader_url)
    assert code == 0
    assert json.loads(out)["event_id"] == seeded[0]


@pytest.mark.usefixtures("open_write_transaction")
def test_library_reads_answer_behind_an_open_write_transaction(
    reader_url: str, seeded: list[str]
) -> None:
    # A client started while the transaction is open: construction reads the schema version.
    client = read(lambda: CMSClient(database_url=reader_url, flush="off"))
    try:
        result = read(client.result, seeded[0])
        assert result.state.value == "pending"
        stats = read(client.stats)
        assert stats.pending == COMMITTED
    finally:
        client.close()


@pytest.mark.usefixtures("open_write_transaction")
def test_metrics_answer_behind_an_open_write_transaction(reader_url: str) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest

    from cms_outbox.metrics import OutboxCollector

    engine = database.create(reader_url)
    try:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(OutboxCollector(ActivityTracker(engine)))
        text = read(generate_latest, registry).decode()
    finally:
        engine.dispose()
    assert f"cms_outbox_pending {float(COMMITTED)}" in text


@pytest.mark.usefixtures("open_write_transaction")
def test_health_probe_process_answers_behind_an_open_write_transaction(database_url: str) -> None:
    """What a liveness probe runs, as its own process, with the default busy timeout."""
    url = _fail_fast_on_locks(database_url)
    probe = subprocess.run(
        [sys.executable, "-m", "cms_outbox", "health", "--database-url", url],
        capture_output=True,
        text=True,
        # A read that waited for the writer would fail at its busy or lock timeout (the
        # transaction stays open): the exit code tells. This bound only catches a hang.
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.startswith("ok: 3 to send")
    assert probe.stderr == ""


def test_reads_answer_while_another_connection_holds_begin_immediate(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(database, "BUSY_TIMEOUT", 0.5)
    client = CMSClient(database_url=sqlite_url, flush="off")
    seeded = [client.track_lead("signup", f"u{i}", click_id="c").event_id for i in range(3)]
    writer = sqlite3.connect(str(make_url(sqlite_url).database), isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("DELETE FROM cms_outbox_events")  # uncommitted: readers still see 3
        code, out = run_cli(capsys, "status", "--json", "--database-url", sqlite_url)
        assert code == 0 and json.loads(out)["counts"]["pending"] == COMMITTED
        assert read(client.stats).pending == COMMITTED
        assert read(client.result, seeded[-1]).state.value == "pending"
    finally:
        writer.rollback()
        writer.close()
        client.close()


def test_read_only_commands_open_a_reader_not_a_client(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No flusher wiring, no migration, no token, no enqueue connection: and no write."""
    with CMSClient(database_url=sqlite_url, flush="off") as client:
        event_id = client.track_lead("signup", "user_1", click_id="clk_1").event_id
    path = Path(str(make_url(sqlite_url).database))
    before = {p.name: p.read_bytes() for p in path.parent.iterdir() if not p.name.endswith("-shm")}

    def no_client(*args: object, **kwargs: object) -> None:
        raise AssertionError("a read-only command built a CMSClient")

    monkeypatch.setattr(CMSClient, "__init__", no_client)
    for command in (["status"], ["health"], ["events"], ["show", event_id]):
        code, out = run_cli(capsys, *command, "--database-url", sqlite_url)
        assert code == 0, out
    after = {p.name: p.read_bytes() for p in path.parent.iterdir() if not p.name.endswith("-shm")}
    assert after == before
