"""The examples, run for real: servers on loopback, driven over HTTP.

Each test starts the real server (Flask's, uvicorn, gunicorn, the ``cms-outbox run``
daemon) as a subprocess on a free loopback port, talks to it over HTTP and asserts
what the sandbox received. Every process is stopped in teardown, even on failure.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TextIO

import pytest
import requests
from sqlalchemy import create_engine, text

from cms_outbox.sandbox import Sandbox
from tests.conftest import TOKEN, wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SCRIPTS = Path(sysconfig.get_path("scripts"))  # where pip put the cms-outbox command
STARTUP = 60.0  # seconds a server may take to accept connections (a loaded 2-core CI)
REQUEST_TIMEOUT = 60.0
DELIVERY = 60.0  # seconds for the sandbox to receive what was tracked


class Server:
    """A server process with its output in a log file."""

    def __init__(
        self, args: list[str], env: dict[str, str], log_path: Path, cwd: Path = ROOT
    ) -> None:
        self.log_path = log_path
        self._log: TextIO = log_path.open("w")
        self.process = subprocess.Popen(
            args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,  # its own group: see close()
        )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, url: str, timeout: float = STARTUP) -> None:
        """Until ``url`` answers (any status); fails at once if the process died."""

        def answers() -> bool:
            assert self.process.poll() is None, f"server exited early:\n{self.log()}"
            try:
                requests.get(url, timeout=5)
            except requests.RequestException:
                return False
            return True

        assert wait_until(answers, timeout=timeout, step=0.1), f"not ready:\n{self.log()}"

    def stop(self, timeout: float = 40.0) -> int | None:
        """SIGTERM, then wait; SIGKILL (and None) when it does not stop in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
                return None
        return self.process.returncode

    def close(self) -> None:
        """Stop it, then kill what is left of its process group (e.g. a pre-fork server's
        workers when the master was killed)."""
        self.stop(timeout=10)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._log.close()


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers; every one is killed (if still running) after the test."""
    servers: list[Server] = []

    def start(name: str, args: list[str], env: dict[str, str], cwd: Path = ROOT) -> Server:
        server = Server(args, env, tmp_path / f"{name}-{len(servers)}.log", cwd)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def app_env(database_url: str, sandbox: Sandbox | None = None) -> dict[str, str]:
    """The environment the examples read; no token when there is no sandbox."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("CMS_")}
    env.update(CMS_OUTBOX_URL=database_url, CMS_RATE_LIMIT="0", PYTHONUNBUFFERED="1")
    env["PATH"] = f"{SCRIPTS}{os.pathsep}{env.get('PATH', '')}"
    if sandbox is not None:
        env.update(CMS_BEARER_TOKEN=TOKEN, CMS_HOST=sandbox.url)
    return env


def post_all(calls: list[tuple[str, dict[str, Any]]], threads: int) -> list[requests.Response]:
    """POST concurrently, one connection per request (so a pre-fork server spreads them)."""

    def post(call: tuple[str, dict[str, Any]]) -> requests.Response:
        url, body = call
        return requests.post(
            url, json=body, headers={"Connection": "close"}, timeout=REQUEST_TIMEOUT
        )

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(post, calls))


def count(database_url: str, sql: str) -> int:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(sql)).scalar_one())
    finally:
        engine.dispose()


def drop_users(database_url: str) -> None:
    """Forget a previous run's users (PostgreSQL); a SQLite file is new for every test."""
    if database_url.startswith("sqlite"):
        return  # and creating the file here would bypass the outbox's mode 0600
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS users"))
    finally:
        engine.dispose()


# -- Flask + SQLAlchemy: the transactional outbox -------------------------------------------


