"""``cms-outbox sandbox`` and ``demo`` as their own processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.cli_runs import (
    STALL,
    cli,
)


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
