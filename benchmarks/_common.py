"""Shared helpers of the benchmark scripts: arguments, output, a sandbox in its own
process, ``cms-outbox`` daemons and a throwaway PostgreSQL database.

Every script measures ``cms_outbox`` beside its alternatives in the same run, prints a
readable table, then one final line of JSON (what CI and the README read).
"""

from __future__ import annotations

import argparse
import atexit
import json
import multiprocessing
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from cms_outbox import CMSClient
from cms_outbox.events import build_lead

TOKEN = "bench-token-0123456789"
HEADERS = {
    "Authorization": f"Bearer {TOKEN}",
    "Content-Type": "application/json",
    "Accept": "application/json",
}


def parse_args(description: str) -> argparse.Namespace:
    return arguments(description).parse_args()


def arguments(description: str, *, server: str | None = None) -> argparse.ArgumentParser:
    """``--quick``, and with ``server`` (what it is for) ``--database-url`` of a PostgreSQL
    server, by default env ``CMS_OUTBOX_TEST_POSTGRES_URL``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI")
    if server is not None:
        parser.add_argument(
            "--database-url",
            default=os.environ.get("CMS_OUTBOX_TEST_POSTGRES_URL"),
            help=f"{server} (default: env CMS_OUTBOX_TEST_POSTGRES_URL)",
        )
    return parser


def lead(i: int, customers: int = 1000) -> dict[str, str]:
    """Keyword arguments of a typical lead (its outbox row is about 400 bytes)."""
    return {
        "event_name": "signup_completed",
        "customer_external_id": f"customer_{i % customers:06d}",
        "click_id": f"click_{i:09d}_0123456789abcdef",
        "customer_name": f"Customer Number {i}",
        "customer_email": f"customer.{i}@example.com",
    }


def wire(i: int, customers: int = 1000) -> bytes:
    """The JSON body our client would send for ``lead(i)``, for the raw-HTTP baselines."""
    kwargs = lead(i, customers)
    body = {
        "clickId": kwargs["click_id"],
        "eventName": kwargs["event_name"],
        "customerExternalId": kwargs["customer_external_id"],
        "timestamp": "2025-01-01T00:00:00.000000Z",
        "customerName": kwargs["customer_name"],
        "customerEmail": kwargs["customer_email"],
    }
    return json.dumps(body, separators=(",", ":")).encode()


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, round(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 3) if denominator else float("nan")


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(str(h)), *(len(row[i]) for row in cells)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(value.rjust(w) if i else value.ljust(w)
                        for i, (value, w) in enumerate(zip(row, widths))))  # fmt: skip


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
}


def target(name: str, value: float, op: str, limit: float) -> dict[str, Any]:
    """One target of the JSON (value, limit, met), also printed as a line."""
    met = OPERATORS[op](value, limit)
    print(f"target {name}: {value:.3f} (want {op} {limit}): {'met' if met else 'MISSED'}")
    return {"value": round(value, 3), "want": f"{op} {limit}", "met": met}


def emit(result: dict[str, Any]) -> None:
    """The last stdout line: the whole result as JSON, with the machine's load average
    (other work on the machine moves every absolute figure; ratios suffer less)."""
    load = [round(value, 2) for value in os.getloadavg()]
    print(f"load average (1, 5, 15 min): {load}")
    print(json.dumps({**result, "loadavg": load}, sort_keys=True), flush=True)


# -- outboxes ----------------------------------------------------------------------
# Alembic's upgrade of a new outbox takes about a second; an outbox is a copy of one
# migrated once per process instead (the same file a new client would have made).

_migrated: list[Path] = []


def migrated_outbox(path: Path) -> str:
    """An empty SQLite outbox at the schema head at ``path``; returns its URL."""
    if not _migrated:
        directory = Path(tempfile.mkdtemp(prefix="cms-bench-"))
        atexit.register(shutil.rmtree, directory, True)
        template = directory / "outbox.db"
        CMSClient(database_url=f"sqlite:///{template}", flush="off").close()
        with sqlite3.connect(template) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # all in the file, no -wal
        _migrated.append(template)
    shutil.copy(_migrated[0], path)
    return f"sqlite:///{path}"


# -- a sandbox in its own process ----------------------------------------------------
# The real service runs elsewhere: a sandbox in the benchmark's process would compete
# with the client for the GIL and distort every ratio.


class RemoteSandbox:
    """A ``cms_outbox.sandbox.Sandbox`` served by a child process on 127.0.0.1.

    ``call(name, ...)`` runs a ``Sandbox`` method (or reads an attribute) over a pipe.
    """

    def __init__(self, pipe: Connection, url: str) -> None:
        self._pipe = pipe
        self.url = url

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self._pipe.send((name, args, kwargs))
        ok, value = self._pipe.recv()
        if not ok:
            raise RuntimeError(f"sandbox {name} failed: {value}")
        return value

    def summary(self) -> dict[str, Any]:
        """Counts only (cheap to send): accepted, requests, distinct keys, statuses."""
        return self.call("_summary")  # type: ignore[no-any-return]


@contextmanager
def remote_sandbox(**options: Any) -> Iterator[RemoteSandbox]:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve, args=(child, options), daemon=True)
    process.start()
    url = parent.recv()
    try:
        yield RemoteSandbox(parent, url)
    finally:
        parent.send(None)
        process.join(10)
        if process.is_alive():
            process.terminate()


def _serve(pipe: Connection, options: dict[str, Any]) -> None:
    from collections import Counter

    from cms_outbox.sandbox import Sandbox

    options.setdefault("token", TOKEN)
    with Sandbox(host="127.0.0.1", **options) as sandbox:
        pipe.send(sandbox.url)
        while True:
            message = pipe.recv()
            if message is None:
                return
            name, args, kwargs = message
            try:
                if name == "_summary":
                    accepted, requests = sandbox.accepted, sandbox.requests
                    value: Any = {
                        "accepted": len(accepted),
                        "requests": len(requests),
                        "keys": len({a.idempotency_key for a in accepted}),
                        "customers": len({a.customer_external_id for a in accepted}),
                        "statuses": dict(Counter(str(r.status) for r in requests)),
                    }
                else:
                    value = getattr(sandbox, name)
                    if callable(value):
                        value = value(*args, **kwargs)
                pipe.send((True, value))
            except Exception as exc:  # reported to the caller, which raises
                pipe.send((False, repr(exc)))


def wait_until(predicate: Any, timeout: float, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True


# -- processes of the command line: the sandbox and daemons ----------------------------


@contextmanager
def sandbox_process(*options: str) -> Iterator[str]:
    """``cms-outbox sandbox`` with these command-line ``options`` in its own process;
    yields its URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cms_outbox", "sandbox", "--port", "0", "--token", TOKEN,
         *options],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        match = re.search(r"listening on (\S+)", process.stdout.readline())
        assert match is not None, "the sandbox did not start"
        yield match.group(1)
    finally:
        process.terminate()
        process.wait(30)
        if process.stdout is not None:
            process.stdout.close()


