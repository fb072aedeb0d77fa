"""Honest status: every flusher beats (host, pid, start, last beat, version); ``status``
lists the live ones and says plainly when none is running; ``health`` fails with its own
exit code (6) when events wait and nobody delivers them."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import pytest

from cms_outbox import CMSClient, Daemon, __version__
from cms_outbox.cli import main
from cms_outbox.heartbeat import EVERY, STALE_AFTER, Heartbeat
from cms_outbox.reader import OutboxReader
from cms_outbox.sandbox import Sandbox
from cms_outbox.store import Store
from tests.conftest import TOKEN, wait_until

EXIT_NO_FLUSHER = 6


def status_json(url: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["status", "--json", "--database-url", url]) == 0
    return dict(json.loads(capsys.readouterr().out))


def status_text(url: str, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(["status", "--database-url", url]) == 0
    return capsys.readouterr().out


def live(url: str) -> list[Any]:
    with OutboxReader(url) as reader:
        return list(reader.status().live_flushers)


def test_status_without_a_flusher_still_says_the_token_was_rejected(
    sqlite_url: str, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    """The pause stays recorded and health reports it; status said only "no flusher"."""
    with CMSClient(
        token="not-the-token", host=sandbox.url, database_url=sqlite_url, flush="off"
    ) as client:
        client.track_lead("signup", "user_1", click_id="c_1")
        assert client.flush().paused == "auth"
    assert status_json(sqlite_url, capsys)["pause"]["reason"] == "auth"
    (line,) = [
        row for row in status_text(sqlite_url, capsys).splitlines() if row.startswith("delivery ")
    ]
    assert "no flusher is running" in line
    assert "the last one found the token rejected since" in line
    assert "HTTP 401" in line


def test_an_in_process_flusher_beats_from_its_first_pass_and_leaves_at_close(
    database_url: str, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    client = CMSClient(token=TOKEN, host=sandbox.url, database_url=database_url)
    try:
        assert wait_until(lambda: len(live(database_url)) == 1)
        (flusher,) = live(database_url)
        assert (flusher.kind, flusher.pid, flusher.host, flusher.version) == (
            "client", os.getpid(), socket.gethostname(), __version__,
        )  # fmt: skip
        assert flusher.started_at <= flusher.beat_at <= time.time()
        shown = status_json(database_url, capsys)
        assert shown["flusher_running"] is True
        assert [(f["kind"], f["pid"]) for f in shown["flushers"]] == [("client", os.getpid())]
        text = status_text(database_url, capsys)
        assert "delivery        running" in text
        assert f"client on {socket.gethostname()} pid {os.getpid()}" in text
    finally:
        client.close()
    assert live(database_url) == []
    assert status_json(database_url, capsys)["flusher_running"] is False
    assert "no flusher is running (none beat in the last 3m00s)" in status_text(
        database_url, capsys
    )


def test_a_daemon_beats_as_a_daemon(sqlite_url: str, sandbox: Sandbox) -> None:
    daemon = Daemon(TOKEN, sandbox.url, sqlite_url, handle_signals=False, interval=0.1)
    runner = threading.Thread(target=daemon.run_forever)
    runner.start()
    try:
        assert wait_until(lambda: [f.kind for f in live(sqlite_url)] == ["daemon"])
    finally:
        daemon.stop()
        runner.join(60)
    assert live(sqlite_url) == []


def test_a_client_that_only_enqueues_is_no_flusher(sqlite_url: str) -> None:
    with CMSClient(database_url=sqlite_url, flush="off") as client:
        client.track_lead("signup", "user_1", click_id="c")
        assert live(sqlite_url) == []


def beat_at(store: Store, when: float, owner: str = "gone") -> None:
    heartbeat = Heartbeat(store, lambda: owner, kind="daemon", clock=lambda: when)
    heartbeat.beat()


def test_a_flusher_that_stopped_beating_is_not_running(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A crashed flusher leaves its row; after STALE_AFTER without a beat it is gone."""
    with CMSClient(database_url=sqlite_url, flush="off") as client:
        beat_at(client.store, time.time() - STALE_AFTER - 1)
    with OutboxReader(sqlite_url) as reader:
        status = reader.status()
        assert len(status.flushers) == 1 and status.live_flushers == ()
        younger = reader.status(now=status.flushers[0].beat_at + STALE_AFTER - 1)
        assert len(younger.live_flushers) == 1
    assert "no flusher is running" in status_text(sqlite_url, capsys)


def test_a_fresh_event_before_the_daemon_starts_is_healthy(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with CMSClient(database_url=sqlite_url, flush="off") as client:
        client.track_lead("signup", "user_1", click_id="c")
    assert main(["health", "--database-url", sqlite_url]) == 0


def test_health_fails_with_its_own_code_when_events_wait_and_no_flusher_runs(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    old = datetime.now(timezone.utc) - timedelta(seconds=STALE_AFTER + 60)
    with CMSClient(database_url=sqlite_url, flush="off", clock=lambda: old) as client:
        capsys.readouterr()
        assert main(["health", "--database-url", sqlite_url]) == 0  # nothing waits
        client.track_lead("signup", "user_1", click_id="c")  # enqueued four minutes ago
        capsys.readouterr()
        assert main(["health", "--database-url", sqlite_url]) == EXIT_NO_FLUSHER
        said = capsys.readouterr().out
        assert said.startswith("unhealthy: no flusher is running, with 1 event to send")
        beat_at(client.store, time.time())  # a daemon beats: the wait is its business
        assert main(["health", "--database-url", sqlite_url]) == 0


def test_a_beat_is_one_small_write_at_most_every_interval(sqlite_url: str) -> None:
    """The heartbeat limits itself: an idle flusher must write next to nothing."""
    now = [1000.0]
    with CMSClient(database_url=sqlite_url, flush="off") as client:
        heartbeat = Heartbeat(client.store, lambda: "owner", kind="client", clock=lambda: now[0])
        writes: list[float] = []
        original: Callable[[dict[str, Any]], None] = client.store.beat

        def counted(row: dict[str, Any]) -> None:
            writes.append(row["beat_at"])
            original(row)

        client.store.beat = counted  # type: ignore[method-assign]
        for _ in range(int(10 * 60 / 0.5)):  # ten minutes of passes, one every 0.5 s
            heartbeat.beat()
            now[0] += 0.5
        assert len(writes) == int(10 * 60 / EVERY)
        assert all(b - a >= EVERY for a, b in zip(writes, writes[1:]))
        heartbeat.stop()
    assert live(sqlite_url) == []
