"""The examples' servers as their tests run them: on a loopback port, logged, always stopped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sysconfig
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TextIO

import pytest
import requests
from sqlalchemy import create_engine, text

from cms_outbox.sandbox import Sandbox
from tests.conftest import TOKEN, wait_until

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SCRIPTS = Path(sysconfig.get_path("scripts"))  # where pip put the cms-outbox command
STARTUP = 60.0  # seconds a server may take to accept connections (a loaded 2-core CI)
REQUEST_TIMEOUT = 60.0
DELIVERY = 60.0  # seconds for the sandbox to receive what was tracked, or one more of it


def accepted_at_least(sandbox: Sandbox, count: int, stall: float = DELIVERY) -> bool:
    """Whether the sandbox accepts ``count`` events, waited for as long as they keep
    coming: paced by the deliveries, a loaded machine takes longer but gives the same
    verdict; False once ``stall`` seconds pass without one more."""
    seen, since = len(sandbox.accepted), time.monotonic()
    while seen < count:
        time.sleep(0.01)
        now = len(sandbox.accepted)
        if now != seen:
            seen, since = now, time.monotonic()
        elif time.monotonic() - since >= stall:
            return False
    return True


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
