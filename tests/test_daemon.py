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
from typing import Callable

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
    assert textwrap.dedent(block).startswith("from cms_outbox import Daemon")
    lines = err.splitlines()  # nothing configured logging: the daemon logs as `cms-outbox run`
    assert re.search(r" INFO cms_outbox\.daemon: cms-outbox run: delivering from ", lines[0]), err
    assert re.search(r"stopped after .* \(delivered 3, retried 0, dead 0\)", lines[-1]), err


def run_daemon_script(
    code: str, url: str, sandbox: Sandbox, tmp_path: Path, until: Callable[[str], bool]
) -> tuple[str, str]:
    """Run ``code`` as a script until ``until(its stderr so far)``, stop it with SIGTERM."""
    script = tmp_path / "daemon.py"
    script.write_text(textwrap.dedent(code))
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CMS_")}
    environment.update(CMS_OUTBOX_URL=url, CMS_HOST=sandbox.url)
    err_path, out_path = tmp_path / "stderr.txt", tmp_path / "stdout.txt"
    with err_path.open("w") as err_file, out_path.open("w") as out_file:
        process = subprocess.Popen(
            [sys.executable, str(script)], stdout=out_file, stderr=err_file, env=environment
        )
        try:
            assert wait_until(lambda: until(err_path.read_text()), STALL), err_path.read_text()
            process.send_signal(signal.SIGTERM)
            assert process.wait(STALL) == 0, err_path.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return out_path.read_text(), err_path.read_text()


def test_an_unconfigured_daemon_shows_a_refused_token_on_stderr(
    sqlite_url: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    """Without logging configured, the daemon's errors came bare (Python's last resort), with
    no time or level, and its INFO lines not at all."""
    enqueue(sqlite_url, 1)
    code = """
        from cms_outbox import Daemon
        Daemon(token="not-the-token").run_forever()
    """
    _, err = run_daemon_script(
        code, sqlite_url, sandbox, tmp_path, until=lambda err: " ERROR " in err
    )
    [refused] = [line for line in err.splitlines() if " ERROR " in line]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ERROR cms_outbox\.", refused), err
    assert "rejected the token" in refused and "not-the-token" not in err, err
    assert "cms-outbox run: delivering from" in err and "cms-outbox run: stopped after" in err


def test_a_daemon_leaves_the_applications_logging_as_it_is(
    sqlite_url: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    """An application that configured logging gets the daemon's lines its way, none on stderr."""
    [event_id] = enqueue(sqlite_url, 1)
    code = f"""
        import logging, sys
        from cms_outbox import Daemon
        logging.basicConfig(stream=sys.stdout, level=logging.WARNING, format="app %(message)s")
        logging.getLogger("cms_outbox.daemon").setLevel(logging.INFO)
        Daemon(token={TOKEN!r}, rate_limit=None).run_forever()
    """
    out, err = run_daemon_script(
        code,
        sqlite_url,
        sandbox,
        tmp_path,
        until=lambda _: sandbox.accepted_count(event_id) == 1,
    )
    assert err == ""
    lines = out.splitlines()
    assert lines[0].startswith("app cms-outbox run: delivering from "), out
    assert all(line.startswith("app ") for line in lines), out
    assert lines[-1].startswith("app cms-outbox run: stopped after "), out


def test_a_daemon_in_an_application_that_logs_only_its_own_logger_adds_nothing_to_it(
    sqlite_url: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    """The application gave a handler to its own logger alone: the daemon's lines go to
    stderr on the ``cms_outbox`` logger, the application's lines are printed once, as
    its handler prints them, and the root logger and other libraries are left as they were."""
    [event_id] = enqueue(sqlite_url, 1)
    code = f"""
        import logging, sys
        from cms_outbox import Daemon
        app = logging.getLogger("myapp")
        app.addHandler(logging.StreamHandler(sys.stdout))
        app.setLevel(logging.INFO)
        app.info("app starting")
        daemon = Daemon(token={TOKEN!r}, rate_limit=None)
        app.info("app still here")
        daemon.run_forever()
        root = logging.getLogger()
        app.info("root handlers %d, urllib3 level %d", len(root.handlers),
                 logging.getLogger("urllib3").level)
    """
    out, err = run_daemon_script(
        code, sqlite_url, sandbox, tmp_path, until=lambda _: sandbox.accepted_count(event_id) == 1
    )
    assert out.splitlines() == [
        "app starting",
        "app still here",
        "root handlers 0, urllib3 level 0",
    ]
    lines = err.splitlines()
    assert re.search(r" INFO cms_outbox\.daemon: cms-outbox run: delivering from ", lines[0]), err
    assert all(" cms_outbox." in line for line in lines), err
