"""The real ``cms-outbox`` entry point in a subprocess, on a SQLite file and the sandbox."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import sysconfig
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import pytest

from cms_outbox import CMSClient
from cms_outbox.cli import build_parser, main
from cms_outbox.heartbeat import Heartbeat
from cms_outbox.sandbox import Sandbox
from tests.conftest import TOKEN, FakeClock, wait_until

COMMANDS = [
    "run", "flush", "status", "events", "show", "health", "retry", "purge", "migrate",
    "sandbox", "demo", "ui",
]  # fmt: skip


def cli(
    *args: str, token: str | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m cms_outbox ARGS`` with a clean environment (plus the token, if given)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CMS_")}
    if token is not None:
        environment["CMS_BEARER_TOKEN"] = token
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "cms_outbox", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
    )


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cms-outbox: error: ")
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def inproc(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """The same ``main()`` in this process, for secondary checks (a subprocess costs ~1.5 s)."""

    def call(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        capsys.readouterr()
        with monkeypatch.context() as patch:
            if token is not None:
                patch.setenv("CMS_BEARER_TOKEN", token)
            code = main(list(args))
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, captured.out, captured.err)

    return call


Run = Callable[..., "subprocess.CompletedProcess[str]"]
STALL = 60.0  # seconds a daemon may take to show progress before the test calls it a hang


def seed(url: str, **options: Any) -> CMSClient:
    options.setdefault("flush", "off")
    return CMSClient(database_url=url, **options)


def lead(client: CMSClient, customer: str, **fields: Any) -> str:
    fields.setdefault("click_id", f"clk_{customer}")
    return client.track_lead("signup", customer, **fields).event_id


def sender(url: str, sandbox: Sandbox, **options: Any) -> CMSClient:
    return CMSClient(TOKEN, sandbox.url, url, flush="off", rate_limit=None, **options)


def settle(client: CMSClient, *event_ids: str, timeout: float = STALL) -> None:
    """Flush until these events are delivered or dead (sitting out short retry backoffs)."""
    deadline = time.monotonic() + timeout
    while True:
        client.flush()
        states = {client.result(event_id).state.value for event_id in event_ids}
        if states <= {"delivered", "dead"}:
            return
        assert time.monotonic() < deadline, states
        time.sleep(0.1)


@pytest.fixture
def migrated(sqlite_url: str) -> str:
    CMSClient(database_url=sqlite_url, flush="off").close()  # `migrate` is tested on its own
    return sqlite_url


# -- help and usage ----------------------------------------------------------------------


def test_every_command_is_registered() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(subparsers.choices) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command_has_an_example(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    examples = text.split("examples:", 1)[1]
    assert f"cms-outbox {command}" in examples
    assert ("--database-url" in text) == (command != "sandbox")  # the sandbox has no outbox


def test_top_level_help_documents_exit_codes_and_commands() -> None:
    result = cli("--help")
    assert result.returncode == 0
    assert "exit codes:" in result.stdout
    for code in ("0", "1", "2", "3", "4"):
        assert f"\n  {code} " in result.stdout
    for command in COMMANDS:
        assert command in result.stdout
    assert "CMS_BEARER_TOKEN" in result.stdout


def test_console_script_is_installed() -> None:
    script = Path(sysconfig.get_path("scripts")) / "cms-outbox"
    if not script.exists():
        pytest.skip(f"no console script at {script}")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CMS_")}
    result = subprocess.run(
        [str(script), "status", "--help"], capture_output=True, text=True, env=environment
    )
    assert result.returncode == 0
    assert "examples:" in result.stdout


def test_no_command_and_bad_arguments_exit_2(inproc: Run) -> None:
    assert cli().returncode == 2
    result = inproc("purge", "--delivered-older-than", "soon")
    assert result.returncode == 2
    assert "invalid duration" in result.stderr


def test_a_mistyped_option_points_at_its_command_help(inproc: Run) -> None:
    """It pointed at `cms-outbox --help`, which does not list the command's options."""
    result = inproc("status", "--jsn")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "cms-outbox status: error: unrecognized arguments: --jsn (see `cms-outbox status --help`)"
    )


def test_the_token_is_never_a_flag(inproc: Run) -> None:
    result = inproc("run", "--token", "secret")
    assert result.returncode == 2
    assert "unrecognized arguments" in result.stderr


# -- errors: one line and a documented exit code --------------------------------------------


def test_wrong_database_url_is_a_configuration_error(inproc: Run) -> None:
    line = assert_one_line_error(cli("status", "--database-url", "nosuchdb://x/y"), 2)
    assert "database URL" in line
    assert_one_line_error(inproc("status", "--database-url", "sqlite://"), 2)


def test_a_database_url_with_a_bad_port_is_one_line_without_its_password(inproc: Run) -> None:
    """It was a traceback ending in SQLAlchemy's ValueError, exit code 1."""
    for command in (["status"], ["flush"]):
        result = inproc(*command, "--database-url", "postgresql://u:sekrit@db:abc/app", token="t")
        line = assert_one_line_error(result, 2)
        assert "the port is not a number" in line
        assert "sekrit" not in line


