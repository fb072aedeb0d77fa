"""A SQLite outbox path that cannot work is refused with its cause and its path, before
SQLite turns it into "unable to open database file" or a first write fails; and one rule
for missing directories, the same for ``CMSClient``, every command and the container
entrypoint: an error with its own exit code (5) unless creation is asked for."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Callable

import pytest

from cms_outbox import CMSClient, DirectoryNotFound, StorageError
from cms_outbox.cli import main
from cms_outbox.sandbox import Sandbox
from tests.conftest import TOKEN, wait_until

EXIT_USAGE = 2
EXIT_STORAGE = 3
EXIT_NO_DIRECTORY = 5
REPO = Path(__file__).resolve().parent.parent


def test_a_missing_directory_is_an_error_naming_it_and_nothing_is_created(
    tmp_path: Path,
) -> None:
    path = tmp_path / "volume" / "data" / "outbox.db"
    with pytest.raises(DirectoryNotFound) as raised:
        CMSClient(database_url=f"sqlite:///{path}", flush="off")
    assert isinstance(raised.value, StorageError)
    assert str(raised.value).startswith(
        f"the directory of the outbox {path} does not exist ({tmp_path / 'volume'} is missing)"
    )
    assert not (tmp_path / "volume").exists()


def test_creating_the_directory_is_asked_for_explicitly(tmp_path: Path) -> None:
    path = tmp_path / "volume" / "data" / "outbox.db"
    url = f"sqlite:///{path}"
    with CMSClient(database_url=url, flush="off", create_directories=True) as client:
        client.track_lead("signup", "user_1", click_id="c")
    assert path.is_file() and (path.stat().st_mode & 0o777) == 0o600


def test_a_directory_given_as_the_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=f"{tmp_path} is a directory, not a SQLite file"):
        CMSClient(database_url=f"sqlite:///{tmp_path}", flush="off")


def test_a_file_that_is_not_a_database_is_named(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text("order_id,total\n1,4999\n")
    with pytest.raises(StorageError, match=f"the outbox {path} is not a SQLite database"):
        CMSClient(database_url=f"sqlite:///{path}", flush="off")
    assert path.read_text() == "order_id,total\n1,4999\n"


def test_a_file_inside_a_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    path = tmp_path / "plain" / "sub" / "outbox.db"
    with pytest.raises(StorageError, match=f"{tmp_path / 'plain'} is a file"):
        CMSClient(database_url=f"sqlite:///{path}", flush="off")


# -- every command, and the entrypoint --------------------------------------------------

COMMANDS = [
    ["migrate"],
    ["status"],
    ["status", "--json"],
    ["health"],
    ["events"],
    ["show", "abc"],
    ["retry", "--dead"],
    ["purge", "--dry-run"],
    ["flush"],
    ["run"],
    ["ui"],
]
CREATING = ("migrate", "run")  # the commands that may create an outbox


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_exits_5_on_a_missing_directory_and_creates_nothing(
    command: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CMS_BEARER_TOKEN", TOKEN)
    path = tmp_path / "mistyped" / "outbox.db"
    code = main([*command, "--database-url", f"sqlite:///{path}"])
    assert code == EXIT_NO_DIRECTORY
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{tmp_path / 'mistyped'} is missing" in err[0], err
    if command[0] not in CREATING:  # it says which command creates, and calls none a reader
        assert (
            "nothing creates an outbox here: `cms-outbox migrate --create-directories` does"
            in err[0]
        ), err
    else:  # it offers its own flag: `run` pointed at `migrate` and at CMSClient alone
        assert "--create-directories on `cms-outbox migrate` and `cms-outbox run`" in err[0], err
    assert "reader" not in err[0], err
    assert not (tmp_path / "mistyped").exists()


@pytest.mark.parametrize(
    "command", [c for c in COMMANDS if c[0] not in ("migrate", "run")], ids=" ".join
)
def test_every_command_but_migrate_and_run_refuses_a_missing_file_and_creates_nothing(
    command: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Run in the wrong directory, a command must not report an empty new outbox.
    monkeypatch.setenv("CMS_BEARER_TOKEN", TOKEN)
    path = tmp_path / "outbox.db"
    code = main([*command, "--database-url", f"sqlite:///{path}"])
    assert code == EXIT_STORAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"no outbox database at {path}" in err[0], err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["status"], ["events"], ["health"], ["ui"]], ids=" ".join)
def test_a_reader_given_create_directories_says_which_command_creates(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "new" / "outbox.db"
    url = f"sqlite:///{path}"
    assert main([*command, "--create-directories", "--database-url", url]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "an option of `migrate` and `run` only" in err, err
    assert "`cms-outbox migrate --create-directories`" in err, err
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    ("command", "offered"),
    [("migrate", True), ("run", True)]
    + [(name, False) for name in ("status", "events", "show", "health", "retry", "purge")]
    + [(name, False) for name in ("flush", "ui", "demo", "sandbox")],
)
def test_only_the_commands_that_create_an_outbox_offer_create_directories(
    command: str, offered: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """status --help said the flag creates missing directories; status never creates."""
    assert main([command, "--help"]) == 0
    assert ("--create-directories" in capsys.readouterr().out) is offered


def test_migrate_creates_the_directories_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "new" / "outbox.db"
    assert main(["migrate", "--create-directories", "--database-url", f"sqlite:///{path}"]) == 0
    assert path.is_file()
    assert main(["status", "--database-url", f"sqlite:///{path}"]) == 0


def test_the_container_entrypoint_refuses_a_missing_volume_directory(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMS_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.update(CMS_BEARER_TOKEN=TOKEN, CMS_OUTBOX_URL=f"sqlite:///{tmp_path}/nonexistent/x.db")
    done = subprocess.run(
        ["sh", str(REPO / "deploy" / "docker-entrypoint.sh")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == EXIT_NO_DIRECTORY, done.stderr
    assert "nonexistent is missing" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "nonexistent").exists()


def daemons_beating(path: Path) -> bool:
    """`cms-outbox run` has made its first pass on ``path`` (its heartbeat row)."""
    if not path.exists():
        return False
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            return bool(conn.execute("SELECT count(*) FROM cms_outbox_flushers").fetchone()[0])
    except sqlite3.OperationalError:  # not migrated yet
        return False


def test_the_container_entrypoint_passes_create_directories_to_migrate_and_run(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """The documented way to have a volume's directory created: both commands take it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMS_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    path = tmp_path / "volume" / "outbox.db"
    env.update(CMS_BEARER_TOKEN=TOKEN, CMS_HOST=sandbox.url, CMS_OUTBOX_URL=f"sqlite:///{path}")
    process = subprocess.Popen(
        ["sh", str(REPO / "deploy" / "docker-entrypoint.sh"), "--create-directories"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert wait_until(lambda: daemons_beating(path))
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "upgraded from none" in out and "Traceback" not in err


# -- permissions ----------------------------------------------------------------------------


@pytest.fixture
def read_only_mount(tmpfs: Callable[..., Path]) -> Path:
    """A tmpfs holding an outbox, remounted read-only: refused even for root."""
    mountpoint = tmpfs("ro", size="4m")
    CMSClient(database_url=f"sqlite:///{mountpoint / 'outbox.db'}", flush="off").close()
    subprocess.run(["mount", "-o", "remount,ro", str(mountpoint)], check=True)
    return mountpoint


def test_a_read_only_outbox_is_refused_at_construction_for_a_writing_client(
    read_only_mount: Path,
) -> None:
    path = read_only_mount / "outbox.db"
    with pytest.raises(StorageError) as raised:
        CMSClient(database_url=f"sqlite:///{path}", flush="off")
    assert str(raised.value).startswith(f"the outbox {path} is read-only for this process")


def test_an_unreadable_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root reads any file, so the permission answer is what this test sets."""
    path = tmp_path / "outbox.db"
    CMSClient(database_url=f"sqlite:///{path}", flush="off").close()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if str(p) == str(path) else real_access(p, mode)
    )
    with pytest.raises(StorageError, match="cannot be read by this process"):
        CMSClient(database_url=f"sqlite:///{path}", flush="off")
