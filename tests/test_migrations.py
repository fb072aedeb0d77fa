"""Alembic migrations: the outbox tables get to head, keep their rows, and live beside an app.

The schema changes only through the revisions in ``migrations/``; these tests check
that they build what ``cms_outbox.schema`` describes, under their own version table,
and that they ship inside the wheel.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, event, inspect, text

from cms_outbox import CMSClient, SchemaError, database, migrate, schema

REPO = Path(__file__).resolve().parent.parent
OUTBOX_TABLES = {
    "cms_outbox_events",
    "cms_outbox_attempts",
    "cms_outbox_control",
    "cms_outbox_flushers",
}
VERSION_TABLE = "cms_outbox_alembic_version"
DEPENDENCIES = ("sqlalchemy", "urllib3", "certifi", "apscheduler", "alembic")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A plain engine on an empty database, as an application would create it."""
    engine = create_engine(database_url)
    with engine.begin() as conn:  # PostgreSQL is shared between tests: start clean
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    yield engine
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    engine.dispose()


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def stored_version(engine: Engine, table: str = VERSION_TABLE) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text(f"SELECT version_num FROM {table}")).scalars())


def test_empty_database_migrates_to_head(engine: Engine) -> None:
    migrate.upgrade(engine)
    assert tables(engine) == OUTBOX_TABLES | {VERSION_TABLE}
    assert stored_version(engine) == [migrate.head_revision()]
    assert migrate.current_revision(engine) == migrate.head_revision()
    inspector = inspect(engine)
    indexes = {ix["name"] for table in OUTBOX_TABLES for ix in inspector.get_indexes(table)}
    assert {"ix_cms_outbox_events_state_id", "ix_cms_outbox_events_customer_state_id",
            "ix_cms_outbox_attempts_event_seq"} <= indexes  # fmt: skip
    uniques = {uq["name"] for uq in inspector.get_unique_constraints("cms_outbox_events")}
    if engine.dialect.name == "mysql":  # reports every unique index as a constraint too
        uniques -= {"uq_cms_outbox_events_invoice_id"}
    assert uniques == {"uq_cms_outbox_events_event_id"}
    [invoice_index] = [
        ix for ix in inspector.get_indexes("cms_outbox_events")
        if ix["name"] == "uq_cms_outbox_events_invoice_id"
    ]  # fmt: skip
    assert invoice_index["unique"] and invoice_index["column_names"] == ["invoice_id"]
    assert all(name.startswith(("ix_cms_outbox_", "uq_cms_outbox_")) for name in indexes if name)


def test_client_migrates_on_construction(sqlite_url: str) -> None:
    CMSClient(database_url=sqlite_url, flush="off").close()
    engine = create_engine(sqlite_url)
    try:
        assert tables(engine) == OUTBOX_TABLES | {VERSION_TABLE}
        assert stored_version(engine) == [migrate.head_revision()]
    finally:
        engine.dispose()


@pytest.mark.parametrize("start", ["0001", "0002"])
def test_upgrade_from_an_earlier_revision_keeps_rows_and_sale_dedupe(
    engine: Engine, database_url: str, start: str
) -> None:
    migrate.upgrade(engine, start)
    assert migrate.current_revision(engine) == start
    assert ("cms_outbox_control" in tables(engine)) is (start != "0001")
    rows: list[dict[str, Any]] = [
        {"event_id": "e-1", "kind": "lead", "customer_external_id": "user_1", "invoice_id": None,
         "payload": '{"eventName":"signup","customerExternalId":"user_1"}'},
        {"event_id": "e-2", "kind": "sale", "customer_external_id": "user_1",
         "invoice_id": "inv-1", "payload": '{"eventName":"buy","customerExternalId":"user_1",'
         '"invoiceId":"inv-1","amount":100,"currency":"USD"}'},
    ]  # fmt: skip
    with engine.begin() as conn:  # written by the earlier revision's schema
        for row in rows:
            values = {**row, "state": "pending", "attempts": 0, "next_attempt_at": 1.0,
                      "created_at": 1.0}  # fmt: skip
            conn.execute(
                text(
                    f"INSERT INTO cms_outbox_events ({', '.join(values)}) "
                    f"VALUES ({', '.join(':' + column for column in values)})"
                ),
                values,
            )
    with CMSClient(database_url=database_url, flush="off") as client:  # auto_migrate
        assert client.result("e-1").state.value == "pending"
        assert client.store.control_row()["name"] == "default"  # 0002's row is there
        again = client.track_sale("buy", "user_1", "inv-1", 100, "USD")
        assert again.event_id == "e-2"  # the invoice is still the sale's natural key
        later = client.track_lead("signup", "user_2")
        later_row, earlier_row = client.store.get(later.event_id), client.store.get("e-2")
        assert later_row is not None and earlier_row is not None
        assert later_row["id"] > earlier_row["id"]
    assert migrate.current_revision(engine) == migrate.head_revision()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM cms_outbox_events")).scalar_one() == 3


