"""The dashboard answers while an application holds the write lock; a database failure is a 503."""

from __future__ import annotations

import sqlite3
from typing import Any, Callable

import pytest
from sqlalchemy import create_engine

from cms_outbox import CMSClient, SchemaError, database
from cms_outbox.web import Dashboard
from tests.dashboard_browser import Browser, dashboards, text

__all__ = ["dashboards"]  # the fixtures: pytest finds them here


Factory = Callable[..., CMSClient]


def test_pages_answer_while_an_application_holds_the_write_lock(
    sqlite_url: str,
    make_client: Factory,
    dashboards: Callable[..., Dashboard],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_client(database_url=sqlite_url).track_lead("signup", "c1", click_id="k")
    monkeypatch.setattr(database, "BUSY_TIMEOUT", 0.5)  # a page that waited gets a 503
    browser = Browser(dashboards(sqlite_url))
    holder = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("UPDATE cms_outbox_events SET attempts = attempts")
        for page in ("/", "/events", "/events?state=pending"):
            assert browser.get(page).status_code == 200
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_database_failure_is_a_plain_503_and_a_missing_file_is_refused(
    tmp_path: Any, sqlite_url: str, make_client: Factory
) -> None:
    make_client(database_url=sqlite_url).track_lead("signup", "c1", click_id="k")
    engine = create_engine(sqlite_url)
    dashboard = Dashboard(engine=engine)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE cms_outbox_attempts")
        response = Browser(dashboard).get("/")
        assert response.status_code == 503
        assert "the outbox tables are missing" in text(response)
        assert "no such table" not in text(response)
    finally:
        dashboard.close()
        engine.dispose()
    with pytest.raises(SchemaError, match="no outbox database"):
        Dashboard(f"sqlite:///{tmp_path / 'typo.db'}")
    assert not (tmp_path / "typo.db").exists()
