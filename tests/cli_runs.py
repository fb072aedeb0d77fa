"""Running ``cms-outbox`` in tests: a subprocess with a clean environment, or ``main()``
in this process; a migrated outbox and clients that seed and deliver it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any, Callable

import pytest

from cms_outbox import CMSClient
from cms_outbox.cli import main
from cms_outbox.sandbox import Sandbox
from tests.conftest import TOKEN


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