def test_migrated_schema_matches_the_metadata(engine: Engine) -> None:
    """schema.py is what the store queries against: the revisions must build exactly that."""
    migrate.upgrade(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, schema.metadata) == []


def test_application_alembic_history_is_untouched(engine: Engine, database_url: str) -> None:
    """The app's own alembic_version keeps its row; ours lives in cms_outbox_alembic_version."""
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        conn.execute(text("INSERT INTO alembic_version (version_num) VALUES ('app_rev_42')"))
    CMSClient(database_url=database_url, flush="off").close()
    assert stored_version(engine, "alembic_version") == ["app_rev_42"]
    assert stored_version(engine) == [migrate.head_revision()]
    CMSClient(database_url=database_url, flush="off", auto_migrate=False).close()


def test_a_version_table_created_while_it_is_read_is_read_again(
    engine: Engine, database_url: str
) -> None:
    """Another process migrating creates the version table between the read that failed
    and the look for the table (on MySQL each DDL statement commits at once): its
    version is read, not reported as a storage failure."""
    other = create_engine(database_url)  # the other process's connection
    created: list[bool] = []

    @event.listens_for(engine, "handle_error")
    def migrate_meanwhile(context: Any) -> None:
        if VERSION_TABLE in str(context.statement) and not created:
            created.append(True)
            with other.begin() as conn:
                conn.execute(text(f"CREATE TABLE {VERSION_TABLE} (version_num VARCHAR(32))"))
                conn.execute(text(f"INSERT INTO {VERSION_TABLE} VALUES ('0001')"))

    try:
        assert migrate.current_revision(engine) == "0001"
        assert created  # the first read did fail
    finally:
        with other.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {VERSION_TABLE}"))
        other.dispose()


def test_no_auto_migrate_on_empty_database_raises(engine: Engine, database_url: str) -> None:
    with pytest.raises(SchemaError, match="cms-outbox migrate"):
        CMSClient(database_url=database_url, flush="off", auto_migrate=False)
    assert not tables(engine) & OUTBOX_TABLES  # only checked, nothing created


def test_no_auto_migrate_behind_head_raises(engine: Engine, database_url: str) -> None:
    migrate.upgrade(engine, "0001")
    with pytest.raises(SchemaError, match="cms-outbox migrate"):
        CMSClient(database_url=database_url, flush="off", auto_migrate=False)
    assert migrate.current_revision(engine) == "0001"


def test_no_auto_migrate_at_head_works(engine: Engine, database_url: str) -> None:
    migrate.upgrade(engine)
    with CMSClient(database_url=database_url, flush="off", auto_migrate=False) as client:
        assert client.track_lead("signup", "user_1").success


