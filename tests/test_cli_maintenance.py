"""``cms-outbox retry`` and ``purge``: what they change, and what a dry run promises."""

from __future__ import annotations

import json
import sqlite3

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
)
from tests.conftest import TOKEN

__all__ = ["inproc", "migrated"]  # the fixtures: pytest finds them here


# -- retry and purge ------------------------------------------------------------------------


def test_retry_dead_brings_them_back_with_history(
    migrated: str, sandbox: Sandbox, inproc: Run
) -> None:
    with sender(migrated, sandbox) as client:
        sandbox.set_faults(force_status=422, force_count=2)
        dead = [lead(client, "a"), lead(client, "b")]
        client.flush()
        assert {client.result(event_id).state.value for event_id in dead} == {"dead"}
    result = as_json(cli("retry", "--dead", "--json", "--database-url", migrated))
    assert result == {"retried": 2, "skipped": []}
    detail = as_json(inproc("show", dead[0], "--json", "--database-url", migrated))
    assert detail["state"] == "pending"
    assert [a["status_code"] for a in detail["attempt_history"]] == [422]
    flushed = inproc("flush", "--host", sandbox.url, "--database-url", migrated, token=TOKEN)
    assert flushed.returncode == 0
    detail = as_json(inproc("show", dead[0], "--json", "--database-url", migrated))
    assert detail["state"] == "delivered"
    assert [a["status_code"] for a in detail["attempt_history"]] == [422, 200]


def test_retry_by_id_and_errors(migrated: str, sandbox: Sandbox, inproc: Run) -> None:
    with sender(migrated, sandbox) as client:
        delivered = lead(client, "ok")
        client.flush()
        sandbox.set_faults(force_status=400, force_count=1)
        dead = lead(client, "bad")
        client.flush()
    assert as_json(inproc("retry", dead, "--json", "--database-url", migrated))["retried"] == 1
    skipped = inproc("retry", delivered, "--json", "--database-url", migrated)
    assert skipped.returncode == 1
    assert json.loads(skipped.stdout)["skipped"] == [{"event_id": delivered, "state": "delivered"}]
    assert_one_line_error(cli("retry", "nope", "--database-url", migrated), 4)
    assert_one_line_error(inproc("retry", "--database-url", migrated), 2)


def age(url: str, event_ids: list[str], seconds: float) -> None:
    """Make events look delivered/attempted ``seconds`` earlier than they were."""
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        conn.executemany(
            "UPDATE cms_outbox_events SET delivered_at = delivered_at - ?, "
            "last_attempt_at = last_attempt_at - ?, created_at = created_at - ? "
            "WHERE event_id = ?",
            [(seconds, seconds, seconds, event_id) for event_id in event_ids],
        )


def test_purge_dry_run_lists_exactly_what_purge_removes(
    migrated: str, sandbox: Sandbox, inproc: Run
) -> None:
    with sender(migrated, sandbox) as client:
        sandbox.set_faults(force_status=422, force_count=2)
        old_dead = lead(client, "olddead")
        recent_dead = lead(client, "recentdead")
        client.flush()
        old = [lead(client, f"old{i}") for i in range(3)]
        recent = lead(client, "recent")
        client.flush()
        pending = lead(client, "pending")
    age(migrated, [*old, old_dead], 3 * 86400)
    args = ["--delivered-older-than", "2d", "--dead-older-than", "2d", "--json"]
    listing = ["events", "--json", "--limit", "100", "--database-url", migrated]
    before = as_json(inproc(*listing))
    dry = as_json(cli("purge", *args, "--dry-run", "--database-url", migrated))
    assert dry["dry_run"] is True and dry["delivered_older_than_seconds"] == 2 * 86400
    assert sorted(dry["event_ids"]) == sorted([*old, old_dead])
    assert as_json(inproc(*listing)) == before
    real = as_json(cli("purge", *args, "--database-url", migrated))
    assert real["dry_run"] is False
    assert real["event_ids"] == dry["event_ids"] and real["count"] == 4
    left = as_json(inproc(*listing))
    assert sorted(e["event_id"] for e in left) == sorted([recent_dead, recent, pending])
    assert_one_line_error(inproc("show", old[0], "--database-url", migrated), 4)
    with sqlite3.connect(migrated.removeprefix("sqlite:///")) as conn:
        orphans = conn.execute(
            "SELECT count(*) FROM cms_outbox_attempts WHERE event_seq NOT IN "
            "(SELECT id FROM cms_outbox_events)"
        ).fetchone()[0]
    assert orphans == 0
    text = inproc("purge", "--dead-older-than", "never", "--dry-run", "--database-url", migrated)
    assert text.returncode == 0 and "would purge 0 events" in text.stdout
