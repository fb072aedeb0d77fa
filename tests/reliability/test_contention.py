"""Contention: eight writer processes and delivering daemons on one SQLite file, and on
one PostgreSQL and one MySQL/MariaDB database.

WRITERS processes start at the same moment on a file that does not exist yet (so they
also race to create the schema) and each enqueues PER_WRITER leads and sales with the
default ``durability="full"``, while ``python -m cms_outbox run`` delivers. No error may
reach a caller: every writer exits 0 having stored all its events, and the sandbox
accepts each of the WRITERS * PER_WRITER events exactly once.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from cms_outbox.sandbox import Sandbox

from .conftest import Processes, integrity, states, wait_for_drain, wait_while_progressing

WRITERS = 8
PER_WRITER = 1_000
EVENTS = WRITERS * PER_WRITER


@pytest.mark.slow
def test_eight_writers_and_a_daemon_share_one_file_without_an_error_or_a_loss(
    processes: Processes, workdir: Path, make_sandbox: Callable[..., Sandbox]
) -> None:
    began = time.monotonic()
    sandbox = make_sandbox(latency=0.002)
    path = workdir / "outbox.db"
    url = f"sqlite:///{path}"
    writers = [
        processes.program(
            "contention_writer", f"writer-{n}", database_url=url, writer=n, events=PER_WRITER
        )
        for n in range(WRITERS)
    ]
    daemon, daemon_log = processes.spawn(
        [sys.executable, "-m", "cms_outbox", "run", "--database-url", url, "--host",
         sandbox.url, "--rate-limit", "0", "--workers", "8", "--interval", "0.2"],
        "daemon",
    )  # fmt: skip

    wait_while_progressing(
        lambda: all(process.poll() is not None for process, _ in writers),
        lambda: (len(sandbox.requests), touched(path), touched(path.with_name(path.name + "-wal"))),
        "the writers to finish",
    )  # each commit touches the file or its WAL, which are not opened here: still being created
    ids: list[str] = []
    for process, output in writers:
        assert process.wait() == 0, output.read_text()
        lines = output.read_text().splitlines()
        assert lines[-1] == f"stored {PER_WRITER}", lines[-5:]
        assert lines[-2].startswith("ids ")
        ids += json.loads(lines[-2][4:])
    enqueued_in = time.monotonic() - began
    assert len(set(ids)) == EVENTS

    wait_for_drain(lambda: states(path), EVENTS, f"{EVENTS} events delivered")
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=60) == 0, daemon_log.read_text()[-2000:]
    log = daemon_log.read_text()
    assert "Traceback" not in log and "database is locked" not in log, log[-2000:]

    assert len(sandbox.accepted) == EVENTS
    assert {event.idempotency_key for event in sandbox.accepted} == set(ids)
    assert [key for key in ids if sandbox.accepted_count(key) != 1] == []
    assert integrity(path) == "ok"
    print(
        f"\ncontention: {WRITERS} writers x {PER_WRITER} events enqueued in {enqueued_in:.0f}s "
        f"(all exited 0), {len(sandbox.requests)} requests, {EVENTS} accepted once each, "
        f"lost 0, doubled 0; {time.monotonic() - began:.0f}s"
    )


SERVER_PER_WRITER = 250  # a server commit is a network round trip and an fsync


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend",
    [pytest.param("postgres", marks=pytest.mark.postgres),
     pytest.param("mysql", marks=pytest.mark.mysql)],
)  # fmt: skip
def test_eight_writers_and_two_daemons_share_one_server_database_without_an_error_or_a_loss(
    processes: Processes, make_sandbox: Callable[..., Sandbox], request: pytest.FixtureRequest,
    backend: str,
) -> None:  # fmt: skip
    """The same storm on PostgreSQL and MySQL/MariaDB: the writers race to create the schema
    of an empty database, two daemons share the delivery."""
    url = str(request.getfixturevalue(f"{backend}_url"))  # its outbox tables dropped
    sandbox = make_sandbox(latency=0.002)
    total = WRITERS * SERVER_PER_WRITER
    writers = [
        processes.program(
            "contention_writer", f"writer-{n}", database_url=url, writer=n,
            events=SERVER_PER_WRITER,
        )
        for n in range(WRITERS)
    ]  # fmt: skip
    daemons = [
        processes.spawn(
            [
                sys.executable,
                "-m",
                "cms_outbox",
                "run",
                "--database-url",
                url,
                "--host",
                sandbox.url,
                "--rate-limit",
                "0",
                "--workers",
                "8",
                "--interval",
                "0.2",
            ],
            f"daemon-{n}",
        )  # fmt: skip
        for n in range(2)
    ]
    engine = create_engine(url, poolclass=NullPool)
    try:
        wait_while_progressing(
            lambda: all(process.poll() is not None for process, _ in writers),
            lambda: (len(sandbox.requests), stored(engine)),
            "the writers to finish",
        )
        ids: list[str] = []
        for process, output in writers:
            assert process.wait() == 0, output.read_text()
            lines = output.read_text().splitlines()
            assert lines[-1] == f"stored {SERVER_PER_WRITER}", lines[-5:]
            ids += json.loads(lines[-2][4:])
        assert len(set(ids)) == total
        wait_for_drain(lambda: server_states(engine), total, "all delivered")
    finally:
        engine.dispose()
    for daemon, log in daemons:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0, log.read_text()[-2000:]
        text_ = log.read_text()
        assert "Traceback" not in text_ and "Deadlock" not in text_, text_[-2000:]
        assert "pass failed" not in text_, text_[-2000:]
    assert {event.idempotency_key for event in sandbox.accepted} == set(ids)
    assert [key for key in ids if sandbox.accepted_count(key) != 1] == []


def touched(path: Path) -> int | None:
    """When ``path`` was last written (ns), None while it does not exist."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def stored(engine: Engine) -> int | None:
    """How many events are stored; None before the writers have created the table."""
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM cms_outbox_events")).scalar_one())
    except DBAPIError:
        return None


def server_states(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT state, count(*) FROM cms_outbox_events GROUP BY state"))
        return {str(state): int(count) for state, count in rows}