def test_flask_signup_stores_user_and_lead_together_or_neither(
    database_url: str, sandbox: Sandbox, launch: Callable[..., Server]
) -> None:
    drop_users(database_url)
    port = free_port()
    server = launch(
        "flask",
        [sys.executable, "-m", "flask", "--app", str(EXAMPLES / "flask_app.py"), "run",
         "--host", "127.0.0.1", "--port", str(port)],
        app_env(database_url, sandbox),
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    server.wait_ready(base)
    try:
        signups = [
            {"email": f"user{n}@example.com", "name": f"User {n}", "click_id": f"clk_{n}"}
            for n in range(6)
        ]
        created = post_all([(f"{base}/signup", body) for body in signups], threads=3)
        assert [r.status_code for r in created] == [201] * 6, server.log()
        duplicate = requests.post(
            f"{base}/signup",
            json={"email": "user0@example.com", "name": "Again"},
            timeout=REQUEST_TIMEOUT,
        )
        assert duplicate.status_code == 409
        invalid = requests.post(  # the lead fails validation: the user is not created either
            f"{base}/signup",
            json={"email": "bad@example.com", "click_id": 123},
            timeout=REQUEST_TIMEOUT,
        )
        assert invalid.status_code == 422 and invalid.json()["field"] == "click_id"
        no_email = requests.post(f"{base}/signup", json={"name": "X"}, timeout=REQUEST_TIMEOUT)
        assert no_email.status_code == 400, no_email.text
        assert no_email.json() == {"error": "email is required (a non-empty string)",
                                   "field": "email"}  # fmt: skip
        not_json = requests.post(f"{base}/signup", data="email=x", timeout=REQUEST_TIMEOUT)
        assert not_json.status_code == 400 and "JSON object" in not_json.json()["error"]
        organic = requests.post(  # no click to attribute: the user, and no lead to lose
            f"{base}/signup", json={"email": "organic@example.com"}, timeout=REQUEST_TIMEOUT
        )
        assert organic.status_code == 201, organic.text
        assert organic.json()["tracked"] is False and organic.json()["event_id"] is None

        users = {r.json()["event_id"]: r.json()["user_id"] for r in created}
        assert sandbox.wait_for(lambda sb: len(sb.accepted) >= 6, timeout=DELIVERY), server.log()
        assert all(sandbox.accepted_count(event_id) == 1 for event_id in users)
        assert len(sandbox.accepted) == 6
        assert sorted(a.customer_external_id for a in sandbox.accepted) == sorted(users.values())
        emails = sorted(a.payload["customerEmail"] for a in sandbox.accepted)
        assert emails == sorted(body["email"] for body in signups)

        assert count(database_url, "SELECT count(*) FROM users") == 7
        assert count(database_url, "SELECT count(*) FROM users WHERE name = 'Again'") == 0
        assert count(database_url, "SELECT count(*) FROM cms_outbox_events") == 6
        dead = "SELECT count(*) FROM cms_outbox_events WHERE state = 'dead'"
        assert count(database_url, dead) == 0
        assert "Traceback" not in server.log() and "KeyError" not in server.log()
    finally:
        server.stop()
        drop_users(database_url)


# -- FastAPI under uvicorn -------------------------------------------------------------------


def test_fastapi_concurrent_requests_each_delivered_once(
    sqlite_url: str, sandbox: Sandbox, launch: Callable[..., Server]
) -> None:
    port = free_port()
    server = launch(
        "uvicorn",
        [sys.executable, "-m", "uvicorn", "--app-dir", str(EXAMPLES), "fastapi_app:app",
         "--host", "127.0.0.1", "--port", str(port)],
        app_env(sqlite_url, sandbox),
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    server.wait_ready(base)
    calls: list[tuple[str, dict[str, Any]]] = []
    for n in range(60):
        customer = {"customer_id": f"user_{n}", "click_id": f"clk_{n}"}
        calls.append((f"{base}/signups", {**customer, "email": f"user{n}@example.com"}))
        purchase = {**customer, "invoice_id": f"inv_{n}", "amount": 4999, "currency": "USD"}
        calls.append((f"{base}/purchases", purchase))
    responses = post_all(calls, threads=16)
    assert [r.status_code for r in responses] == [200] * 120, server.log()
    event_ids = [r.json()["event_id"] for r in responses]
    assert len(set(event_ids)) == 120

    invalid = requests.post(
        f"{base}/purchases",
        json={"customer_id": "u", "click_id": "c", "invoice_id": "inv_x", "amount": 1,
              "currency": "dollars"},
        timeout=REQUEST_TIMEOUT,
    )  # fmt: skip
    assert invalid.status_code == 422 and invalid.json()["field"] == "currency"

    assert sandbox.wait_for(lambda sb: len(sb.accepted) >= 120, timeout=DELIVERY), server.log()
    assert all(sandbox.accepted_count(event_id) == 1 for event_id in event_ids)
    assert len(sandbox.accepted) == 120
    assert Counter(a.kind for a in sandbox.accepted) == {"lead": 60, "sale": 60}
    # uvicorn shuts down gracefully (the lifespan closes the client), then re-raises SIGTERM.
    assert server.stop() in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in server.log(), server.log()


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
    assert sandbox.wait_for(lambda sb: len(sb.accepted) >= 200, timeout=DELIVERY), server.log()
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

    assert sandbox.wait_for(lambda sb: len(sb.accepted) >= 40, timeout=DELIVERY), daemon.log()
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
