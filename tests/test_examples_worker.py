"""The worker example only enqueues, beside the daemon that delivers, and runs as documented."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest

from cms_outbox.sandbox import Sandbox
from tests.example_servers import (
    EXAMPLES,
    ROOT,
    SCRIPTS,
    Server,
    accepted_at_least,
    app_env,
    count,
    launch,
)

__all__ = ["launch"]  # the fixture: pytest finds it here

pytestmark = pytest.mark.slow


# -- a worker that only enqueues, beside one daemon --------------------------------------------


def test_worker_enqueues_without_token_and_the_daemon_delivers(
    sqlite_url: str, sandbox: Sandbox, launch: Callable[..., Server]
) -> None:
    daemon = launch(
        "daemon",
        [str(SCRIPTS / "cms-outbox"), "run", "--rate-limit", "0", "--interval", "0.2"],
        app_env(sqlite_url, sandbox),
    )
    orders = [
        {"customer_id": f"user_{n % 10}", "click_id": f"clk_{n}", "invoice_id": f"inv_{n}",
         "amount": 100 + n, "currency": "EUR"}
        for n in range(40)
    ]  # fmt: skip
    orders.append({"customer_id": "user_x", "invoice_id": "inv_bad", "amount": 9.99,
                   "currency": "EUR"})  # fmt: skip
    worker_env = app_env(sqlite_url)  # no token, no host: it only enqueues
    assert "CMS_BEARER_TOKEN" not in worker_env
    worker = subprocess.run(
        [sys.executable, str(EXAMPLES / "worker.py")],
        input="".join(json.dumps(order) + "\n" for order in orders),
        env=worker_env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert worker.returncode == 0, worker.stderr
    assert "sales stored for delivery: 40, orders rejected: 1" in worker.stderr
    assert "inv_bad rejected" in worker.stderr
    assert worker.stderr.count("\n") == 2, worker.stderr  # no library chatter at INFO

    assert accepted_at_least(sandbox, 40), daemon.log()
    assert len(sandbox.accepted) == 40
    invoices = Counter(a.payload["invoiceId"] for a in sandbox.accepted)
    assert invoices == Counter(f"inv_{n}" for n in range(40))
    assert daemon.stop(timeout=30) == 0, daemon.log()
    assert "cms-outbox run: stopped" in daemon.log()


def test_worker_as_its_docstring_runs_it_with_an_order_over_two_lines(tmp_path: Path) -> None:
    doc = (EXAMPLES / "worker.py").read_text()
    command = re.search(r"\n    (echo '\{.*?python examples/worker\.py)\n", doc, re.S)
    assert command is not None, "the documented command is gone from the docstring"
    assert "\n" in command.group(1).split("' ")[0]  # the JSON spans lines, as documented
    shell = command.group(1).replace("python examples/worker.py",
                                     f"{sys.executable} {EXAMPLES / 'worker.py'}")  # fmt: skip
    env = {name: value for name, value in os.environ.items() if not name.startswith("CMS_")}
    ran = subprocess.run(
        ["sh", "-c", shell], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr == "worker: sales stored for delivery: 1, orders rejected: 0\n"
    url = f"sqlite:///{tmp_path / 'app.db'}"  # the documented relative sqlite:///app.db
    assert count(url, "SELECT count(*) FROM cms_outbox_events WHERE invoice_id = 'inv_1'") == 1

    broken = subprocess.run(
        [sys.executable, str(EXAMPLES / "worker.py")],
        input='{"customer_id": "a", "invoice_id": "inv_2", "amount": 1, "currency": "USD"}\n'
        '{"customer_id": "b"}\n{"customer_id": \n',
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert broken.returncode == 1
    assert broken.stderr.splitlines() == [
        "worker: order on line 2 rejected: missing invoice_id, amount, currency",
        "worker: stopped reading: line 4: not valid JSON (Expecting value)",
        "worker: sales stored for delivery: 1, orders rejected: 1",
    ]
