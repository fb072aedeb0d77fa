"""``cms_outbox.Daemon``: the delivery daemon as a library call (``cms-outbox run`` wraps it)."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from cms_outbox import ClientClosed, CMSClient, ConfigurationError, Daemon, FlushReport
from cms_outbox.sandbox import Sandbox
from tests.conftest import TOKEN, wait_until

README = Path(__file__).resolve().parent.parent / "README.md"
STALL = 60.0  # seconds without the awaited progress that mean a hang, not a slow machine


def enqueue(url: str, count: int) -> list[str]:
    with CMSClient(database_url=url, flush="off") as client:
        return [
            client.track_lead("signup", f"u{i}", click_id=f"c{i}").event_id for i in range(count)
        ]


def test_run_forever_delivers_until_stop_and_returns_the_totals(
    sqlite_url: str, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    ids = enqueue(sqlite_url, 5)
    daemon = Daemon(TOKEN, sandbox.url, sqlite_url, rate_limit=None, interval=0.2)
    result: list[FlushReport] = []
    caplog.set_level(logging.INFO, logger="cms_outbox.daemon")
    runner = threading.Thread(target=lambda: result.append(daemon.run_forever()))
    runner.start()  # not the main thread: signals stay the application's
    try:
        assert sandbox.wait_for(lambda sb: all(sb.accepted_count(i) == 1 for i in ids), STALL)
        assert wait_until(lambda: daemon.totals.delivered == 5)  # recorded, not just sent
    finally:
        daemon.stop()
        runner.join(STALL)
    assert not runner.is_alive()
    assert result == [FlushReport(delivered=5, retried=0, dead=0, pending=0, blocked=0)]
    lines = [record.getMessage() for record in caplog.records]
    assert any(line.startswith(f"cms-outbox run: delivering from {sqlite_url}") for line in lines)
    assert any(re.search(r"stopped after .* \(delivered 5, retried 0, dead 0\)", x) for x in lines)
    with pytest.raises(ClientClosed):  # it runs once; everything is released
        daemon.run_forever()


def test_a_daemon_needs_a_token(sqlite_url: str) -> None:
    with pytest.raises(ConfigurationError, match="CMS_BEARER_TOKEN"):
        Daemon(database_url=sqlite_url)


def readme_daemon_block() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    [block] = [block for block in blocks if "Daemon(" in block]
    return block


def test_the_readme_three_lines_run_the_daemon_until_sigterm(
    sqlite_url: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    """The README's snippet, as its own process: delivers, stops on SIGTERM, exits 0."""
    block = readme_daemon_block()
    assert len([line for line in block.splitlines() if line.strip()]) <= 3
    ids = enqueue(sqlite_url, 3)
    script = tmp_path / "daemon.py"
    script.write_text(block.replace('"sqlite:///outbox.db"', repr(sqlite_url)))
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CMS_")}
    environment.update(CMS_BEARER_TOKEN=TOKEN, CMS_HOST=sandbox.url)
    process = subprocess.Popen(
        [sys.executable, str(script)], stderr=subprocess.PIPE, text=True, env=environment
    )
    try:
        assert sandbox.wait_for(lambda sb: all(sb.accepted_count(i) == 1 for i in ids), STALL)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=STALL)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert err == ""
    assert textwrap.dedent(block).startswith("from cms_outbox import Daemon")
