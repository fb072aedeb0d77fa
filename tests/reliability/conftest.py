"""Fixtures of the reliability suite: real processes (always killed at teardown), the
sandbox on loopback with a seeded RNG, and plain-``sqlite3`` views of the outbox file that
do not go through the store under test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import IO, Any, Callable

import pytest

from cms_outbox.sandbox import Sandbox
from tests.conftest import TOKEN

PROGRAMS = Path(__file__).with_name("programs.py")


def child_env() -> dict[str, str]:
    """The environment of every process we start: no developer settings, our token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMS_")}
    env["CMS_BEARER_TOKEN"] = TOKEN
    env["PYTHONUNBUFFERED"] = "1"
    return env


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie counts as gone: it runs no more code)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; fail the test with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.01)


def wait_while_progressing(
    done: Callable[[], bool], progress: Callable[[], object], what: str, stall: float = 120.0
) -> None:
    """Wait until ``done()``; fail only once ``progress()`` has not changed for ``stall`` s.

    Paced by progress, not by the clock: a slow or loaded machine takes longer but gives
    the same verdict, while a real hang still fails.
    """
    last = progress()
    changed = time.monotonic()
    while not done():
        time.sleep(0.05)
        now = progress()
        if now != last:
            last, changed = now, time.monotonic()
        elif time.monotonic() - changed >= stall:
            pytest.fail(f"no progress for {stall:.0f}s waiting for {what}: {last}")


def wait_for_drain(
    counts: Callable[[], dict[str, int]], total: int, what: str, stall: float = 120.0
) -> None:
    """Wait until ``counts()`` shows ``total`` delivered events and nothing else, for as
    long as the counts keep changing (``wait_while_progressing``)."""
    wait_while_progressing(lambda: counts() == {"delivered": total}, counts, what, stall)


class Child:
    """A process forked by the launcher; its stdout and stderr go to ``output``."""

    def __init__(self, pid: int, output: Path) -> None:
        self.pid = pid
        self.output = output

    def lines(self) -> list[str]:
        try:
            text = self.output.read_text(errors="replace")
        except FileNotFoundError:
            return []
        # A line counts only once its newline is written: a kill can cut the last one.
        return text.split("\n")[:-1]

    def wait_for_line(self, prefix: str, timeout: float = 60.0) -> str:
        found: list[str] = []

        def seen() -> bool:
            found.extend(line for line in self.lines() if line.startswith(prefix))
            if not found and gone(self.pid):
                pytest.fail(f"process {self.pid} died before {prefix!r}:\n{self.tail()}")
            return bool(found)

        wait_for(seen, timeout, f"{prefix!r} from process {self.pid}")
        return found[0]

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 30.0) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return
        wait_for(lambda: gone(self.pid), timeout, f"process {self.pid} to exit")

    @property
    def alive(self) -> bool:
        return not gone(self.pid)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.lines()[-lines:])


def parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


class LauncherProcess:
    """``programs.py launcher`` in its own session; one for the whole test session."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(PROGRAMS), "launcher"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
            start_new_session=True,  # the launcher and its children form one process group
        )
        first = self._answer()
        assert first.startswith("launcher "), first

    def _answer(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the launcher exited with {self.process.wait()}")
        return line.strip()

    def fork(self, command: dict[str, Any]) -> int:
        stdin: IO[str] | None = self.process.stdin
        assert stdin is not None
        stdin.write(json.dumps(command) + "\n")
        stdin.flush()
        return int(self._answer())

    def close(self) -> None:
        """SIGKILL the launcher's whole process group: every child it ever forked."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


class Launcher:
    """Starts ``Child`` processes for one test; kills those still running at its end."""

    def __init__(self, process: LauncherProcess, workdir: Path) -> None:
        self.launcher = process
        self.workdir = workdir
        self.children: list[Child] = []

    def start(self, program: str, name: str, **args: Any) -> Child:
        output = self.workdir / f"{name}.out"
        pid = self.launcher.fork({"program": program, "args": args, "stdout": str(output)})
        child = Child(pid, output)
        self.children.append(child)
        return child

    def close(self) -> None:
        for child in self.children:
            # Only our own child: its parent is the launcher (a reaped pid could be reused).
            if not gone(child.pid) and parent_of(child.pid) == self.launcher.process.pid:
                child.kill()


class Processes:
    """Plain subprocesses in their own sessions; whatever still runs is killed at teardown."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []

    def spawn(
        self, argv: list[str], name: str, lifetime: float = 600.0
    ) -> tuple[subprocess.Popen[bytes], Path]:
        """Start ``argv``; coreutils' ``timeout`` ends it after ``lifetime`` seconds even if
        this test run dies without its teardown (a daemon must not outlive CI)."""
        if shutil.which("timeout"):
            argv = ["timeout", "--kill-after=10", str(lifetime), *argv]
        output = self.workdir / f"{name}.out"
        stream = output.open("wb")
        process = subprocess.Popen(
            argv,
            stdout=stream,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(),
            start_new_session=True,
        )
        self.started.append((process, stream))
        return process, output

    def program(self, program: str, name: str, **args: Any) -> tuple[subprocess.Popen[bytes], Path]:
        return self.spawn([sys.executable, str(PROGRAMS), program, json.dumps(args)], name)

    def close(self) -> None:
        for process, stream in self.started:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            process.wait()
            stream.close()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def launcher_process() -> Iterator[LauncherProcess]:
    if not sys.platform.startswith("linux"):
        pytest.skip("the launcher forks and watches its children through /proc: Linux only")
    process = LauncherProcess()
    try:
        yield process
    finally:
        process.close()


@pytest.fixture
def launcher(launcher_process: LauncherProcess, workdir: Path) -> Iterator[Launcher]:
    started = Launcher(launcher_process, workdir)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def processes(workdir: Path) -> Iterator[Processes]:
    registry = Processes(workdir)
    try:
        yield registry
    finally:
        registry.close()


@pytest.fixture
def make_sandbox() -> Iterator[Callable[..., Sandbox]]:
    """Start sandboxes (our token, seeded RNG) on loopback; all stopped at teardown."""
    started: list[Sandbox] = []

    def make(**options: Any) -> Sandbox:
        options.setdefault("token", TOKEN)
        server = Sandbox(**options).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


# -- the outbox file, read with plain sqlite3 -------------------------------------------


def query(path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path, timeout=30)) as conn:
        return conn.execute(sql, params).fetchall()


def states(path: Path) -> dict[str, int]:
    """How many events are in each state."""
    rows = query(path, "SELECT state, count(*) FROM cms_outbox_events GROUP BY state")
    return {str(state): int(count) for state, count in rows}


def integrity(path: Path) -> str:
    return ", ".join(str(row[0]) for row in query(path, "PRAGMA integrity_check"))