def admin(url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """A sandbox's ``/_admin/<path>``: GET without ``body``, POST with it."""
    method = "GET" if body is None else "POST"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}/_admin/{path}", data=data, method=method)
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


class DaemonProcess:
    """``cms-outbox run`` on ``database_url`` against ``host`` with ``options``, its stderr
    (the operator's log) in ``log_path``."""

    def __init__(
        self,
        database_url: str,
        host: str,
        log_path: Path,
        options: Sequence[str],
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.log_path = log_path
        self._log: IO[str] = log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cms_outbox", "run", "--database-url", database_url,
             "--host", host, *options],
            env={**os.environ, "CMS_BEARER_TOKEN": TOKEN, **(env or {})},
            stdout=subprocess.DEVNULL, stderr=self._log,
        )  # fmt: skip

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> str:
        """SIGTERM, wait; returns its log."""
        self.terminate()
        self.process.wait(60)
        self._log.close()
        return self.log_path.read_text()


# -- an outbox of the benchmark's own on a PostgreSQL server --------------------------


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A database of the benchmark's own on the server, dropped afterwards; yields its URL."""
    name = f"cms_outbox_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin_engine = create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin_engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin_engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin_engine.dispose()


def backlog_rows(count: int, customers: int) -> list[dict[str, Any]]:
    """``count`` leads built by ``build_lead`` exactly as ``track_lead`` stores them."""
    now = datetime.now(timezone.utc)
    rows = []
    for n in range(count):
        event = build_lead(
            "signup_completed", f"customer_{n % customers:05d}", click_id=f"click_{n:08d}",
            customer_email=f"customer.{n}@example.com", now=now,
        )  # fmt: skip
        rows.append({**event._asdict(), "state": "pending", "attempts": 0,
                     "next_attempt_at": event.created_at})  # fmt: skip
    return rows