def test_schema_check_does_not_wait_behind_a_writer(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client starting while the application holds a write transaction must not block."""
    CMSClient(database_url=sqlite_url, flush="off").close()
    monkeypatch.setattr(database, "BUSY_TIMEOUT", 0.5)  # waiting fails fast, not in 30 s
    app = create_engine(sqlite_url)
    try:
        with app.connect() as conn:
            conn.execute(text("UPDATE cms_outbox_control SET tokens = 1"))  # holds the write lock
            # A check that waited for the writer would raise: the busy timeout ran out.
            CMSClient(database_url=sqlite_url, flush="off", auto_migrate=False).close()
            CMSClient(database_url=sqlite_url, flush="off").close()
            conn.rollback()
    finally:
        app.dispose()


@pytest.mark.parametrize("auto_migrate", [True, False])
def test_database_from_a_newer_version_raises(
    engine: Engine, database_url: str, auto_migrate: bool
) -> None:
    """Never run, let alone downgrade, against a schema we do not know."""
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999_from_the_future'"))
    with pytest.raises(SchemaError, match="9999_from_the_future"):
        CMSClient(database_url=database_url, flush="off", auto_migrate=auto_migrate)
    assert stored_version(engine) == ["9999_from_the_future"]


def test_the_head_read_from_the_revision_files_is_alembics() -> None:
    """A start finds the head without importing Alembic; it must be the head Alembic sees."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(REPO / "migrations"))
    scripts = ScriptDirectory.from_config(config)
    assert migrate.head_revision() == scripts.get_current_head()
    assert migrate.known_revisions() == {script.revision for script in scripts.walk_revisions()}


# -- the wheel ----------------------------------------------------------------------------

USE_INSTALLED = """
import sys
import cms_outbox
from cms_outbox import CMSClient, migrate

url, venv = sys.argv[1:3]
assert cms_outbox.__file__.startswith(venv), cms_outbox.__file__  # not the editable checkout
with CMSClient(database_url=url, flush="off") as client:
    print(migrate.current_revision(client.engine))
"""


@pytest.mark.slow
def test_wheel_ships_the_migrations_inside_the_package(tmp_path: Path) -> None:
    """Built and installed like a user would, away from the repository's migrations/."""
    source = tmp_path / "source"  # a copy, so the build never writes into the working tree
    for name in ("pyproject.toml", "README.md", "cms_outbox", "migrations"):
        if (REPO / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(REPO / name, source / name, ignore=ignore)
        elif (REPO / name).exists():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((REPO / name).read_bytes())
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-w", str(dist))
    (wheel,) = dist.glob("cms_outbox-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(
        n.startswith("cms_outbox/migrations/versions/0001_") and n.endswith(".py") for n in names
    )
    assert "cms_outbox/migrations/env.py" in names
    assert not any(n.startswith("migrations/") for n in names)

    # A venv of its own, as a user makes one: it sees neither this environment's packages
    # nor the editable checkout. The wheel's dependencies come from the package index (or
    # pip's cache), pinned to the versions under test here so the result does not drift.
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", str(venv))
    python = venv / "bin" / "python"
    pins = [f"{name}=={metadata.version(name)}" for name in DEPENDENCIES]
    run(str(python), "-m", "pip", "install", "-q", str(wheel), *pins)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    url = f"sqlite:///{elsewhere / 'fresh.db'}"
    printed = run(str(python), "-c", USE_INSTALLED, url, str(venv), cwd=elsewhere)
    assert printed.strip() == migrate.head_revision()


def run(*command: str, cwd: Path | None = None) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_pacing_revisions_resume_after_a_kill_and_keep_the_control_row(engine: Engine) -> None:
    """0005/0007 as a killed run on MySQL would leave them: some columns added, no version."""
    migrate.upgrade(engine, "0004")
    with engine.begin() as conn:  # the first statements of 0005 ran, then the process died
        conn.execute(text("ALTER TABLE cms_outbox_control ADD COLUMN quota_requests "
                          "DOUBLE PRECISION DEFAULT 60 NOT NULL"))  # fmt: skip
        conn.execute(text("UPDATE cms_outbox_control SET tokens = 2.5"))
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    columns = {c["name"] for c in inspect(engine).get_columns("cms_outbox_control")}
    assert {"quota_requests", "limit_source", "paused_until", "ceiling"} <= columns
    assert "rate_factor" not in columns
    with engine.connect() as conn:
        row = conn.execute(text("SELECT tokens, quota_requests, quota_window, limit_source "
                                "FROM cms_outbox_control")).one()  # fmt: skip
    assert tuple(row) == (2.5, 60.0, 60.0, "assumed")
