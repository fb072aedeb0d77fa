"""The gunicorn example's workers each deliver, none twice; a relative SQLite URL logs its file."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest
import requests
from sqlalchemy import create_engine, text

from cms_outbox.sandbox import Sandbox
from tests.conftest import wait_until
from tests.example_servers import (
    DELIVERY,
    EXAMPLES,
    ROOT,
    SCRIPTS,
    STARTUP,
    Server,
    accepted_at_least,
    app_env,
    free_port,
    launch,
    post_all,
)

__all__ = ["launch"]  # the fixture: pytest finds it here

pytestmark = pytest.mark.slow


# -- gunicorn: 4 workers, a background flusher in each -----------------------------------------


def flusher_pids(database_url: str) -> set[int]:
    """The processes whose flusher has beaten (``cms_outbox_flushers``) and not stopped."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            pids = conn.execute(text("SELECT pid FROM cms_outbox_flushers")).scalars()
            return {int(pid) for pid in pids}
    finally:
        engine.dispose()


# With --preload the master's background flusher may be mid-pass when gunicorn forks;
# the library waits for the pass so no worker inherits an open SQLite transaction.
@pytest.mark.parametrize("preload", [False, True], ids=["fork-then-import", "preload"])
def test_gunicorn_workers_each_deliver_and_nothing_is_sent_twice(
    sqlite_url: str,
    sandbox: Sandbox,
    launch: Callable[..., Server],
    preload: bool,
    tmp_path: Path,
) -> None:
    port = free_port()
    server = launch(
        "gunicorn",
        [sys.executable, "-m", "gunicorn", "-c", str(EXAMPLES / "gunicorn.conf.py"),
         "--chdir", str(EXAMPLES), "--bind", f"127.0.0.1:{port}", "-w", "4",
         *(["--preload"] if preload else []), "gunicorn_app:app"],
        {**app_env(sqlite_url, sandbox), "HOME": str(tmp_path)},  # its control socket
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    server.wait_ready(f"{base}/health")
    booted = re.compile(r"Booting worker with pid: (\d+)")
    assert wait_until(lambda: len(booted.findall(server.log())) >= 4, timeout=STARTUP)
    workers = {int(pid) for pid in booted.findall(server.log())}
    # Each worker has imported the app and its flusher runs (after fork, with --preload):
    # from now on every worker can take requests, however slowly this machine started them.
    assert wait_until(lambda: workers <= flusher_pids(sqlite_url), timeout=STARTUP), server.log()

    calls: list[tuple[str, dict[str, Any]]] = [
        (f"{base}/signup/user_{n % 50}?click_id=clk_{n}", {}) for n in range(200)
    ]
    responses = post_all(calls, threads=8)
    assert [r.status_code for r in responses] == [200] * 200, server.log()
    enqueued_by = {r.json()["event_id"]: r.json()["pid"] for r in responses}
    assert len(enqueued_by) == 200
    served = Counter(enqueued_by.values())
    assert len(served) >= 2, f"one worker served every request: {served}"

    # Never flush(): only the flushers running in the processes deliver.
    assert accepted_at_least(sandbox, 200), server.log()
    assert all(sandbox.accepted_count(event_id) == 1 for event_id in enqueued_by)
    assert len(sandbox.accepted) == 200

    delivered = re.compile(r"\[(\d+)\] gunicorn_app: delivered (\S+)")
    # on_delivered runs once the answer is recorded, just after the sandbox counted it.
    assert wait_until(lambda: len(delivered.findall(server.log())) >= 200, timeout=DELIVERY)
    log = server.log()
    delivered_by = {event_id: int(pid) for pid, event_id in delivered.findall(log)}
    assert set(delivered_by) == set(enqueued_by)
    # Every flusher may deliver any worker's rows, so one busy worker can win them all:
    # their heartbeats show that each worker's flusher is alive.
    assert set(delivered_by.values()) <= workers | {server.process.pid}
    assert workers <= flusher_pids(sqlite_url), log  # none of them died after fork
    assert "Traceback" not in log and "flusher pass failed" not in log, log
    assert "WORKER TIMEOUT" not in log and len(booted.findall(log)) == 4, log  # none stuck
    assert server.stop() == 0, server.log()


def test_gunicorn_chdir_with_a_relative_sqlite_url_logs_where_the_outbox_is(
    sandbox: Sandbox, launch: Callable[..., Server], tmp_path: Path
) -> None:
    workdir = tmp_path / "app"
    workdir.mkdir()
    port = free_port()
    env = {**app_env("sqlite:///app.db", sandbox), "HOME": str(tmp_path)}
    server = launch(
        "gunicorn",
        [sys.executable, "-m", "gunicorn", "-c", str(EXAMPLES / "gunicorn.conf.py"),
         "--chdir", str(workdir), "--pythonpath", str(EXAMPLES),
         "--bind", f"127.0.0.1:{port}", "-w", "1", "gunicorn_app:app"],
        env,
    )  # fmt: skip
    server.wait_ready(f"http://127.0.0.1:{port}/health")
    path = workdir / "app.db"
    assert f"gunicorn_app: outbox: {path}" in server.log(), server.log()
    response = requests.post(f"http://127.0.0.1:{port}/signup/u1?click_id=c1", timeout=30)
    assert response.status_code == 200
    assert sandbox.wait_for(lambda sb: len(sb.accepted) == 1, timeout=DELIVERY)
    assert server.stop() == 0, server.log()
    status = subprocess.run(  # from the repository root, with the path the log gave
        [str(SCRIPTS / "cms-outbox"), "status", "--json", "--database-url", f"sqlite:///{path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["counts"]["delivered"] == 1
    assert not (ROOT / "app.db").exists() and not (EXAMPLES / "app.db").exists()
