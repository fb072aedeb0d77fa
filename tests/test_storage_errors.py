"""Storage failures in plain words: what happened and what to do, never the driver's text.

Each failure is real (a held write lock, a file that is not a database, a server that is
not there); the driver's error stays chained as ``__cause__`` for debugging.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from cms_outbox import CMSClient, StorageError, database
from cms_outbox.cli import main
from cms_outbox.driver_errors import describe

DRIVER_WORDS = ("sqlite3", "sqlalchemy", "psycopg.", "OperationalError", "[SQL", "Traceback")


def assert_plain(text: str) -> None:
    for word in DRIVER_WORDS:
        assert word.lower() not in text.lower(), text


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    assert_plain(captured.out + captured.err)
    return code, captured.err


@pytest.fixture
def locked(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A migrated outbox whose write lock another connection holds (a short busy timeout)."""
    CMSClient(database_url=sqlite_url, flush="off").close()
    monkeypatch.setattr(database, "BUSY_TIMEOUT", 0.3)
    writer = sqlite3.connect(str(make_url(sqlite_url).database), isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    yield sqlite_url
    writer.rollback()
    writer.close()


def test_a_write_behind_a_held_lock_names_the_writer_the_timeout_and_the_remedy(
    locked: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_cli(capsys, "retry", "--dead", "--database-url", locked)
    assert code == 3
    line = err.strip()
    assert line.startswith("cms-outbox: error: retrying events failed: ")
    assert "locked by another writer" in line
    assert "an application transaction" in line
    assert "busy timeout of 0.3 s ran out" in line
    assert "commit or roll back long transactions" in line


def test_the_library_raises_the_same_words_with_the_driver_error_chained(locked: str) -> None:
    with CMSClient(database_url=locked, flush="off") as client:
        with pytest.raises(StorageError) as caught:
            client.track_lead("signup", "user_1", click_id="clk_1")
        with pytest.raises(StorageError) as retried:
            client.retry(dead=True)
    message = str(caught.value)
    assert message.startswith("storing the event failed: the SQLite outbox is locked")
    assert_plain(message)
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    assert "locked" in str(caught.value.__cause__)  # the driver's own words, for debugging
    assert isinstance(retried.value.__cause__, SQLAlchemyError)
    assert_plain(str(retried.value))


def test_a_file_that_is_not_a_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database\n" * 200)
    code, err = run_cli(capsys, "status", "--database-url", f"sqlite:///{path}")
    assert code == 3
    assert "not a SQLite database" in err


def test_a_database_server_that_is_not_there(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("psycopg")
    url = "postgresql+psycopg://postgres@127.0.0.1:9/outbox?connect_timeout=5"
    code, err = run_cli(capsys, "events", "--database-url", url)
    assert code == 3
    assert "cannot connect to the database server" in err


def test_the_process_prints_one_plain_line(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"\x00not sqlite\x00" * 512)
    result = subprocess.run(
        [sys.executable, "-m", "cms_outbox", "health", "--database-url", f"sqlite:///{path}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert_plain(result.stderr)


CASES: list[tuple[Any, str]] = [
    (sqlite3.OperationalError("database is locked"), "locked by another writer"),
    (sqlite3.OperationalError("no such table: cms_outbox_events"), "run `cms-outbox migrate`"),
    (sqlite3.OperationalError("attempt to write a readonly database"), "read-only"),
    (sqlite3.OperationalError("unable to open database file"), "cannot open the database"),
    (sqlite3.DatabaseError("database disk image is malformed"), "damaged"),
    (sqlite3.OperationalError("database or disk is full"), "is full"),
    (sqlite3.OperationalError("something new"), "unexpected error (OperationalError"),
]


@pytest.mark.parametrize(("error", "words"), CASES, ids=[str(case[0]) for case in CASES])
def test_each_sqlite_failure_has_its_own_words(error: Exception, words: str) -> None:
    text = describe(error)
    assert words in text
    assert str(error) not in text
