"""Shared fixtures: a real SQLite file, PostgreSQL when configured, the sandbox on loopback."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import pytest
from sqlalchemy import create_engine, text

from cms_outbox import CMSClient
from cms_outbox.sandbox import Sandbox

TOKEN = "test-token-0123456789"
POSTGRES_URL = os.environ.get("CMS_OUTBOX_TEST_POSTGRES_URL")


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """The library reads these; a developer's shell must not leak into tests."""
    for name in ("CMS_BEARER_TOKEN", "CMS_HOST", "CMS_OUTBOX_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path / 'outbox.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    if not POSTGRES_URL:
        pytest.skip("CMS_OUTBOX_TEST_POSTGRES_URL is not set")
    engine = create_engine(POSTGRES_URL)
    with engine.begin() as conn:
        for table in (
            "cms_outbox_attempts",
            "cms_outbox_events",
            "cms_outbox_control",
            "cms_outbox_alembic_version",
        ):
            conn.execute(text(f"DROP TABLE IF EXISTS {table} CASCADE"))
    engine.dispose()
    yield POSTGRES_URL


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """The same test against every backend: a SQLite file, and PostgreSQL when configured."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(token=TOKEN) as server:
        yield server


@pytest.fixture
def make_client(sqlite_url: str) -> Iterator[Callable[..., CMSClient]]:
    """Build clients (default: the SQLite file, no background flusher); all closed afterwards."""
    clients: list[CMSClient] = []

    def make(**options: Any) -> CMSClient:
        options.setdefault("database_url", sqlite_url)
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


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, step: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes (no fixed sleeps in tests)."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True


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
