"""Shared fixtures: a real SQLite file, PostgreSQL and MySQL/MariaDB when configured, the
sandbox on loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, TypeVar

import pytest
from sqlalchemy import Engine, create_engine, text

from cms_outbox import CMSClient
from cms_outbox.sandbox import Sandbox

# The helper modules that several test files share assert too: pytest explains their failures.
pytest.register_assert_rewrite(
    "tests.cli_runs", "tests.dashboard_browser", "tests.example_servers", "tests.sandbox_requests"
)

TOKEN = "test-token-0123456789"
POSTGRES_URL = os.environ.get("CMS_OUTBOX_TEST_POSTGRES_URL")
MYSQL_URL = os.environ.get("CMS_OUTBOX_TEST_MYSQL_URL")
T = TypeVar("T")
OUTBOX_TABLES = (
    "cms_outbox_attempts",
    "cms_outbox_events",
    "cms_outbox_control",
    "cms_outbox_flushers",
    "cms_outbox_alembic_version",
)


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """The library reads these; a developer's shell must not leak into tests."""
    for name in ("CMS_BEARER_TOKEN", "CMS_HOST", "CMS_OUTBOX_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path / 'outbox.db'}"


def drop_outbox_tables(url: str) -> None:
    """Start from an empty outbox: the server's database is shared between tests."""
    engine = create_engine(url)
    cascade = " CASCADE" if engine.dialect.name == "postgresql" else ""
    with engine.begin() as conn:
        for table in OUTBOX_TABLES:
            conn.execute(text(f"DROP TABLE IF EXISTS {table}{cascade}"))
    engine.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    if not POSTGRES_URL:
        pytest.skip("CMS_OUTBOX_TEST_POSTGRES_URL is not set")
    drop_outbox_tables(POSTGRES_URL)
    yield POSTGRES_URL


@pytest.fixture
def mysql_url() -> Iterator[str]:
    if not MYSQL_URL:
        pytest.skip("CMS_OUTBOX_TEST_MYSQL_URL is not set")
    drop_outbox_tables(MYSQL_URL)
    yield MYSQL_URL


BACKENDS = {"sqlite": "sqlite_url", "postgres": "postgres_url", "mysql": "mysql_url"}


@pytest.fixture(
    params=[
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def server_url(request: pytest.FixtureRequest) -> str:
    """The same test against each database server: PostgreSQL and MySQL/MariaDB."""
    return str(request.getfixturevalue(BACKENDS[request.param]))


@pytest.fixture
def scratch_table() -> Iterator[Callable[[str, str], Engine]]:
    """An application's own table beside the outbox: ``scratch_table(url, "name (columns)")``
    creates it afresh and returns an engine on ``url``; the table is dropped afterwards."""
    made: list[tuple[Engine, str]] = []

    def make(url: str, definition: str) -> Engine:
        name = definition.split()[0]
        engine = create_engine(url)
        made.append((engine, name))
        with engine.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {name}"))
            conn.execute(text(f"CREATE TABLE {definition}"))
        return engine

    yield make
    for engine, name in made:
        with engine.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {name}"))
        engine.dispose()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def database_url(request: pytest.FixtureRequest) -> str:
    """The same test against every backend: a SQLite file, PostgreSQL and MySQL/MariaDB
    when configured."""
    return str(request.getfixturevalue(BACKENDS[request.param]))


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(token=TOKEN) as server:
        yield server


def client_factory(url: str) -> Iterator[Callable[..., CMSClient]]:
    """Build clients on ``url`` (no background flusher by default); all closed afterwards."""
    clients: list[CMSClient] = []

    def make(**options: Any) -> CMSClient:
        options.setdefault("database_url", url)
        options.setdefault("flush", "off")
        client = CMSClient(**options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
    for client in clients:
        pool = client.engine.pool
        checked_out = getattr(pool, "checkedout", lambda: 0)()
        assert checked_out == 0, f"{checked_out} pooled connections left checked out"


@pytest.fixture
def make_client(sqlite_url: str) -> Iterator[Callable[..., CMSClient]]:
    """Build clients on the SQLite file."""
    yield from client_factory(sqlite_url)


@pytest.fixture
def make_sqlite_client(sqlite_url: str) -> Iterator[Callable[..., CMSClient]]:
    """The SQLite file's clients, for a test that reaches into the file itself."""
    yield from client_factory(sqlite_url)


@pytest.fixture
def make_backend_client(database_url: str) -> Iterator[Callable[..., CMSClient]]:
    """Build clients on each backend in turn (``database_url``)."""
    yield from client_factory(database_url)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Mounts a tmpfs under ``tmp_path``: ``tmpfs("small", size="2m", mode="0700")``.

    Each is unmounted at teardown; the test is skipped where mounting is not permitted.
    """
    mounted: list[Path] = []

    def mount(name: str, *, size: str, mode: str | None = None) -> Path:
        if shutil.which("mount") is None:
            pytest.skip("no mount command: cannot build a file system of the test's own")
        mountpoint = tmp_path / name
        mountpoint.mkdir()
        options = f"size={size}" + (f",mode={mode}" if mode else "")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mountpoint)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
        mounted.append(mountpoint)
        return mountpoint

    yield mount
    for mountpoint in reversed(mounted):
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def wait_until(predicate: Callable[[], object], timeout: float = 60.0, step: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes (no fixed sleeps in tests).

    The default only runs out on a real hang: a loaded machine is slow, never that slow.
    """
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True


def returns(call: Callable[[], T], timeout: float = 60.0) -> T:
    """``call()``'s value; fails instead of hanging the run when it has not returned
    within ``timeout``, a bound that only a real hang reaches, never a slow machine."""
    import threading

    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(call())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="returns", daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout:g}s: a hang"
    if errors:
        raise errors[0]
    return results[0]


def accepted_in_order(sandbox: Sandbox) -> dict[str, list[str]]:
    """Each customer's accepted Idempotency-Keys (event ids), in the order accepted."""
    seen: dict[str, list[str]] = defaultdict(list)
    for accepted in sandbox.accepted:
        assert accepted.idempotency_key is not None
        seen[accepted.customer_external_id].append(accepted.idempotency_key)
    return seen


class FakeClock:
    """An injectable clock (``CMSClient(clock=...)``) that moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
