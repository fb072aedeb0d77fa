"""``cms-outbox flush``, ``health`` and ``run`` deliver, report and stop as documented."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest

from cms_outbox.heartbeat import Heartbeat
from cms_outbox.sandbox import Sandbox
from tests.cli_runs import (
    STALL,
    Run,
    as_json,
    cli,
    inproc,
    lead,
    migrated,
    seed,
    sender,
)
from tests.conftest import TOKEN, wait_until

__all__ = ["inproc", "migrated"]  # the fixtures: pytest finds them here


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


# -- the daemon ----------------------------------------------------------------------------


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
