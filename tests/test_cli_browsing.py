"""``cms-outbox migrate``, ``status``, ``events`` and ``show`` in a subprocess and in-process."""

from __future__ import annotations

from cms_outbox.sandbox import Sandbox
from tests.cli_runs import (
    Run,
    as_json,
    assert_one_line_error,
    cli,
    inproc,
    lead,
    migrated,
    sender,
    settle,
)
from tests.conftest import FakeClock

__all__ = ["inproc", "migrated"]  # the fixtures: pytest finds them here


# -- migrate, status, events, show ---------------------------------------------------------


def test_migrate_prints_the_revision(sqlite_url: str, inproc: Run) -> None:
    first = as_json(cli("migrate", "--json", "--database-url", sqlite_url))
    assert first["previous"] is None and first["revision"]
    again = inproc("migrate", "--database-url", sqlite_url)
    assert again.returncode == 0
    assert f"already at revision {first['revision']}" in again.stdout


def test_status_counts_and_json_keys(migrated: str, sandbox: Sandbox, inproc: Run) -> None:
    empty = as_json(inproc("status", "--json", "--database-url", migrated))
    assert empty["counts"] == dict.fromkeys(
        ["pending", "in_flight", "delivered", "dead", "blocked"], 0
    )
    assert empty["oldest_pending_at"] is None and empty["pause"] is None
    with sender(migrated, sandbox, clock=FakeClock()) as client:  # b's backoff never ends
        lead(client, "a")
        client.flush()
        sandbox.set_faults(force_status=503, force_count=1)
        lead(client, "b")
        client.flush()  # b fails once and waits for a retry
        lead(client, "c")
    status = as_json(cli("status", "--json", "--database-url", migrated))
    assert set(status) >= {
        "database", "now", "counts", "pending_first_try", "pending_retrying", "pending_due",
        "oldest_pending_at", "oldest_pending_age_seconds", "next_attempt_at",
        "last_delivery_at", "last_error", "pause", "delivered_last_minute",
        "delivered_last_hour",
    }  # fmt: skip
    assert status["counts"]["delivered"] == 1
    assert status["counts"]["pending"] == 2
    assert (status["pending_first_try"], status["pending_retrying"]) == (1, 1)
    assert status["delivered_last_minute"] == status["delivered_last_hour"] == 1
    assert status["last_delivery_at"].endswith("Z")
    assert status["last_error"]["status_code"] == 503
    assert status["oldest_pending_age_seconds"] >= 0
    text = inproc("status", "--database-url", migrated)
    assert text.returncode == 0
    assert "pending" in text.stdout and "1 first try, 1 retrying" in text.stdout


def test_events_filters_and_show_history(migrated: str, sandbox: Sandbox, inproc: Run) -> None:
    with sender(migrated, sandbox) as client:
        first = lead(client, "alice", customer_email="alice@example.com")
        sale = client.track_sale("buy", "alice", "inv-1", 4999, "USD", click_id="clk").event_id
        bob = lead(client, "bob")
        sandbox.set_faults(force_status=503, force_count=1)
        client.flush()  # the first request fails once
        settle(client, first, sale, bob)
    everything = as_json(cli("events", "--json", "--database-url", migrated))
    assert len(everything) == 3
    assert [e["seq"] for e in everything] == sorted((e["seq"] for e in everything), reverse=True)
    sales = as_json(inproc("events", "--kind", "sale", "--json", "--database-url", migrated))
    assert [e["event_id"] for e in sales] == [sale]
    alice = as_json(
        inproc("events", "--customer", "alice", "--oldest-first", "--json",
               "--database-url", migrated)
    )  # fmt: skip
    assert [e["event_id"] for e in alice] == [first, sale]
    limited = as_json(inproc("events", "--limit", "1", "--json", "--database-url", migrated))
    assert len(limited) == 1
    none_dead = as_json(inproc("events", "--state", "dead", "--json", "--database-url", migrated))
    assert none_dead == []
    table = inproc("events", "--database-url", migrated)
    assert table.returncode == 0 and sale in table.stdout

    detail = as_json(cli("show", first, "--json", "--database-url", migrated))
    assert detail["event_id"] == first and detail["state"] == "delivered"
    assert detail["payload"]["customerEmail"] == "alice@example.com"
    assert detail["payload"]["clickId"] == "clk_alice"
    history = detail["attempt_history"]
    assert [(a["status_code"], a["outcome"]) for a in history] == [
        (503, "retry"),
        (200, "delivered"),
    ]
    assert history[1]["response"]["success"] is True
    text = inproc("show", first, "--database-url", migrated)
    assert text.returncode == 0
    assert "payload" in text.stdout and "503" in text.stdout


def test_show_unknown_event_exits_4(migrated: str) -> None:
    line = assert_one_line_error(cli("show", "no-such-event", "--database-url", migrated), 4)
    assert "no-such-event" in line
