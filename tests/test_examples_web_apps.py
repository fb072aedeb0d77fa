"""The Flask and FastAPI examples, served for real, deliver each request's event exactly once."""

from __future__ import annotations

import signal
import sys
from collections import Counter
from typing import Any, Callable

import pytest
import requests
from sqlalchemy import create_engine, text

from cms_outbox.sandbox import Sandbox
from tests.example_servers import (
    DELIVERY,
    EXAMPLES,
    REQUEST_TIMEOUT,
    Server,
    accepted_at_least,
    app_env,
    count,
    free_port,
    launch,
    post_all,
)

__all__ = ["launch"]  # the fixture: pytest finds it here

pytestmark = pytest.mark.slow


def drop_users(database_url: str) -> None:
    """Forget a previous run's users (PostgreSQL); a SQLite file is new for every test."""
    if database_url.startswith("sqlite"):
        return  # and creating the file here would bypass the outbox's mode 0600
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS users"))
    finally:
        engine.dispose()


# -- Flask + SQLAlchemy: the transactional outbox -------------------------------------------


def test_flask_signup_stores_user_and_lead_together_or_neither(
    database_url: str, sandbox: Sandbox, launch: Callable[..., Server]
) -> None:
    drop_users(database_url)
    port = free_port()
    server = launch(
        "flask",
        [sys.executable, "-m", "flask", "--app", str(EXAMPLES / "flask_app.py"), "run",
         "--host", "127.0.0.1", "--port", str(port)],
        app_env(database_url, sandbox),
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    server.wait_ready(base)
    try:
        signups = [
            {"email": f"user{n}@example.com", "name": f"User {n}", "click_id": f"clk_{n}"}
            for n in range(6)
        ]
        created = post_all([(f"{base}/signup", body) for body in signups], threads=3)
        assert [r.status_code for r in created] == [201] * 6, server.log()
        duplicate = requests.post(
            f"{base}/signup",
            json={"email": "user0@example.com", "name": "Again"},
            timeout=REQUEST_TIMEOUT,
        )
        assert duplicate.status_code == 409
        invalid = requests.post(  # the lead fails validation: the user is not created either
            f"{base}/signup",
            json={"email": "bad@example.com", "click_id": 123},
            timeout=REQUEST_TIMEOUT,
        )
        assert invalid.status_code == 422 and invalid.json()["field"] == "click_id"
        no_email = requests.post(f"{base}/signup", json={"name": "X"}, timeout=REQUEST_TIMEOUT)
        assert no_email.status_code == 400, no_email.text
        assert no_email.json() == {"error": "email is required (a non-empty string)",
                                   "field": "email"}  # fmt: skip
        not_json = requests.post(f"{base}/signup", data="email=x", timeout=REQUEST_TIMEOUT)
        assert not_json.status_code == 400 and "JSON object" in not_json.json()["error"]
        organic = requests.post(  # no click to attribute: the user, and no lead to lose
            f"{base}/signup", json={"email": "organic@example.com"}, timeout=REQUEST_TIMEOUT
        )
        assert organic.status_code == 201, organic.text
        assert organic.json()["tracked"] is False and organic.json()["event_id"] is None

        users = {r.json()["event_id"]: r.json()["user_id"] for r in created}
        assert sandbox.wait_for(lambda sb: len(sb.accepted) >= 6, timeout=DELIVERY), server.log()
        assert all(sandbox.accepted_count(event_id) == 1 for event_id in users)
        assert len(sandbox.accepted) == 6
        assert sorted(a.customer_external_id for a in sandbox.accepted) == sorted(users.values())
        emails = sorted(a.payload["customerEmail"] for a in sandbox.accepted)
        assert emails == sorted(body["email"] for body in signups)

        assert count(database_url, "SELECT count(*) FROM users") == 7
        assert count(database_url, "SELECT count(*) FROM users WHERE name = 'Again'") == 0
        assert count(database_url, "SELECT count(*) FROM cms_outbox_events") == 6
        dead = "SELECT count(*) FROM cms_outbox_events WHERE state = 'dead'"
        assert count(database_url, dead) == 0
        assert "Traceback" not in server.log() and "KeyError" not in server.log()
    finally:
        server.stop()
        drop_users(database_url)


# -- FastAPI under uvicorn -------------------------------------------------------------------


def test_fastapi_concurrent_requests_each_delivered_once(
    sqlite_url: str, sandbox: Sandbox, launch: Callable[..., Server]
) -> None:
    port = free_port()
    server = launch(
        "uvicorn",
        [sys.executable, "-m", "uvicorn", "--app-dir", str(EXAMPLES), "fastapi_app:app",
         "--host", "127.0.0.1", "--port", str(port)],
        app_env(sqlite_url, sandbox),
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    server.wait_ready(base)
    calls: list[tuple[str, dict[str, Any]]] = []
    for n in range(60):
        customer = {"customer_id": f"user_{n}", "click_id": f"clk_{n}"}
        calls.append((f"{base}/signups", {**customer, "email": f"user{n}@example.com"}))
        purchase = {**customer, "invoice_id": f"inv_{n}", "amount": 4999, "currency": "USD"}
        calls.append((f"{base}/purchases", purchase))
    responses = post_all(calls, threads=16)
    assert [r.status_code for r in responses] == [200] * 120, server.log()
    event_ids = [r.json()["event_id"] for r in responses]
    assert len(set(event_ids)) == 120

    invalid = requests.post(
        f"{base}/purchases",
        json={"customer_id": "u", "click_id": "c", "invoice_id": "inv_x", "amount": 1,
              "currency": "dollars"},
        timeout=REQUEST_TIMEOUT,
    )  # fmt: skip
    assert invalid.status_code == 422 and invalid.json()["field"] == "currency"

    assert accepted_at_least(sandbox, 120), server.log()
    assert all(sandbox.accepted_count(event_id) == 1 for event_id in event_ids)
    assert len(sandbox.accepted) == 120
    assert Counter(a.kind for a in sandbox.accepted) == {"lead": 60, "sale": 60}
    # uvicorn shuts down gracefully (the lifespan closes the client), then re-raises SIGTERM.
    assert server.stop() in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in server.log(), server.log()
