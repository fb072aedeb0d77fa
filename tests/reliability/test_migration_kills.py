"""First deploys: several processes migrating one database at once, and kills mid-migration.

On every backend. MySQL/MariaDB commits each DDL statement by itself, so a migration
there is not one transaction: a kill leaves the steps before it done and the version
table unstamped, and the next start must finish the work rather than fail on
``1050 Table ... already exists`` or ``1091 Can't DROP INDEX``.
"""

from __future__ import annotations

import functools
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, event, inspect, text

from cms_outbox import CMSClient, migrate, schema
from tests.conftest import drop_outbox_tables

from .conftest import Processes, child_env, wait_for

WRITES = ("CREATE", "DROP", "ALTER", "INSERT", "UPDATE", "DELETE")

# Kills itself (SIGKILL, nothing cleaned up) just before its ``kill_at``-th write.
KILLED_MIGRATION = textwrap.dedent(
    """
    import os, signal, sys
    from sqlalchemy import create_engine, event
    from cms_outbox import migrate

    url, kill_at = sys.argv[1], int(sys.argv[2])
    engine = create_engine(url)
    writes = 0

    @event.listens_for(engine, "before_cursor_execute")
    def count(conn, cursor, statement, parameters, context, executemany):
        global writes
        if statement.lstrip().upper().startswith({writes!r}):
            writes += 1
            if writes == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    migrate.upgrade(engine)
    print("migrated", writes)
    """
).format(writes=WRITES)

ENQUEUE_ONE = textwrap.dedent(
    """
    import sys
    from cms_outbox import CMSClient
    with CMSClient(database_url=sys.argv[1], flush="off") as client:
        print(client.track_lead("signup", sys.argv[2], click_id="c").event_id)
    """
)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    created = create_engine(database_url)
    yield created
    created.dispose()


def started_or_ended(process: subprocess.Popen[bytes], output: Path) -> bool:
    return process.poll() is not None or "delivering from" in output.read_text()


def assert_at_head(engine: Engine) -> None:
    assert migrate.current_revision(engine) == migrate.head_revision()
    with engine.connect() as conn:
        ours = set(schema.metadata.tables)
        context = MigrationContext.configure(
            conn,
            opts={
                "version_table": migrate.VERSION_TABLE,
                "include_name": lambda name, kind, parent: kind != "table" or name in ours,
            },
        )
        assert compare_metadata(context, schema.metadata) == []
        assert conn.execute(text("SELECT count(*) FROM cms_outbox_control")).scalar_one() == 1


def count_writes(engine: Engine) -> int:
    """How many writing statements a first migration of this backend runs."""
    writes = 0

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        nonlocal writes
        writes += statement.lstrip().upper().startswith(WRITES)

    event.listen(engine, "before_cursor_execute", count)
    try:
        migrate.upgrade(engine)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return writes


def test_a_kill_before_any_statement_of_the_first_migration_is_finished_by_the_next_start(
    engine: Engine, database_url: str
) -> None:
    total = count_writes(engine)
    assert total >= 8  # tables, indexes, the control row and the version stamp
    for kill_at in range(1, total + 1):
        drop_outbox_tables(database_url)
        killed = subprocess.run(
            [sys.executable, "-c", KILLED_MIGRATION, database_url, str(kill_at)],
            capture_output=True, text=True, env=child_env(), timeout=120,
        )  # fmt: skip
        assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stdout, killed.stderr)
        with CMSClient(database_url=database_url, flush="off") as client:  # the next start
            assert client.track_lead("signup", "after-kill", click_id="c").success
        assert_at_head(engine)


def test_a_kill_while_upgrading_from_an_earlier_revision_is_finished_by_the_next_start(
    engine: Engine, database_url: str
) -> None:
    for start in ("0001", "0002"):
        drop_outbox_tables(database_url)
        migrate.upgrade(engine, start)
        before = migrate.current_revision(engine)
        for kill_at in (1, 2, 3):
            subprocess.run(
                [sys.executable, "-c", KILLED_MIGRATION, database_url, str(kill_at)],
                capture_output=True, env=child_env(), timeout=120,
            )  # fmt: skip
        assert migrate.current_revision(engine) in (before, migrate.head_revision())
        migrate.upgrade(engine)
        assert_at_head(engine)
        assert "uq_cms_outbox_events_invoice_id" in {
            index["name"] for index in inspect(engine).get_indexes("cms_outbox_events")
        }


def test_four_processes_creating_the_schema_at_once_all_succeed(
    database_url: str, engine: Engine, processes: Processes
) -> None:
    for round_ in range(5):
        drop_outbox_tables(database_url)
        started = [
            processes.spawn([sys.executable, "-c", ENQUEUE_ONE, database_url, f"w{n}"],
                            f"writer-{round_}-{n}")
            for n in range(4)
        ]  # fmt: skip
        for process, output in started:
            assert process.wait(timeout=120) == 0, output.read_text()
            assert "Error" not in output.read_text()
        assert_at_head(engine)
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT count(*) FROM cms_outbox_events")).scalar_one()
        assert stored == 4


def test_two_daemons_started_50_ms_apart_on_a_new_database_both_run(
    database_url: str, engine: Engine, processes: Processes, workdir: Path
) -> None:
    for round_ in range(4):
        drop_outbox_tables(database_url)
        daemons = []
        for n in range(2):
            argv = [sys.executable, "-m", "cms_outbox", "run", "--database-url", database_url,
                    "--host", "http://127.0.0.1:9", "--interval", "0.2"]  # fmt: skip
            daemons.append(processes.spawn(argv, f"daemon-{round_}-{n}"))
            time.sleep(0.05)
        for process, output in daemons:
            wait_for(functools.partial(started_or_ended, process, output), 120, "a daemon start")
            assert process.poll() is None, output.read_text()
        for process, output in daemons:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0, output.read_text()
            assert "Traceback" not in output.read_text()
        assert_at_head(engine)