def test_missing_database_file_is_reported_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    line = assert_one_line_error(cli("status", "--database-url", f"sqlite:///{path}"), 3)
    assert "cms-outbox migrate" in line
    assert not path.exists()


def test_unmigrated_database_is_not_migrated_implicitly(tmp_path: Path, inproc: Run) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE app (id INTEGER)")
    url = f"sqlite:///{path}"
    line = assert_one_line_error(cli("status", "--database-url", url), 3)
    assert "cms-outbox migrate" in line
    for command in (["events"], ["show", "x"], ["health"], ["retry", "--dead"], ["purge"]):
        line = assert_one_line_error(inproc(*command, "--database-url", url), 3)
        assert "cms-outbox migrate" in line
    with sqlite3.connect(path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert tables == {"app"}


def test_database_newer_than_the_code(migrated: str, inproc: Run) -> None:
    path = migrated.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE cms_outbox_alembic_version SET version_num = 'fffffffff'")
    assert "newer" in assert_one_line_error(cli("status", "--database-url", migrated), 3)
    assert "newer" in assert_one_line_error(inproc("migrate", "--database-url", migrated), 3)


def test_missing_token_for_flush_and_run(migrated: str, inproc: Run) -> None:
    line = assert_one_line_error(cli("flush", "--database-url", migrated), 2)
    assert "CMS_BEARER_TOKEN" in line
    line = assert_one_line_error(inproc("run", "--database-url", migrated), 2)
    assert "CMS_BEARER_TOKEN" in line


def test_verbose_shows_the_traceback() -> None:
    result = cli("status", "--verbose", "--database-url", "nosuchdb://x/y")
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("cms-outbox: error: ")


def test_database_url_from_the_environment(migrated: str) -> None:
    status = as_json(cli("status", "--json", env={"CMS_OUTBOX_URL": migrated}))
    assert status["database"] == migrated


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


# -- flush and health ---------------------------------------------------------------------


def test_flush_delivers_and_reports(migrated: str, sandbox: Sandbox, inproc: Run) -> None:
    with seed(migrated) as client:
        ids = [lead(client, f"c{i}") for i in range(5)]
    result = cli(
        "flush", "--json", "--rate-limit", "0", "--host", sandbox.url, "--database-url", migrated,
        token=TOKEN,
    )  # fmt: skip
    report = as_json(result)
    assert report["delivered"] == 5 and report["pending"] == 0 and report["due"] == 0
    assert all(sandbox.accepted_count(event_id) == 1 for event_id in ids)
    again = inproc("flush", "--host", sandbox.url, "--database-url", migrated, token=TOKEN)
    assert again.returncode == 0
    assert "delivered 0" in again.stdout


def test_flush_host_from_environment_and_outage_exit_1(migrated: str, sandbox: Sandbox) -> None:
    with seed(migrated) as client:
        lead(client, "a")
    sandbox.down()
    env = {"CMS_HOST": sandbox.url, "CMS_OUTBOX_URL": migrated}
    result = cli("flush", "--json", "--timeout", "5", token=TOKEN, env=env)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["paused"] == "outage" and report["due"] == 1
    sandbox.up()
    report = as_json(cli("flush", "--json", token=TOKEN, env=env))
    assert report["delivered"] == 1 and report["paused"] is None


@pytest.mark.parametrize("down", ["outage", "auth"])
def test_flush_into_a_pause_promises_no_probe(migrated: str, sandbox: Sandbox, down: str) -> None:
    """The flush exits at the pause: "next probe in 0.9s" was a probe that never came."""
    with seed(migrated) as client:
        lead(client, "a")
    if down == "outage":
        sandbox.down()
    token = TOKEN if down == "outage" else "not-the-token"
    result = cli("flush", "--host", sandbox.url, "--database-url", migrated, token=token)
    assert result.returncode == 1, result.stderr
    assert f"delivery paused ({down})" in result.stdout
    assert "next probe" not in result.stderr, result.stderr
    assert result.stderr == ""  # the report is the one account: no closing WARNING repeats it
    said = result.stdout.splitlines()
    assert said[1] == "left: 1 to send (1 due now), 0 blocked, 0 dead", result.stdout
    assert said[2].startswith(f"delivery paused ({down}): "), result.stdout
    assert said[3].startswith("the rest stays stored: `cms-outbox flush`"), result.stdout
    assert ("once the service answers" if down == "outage" else "valid CMS_BEARER_TOKEN") in said[3]


def test_status_outage_ends_when_another_process_delivers(
    migrated: str, sandbox: Sandbox, inproc: Run
) -> None:
    with seed(migrated) as client:
        lead(client, "a")
    sandbox.down()
    with sender(migrated, sandbox) as client:
        client.flush()
    status = as_json(inproc("status", "--json", "--database-url", migrated))
    assert status["pause"]["reason"] == "outage"
    sandbox.up()
    with sender(migrated, sandbox) as client:  # a new process: its breaker starts closed
        lead(client, "b")
        client.flush()
    assert as_json(inproc("status", "--json", "--database-url", migrated))["pause"] is None


def test_health_turns_green_after_a_flush(migrated: str, sandbox: Sandbox, inproc: Run) -> None:
    an_hour_ago = datetime.now(timezone.utc) - timedelta(hours=1)
    with seed(migrated, clock=lambda: an_hour_ago) as client:
        lead(client, "old")
    result = cli("health", "--max-pending-age", "10m", "--database-url", migrated)
    assert result.returncode == 1
    assert result.stdout.startswith("unhealthy: the oldest pending event is 1h")
    # Within the age limit but nobody delivers it: its own exit code. With a daemon beating
    # (a heartbeat row), the same outbox is healthy.
    assert inproc("health", "--max-pending-age", "2h", "--database-url", migrated).returncode == 6
    with seed(migrated) as client:
        Heartbeat(client.store, lambda: "daemon-1", kind="daemon").beat()
    assert inproc("health", "--max-pending-age", "2h", "--database-url", migrated).returncode == 0
    flushed = inproc(
        "flush", "--host", sandbox.url, "--rate-limit", "0", "--database-url", migrated,
        token=TOKEN,
    )  # fmt: skip
    assert flushed.returncode == 0, flushed.stderr
    healthy = cli("health", "--max-pending-age", "10m", "--json", "--database-url", migrated)
    assert as_json(healthy)["healthy"] is True


def test_health_fails_on_dead_events_and_auth_pause(
    migrated: str, sandbox: Sandbox, inproc: Run
) -> None:
    with sender(migrated, sandbox) as client:
        sandbox.set_faults(force_status=422, force_count=1)
        lead(client, "rejected")
        client.flush()
    assert inproc("health", "--max-dead", "1", "--database-url", migrated).returncode == 0
    result = inproc("health", "--max-dead", "0", "--database-url", migrated)
    assert result.returncode == 1 and "1 dead event (limit 0)" in result.stdout
    with seed(migrated) as client:
        lead(client, "other")
    refused = cli("flush", "--host", sandbox.url, "--database-url", migrated, token="wrong-token")
    assert refused.returncode == 1
    assert "with a valid CMS_BEARER_TOKEN" in refused.stdout  # the report says it
    assert "wrong-token" not in refused.stdout + refused.stderr
    health = cli("health", "--json", "--database-url", migrated)
    assert health.returncode == 1
    verdict = json.loads(health.stdout)
    assert verdict["healthy"] is False
    assert any("token" in reason for reason in verdict["reasons"])
    status = as_json(inproc("status", "--json", "--database-url", migrated))
    assert status["pause"]["reason"] == "auth"


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


# -- the daemon, the sandbox and the demo ---------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_run_delivers_serves_metrics_and_stops_on_sigterm(migrated: str, sandbox: Sandbox) -> None:
    pytest.importorskip("prometheus_client")
    with seed(migrated) as client:
        before = [lead(client, f"before{i}") for i in range(3)]
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CMS_")}
    environment["CMS_BEARER_TOKEN"] = TOKEN
    process = subprocess.Popen(
        [
            sys.executable, "-m", "cms_outbox", "run", "--database-url", migrated,
            "--host", sandbox.url, "--rate-limit", "0", "--interval", "0.2",
            "--metrics-port", str(port), "--metrics-address", "127.0.0.1",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
    )  # fmt: skip
    try:
        assert sandbox.wait_for(lambda sb: all(sb.accepted_count(i) for i in before), STALL)
        with seed(migrated) as client:
            after = lead(client, "after")
        assert sandbox.wait_for(lambda sb: sb.accepted_count(after) == 1, STALL)
        # The sandbox counts a request before the daemon records its answer: wait for that.
        assert wait_until(lambda: _scrape(port)["cms_outbox_pending"] == 0)
        metrics = _scrape(port)
        assert metrics["cms_outbox_enqueued_total"] >= 1
        assert metrics["cms_outbox_delivered_total"] >= 1
        assert metrics["cms_outbox_pending"] == 0
        assert metrics["cms_outbox_request_duration_seconds_count"] >= 1
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=STALL)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert f"delivering from {migrated} to {sandbox.url}" in err
    assert "rate limit unpaced, 8 workers" in err
    assert "did not end within" not in err  # its last pass ended: no lease left to expire
    assert "stopped after" in err and "delivered 4" in err
    assert TOKEN not in out + err
    assert all(sandbox.accepted_count(i) == 1 for i in [*before, after])


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_sandbox_command_serves_until_sigterm() -> None:
    import requests

    environment = {k: v for k, v in os.environ.items() if not k.startswith("CMS_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "cms_outbox", "sandbox", "--port", "0", "--token", "tok"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        url = first.split(" on ", 1)[1].split()[0]
        body = {"eventName": "signup", "customerExternalId": "c1", "clickId": "k1"}
        answer = requests.post(
            f"{url}/track/lead", json=body, headers={"Authorization": "Bearer tok"}, timeout=60
        )
        assert answer.status_code == 200
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=STALL)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0


def test_demo_exits_0() -> None:
    result = cli("demo", timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: every event was accepted exactly once" in result.stdout
    assert "outage started" in result.stderr and "outage ended" in result.stderr
