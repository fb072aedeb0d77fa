"""Group commit (``cms_outbox.group_commit``): concurrent enqueues share a transaction.

A transaction held open by another connection makes callers pile up behind the
first one, so the batches formed are known; the rows land in a real SQLite file.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from cms_outbox import CMSClient
from cms_outbox.group_commit import GroupCommit
from cms_outbox.write_lock import WriteLock
from tests.conftest import wait_until

SQL = "INSERT INTO t (v) VALUES (?) ON CONFLICT(v) DO NOTHING RETURNING v"
PLAIN_SQL = "INSERT INTO t (v) VALUES (?) ON CONFLICT(v) DO NOTHING"


class Recorded:
    """Opens autocommit WAL connections to ``path`` and records the statements they run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.statements: list[str] = []
        with self.open() as conn:
            conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE)")

    def open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA busy_timeout = 30000")
        return conn

    def connect(self) -> sqlite3.Connection:
        conn = self.open()
        conn.set_trace_callback(self.statements.append)
        return conn

    def values(self) -> list[str]:
        with self.open() as conn:
            return [row[0] for row in conn.execute("SELECT v FROM t ORDER BY id")]


@pytest.fixture
def db(tmp_path: Path) -> Recorded:
    return Recorded(tmp_path / "group.db")


@pytest.fixture
def group(db: Recorded) -> Iterator[GroupCommit]:
    group = GroupCommit(db.connect)
    yield group
    group.close()


def behind_a_writer(
    db: Recorded, group: GroupCommit, values: list[Any], *, returning: bool = True
) -> list[tuple[Any, ...] | None | BaseException]:
    """Insert ``values`` from one thread each while another connection holds the write
    lock: the first caller waits inside its INSERT, the others queue behind it.

    :param returning: run ``SQL``, else ``PLAIN_SQL`` (the same without RETURNING).
    """
    sql = SQL if returning else PLAIN_SQL
    blocker = db.open()
    blocker.execute("BEGIN IMMEDIATE")
    results: list[tuple[Any, ...] | None | BaseException] = [None] * len(values)

    def insert(n: int) -> None:
        try:
            results[n] = group.insert(sql, (values[n],), returning=returning)
        except sqlite3.Error as exc:
            results[n] = exc

    threads = [threading.Thread(target=insert, args=(0,))]
    threads[0].start()
    assert wait_until(lambda: group._leading)
    threads += [threading.Thread(target=insert, args=(n,)) for n in range(1, len(values))]
    for thread in threads[1:]:
        thread.start()
    assert wait_until(lambda: len(group._queue) == len(values) - 1)
    blocker.rollback()
    blocker.close()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_callers_queued_behind_a_commit_share_the_next_transaction(
    db: Recorded, group: GroupCommit
) -> None:
    values = [f"v{n}" for n in range(8)]
    assert behind_a_writer(db, group, values) == [(value,) for value in values]
    assert sorted(db.values()) == sorted(values)
    inserts = [s for s in db.statements if s.startswith("INSERT")]
    assert len(inserts) == 8
    # The first INSERT ran alone; the seven that queued behind it in one transaction.
    assert db.statements.count("BEGIN IMMEDIATE") == 1
    assert db.statements.count("COMMIT") == 1


def test_callers_arriving_while_the_leader_waits_for_the_write_lock_join_its_batch(
    db: Recorded,
) -> None:
    """The leader takes its batch once it holds the lock file, not before: everyone who
    queued while another process was writing shares one transaction."""
    other_process = WriteLock(str(db.path))
    group = GroupCommit(db.connect, write_lock=WriteLock(str(db.path)))
    values = [f"v{n}" for n in range(6)]
    with ThreadPoolExecutor(len(values)) as pool:
        with other_process:
            first = pool.submit(group.insert, SQL, (values[0],), returning=True)
            assert wait_until(lambda: group._leading)
            rest = [
                pool.submit(group.insert, SQL, (value,), returning=True) for value in values[1:]
            ]
            assert wait_until(lambda: len(group._queue) == len(values))  # the leader's too
        assert [f.result(timeout=60) for f in [first, *rest]] == [(value,) for value in values]
    group.close()
    other_process.close()
    assert sorted(db.values()) == values
    assert db.statements.count("BEGIN IMMEDIATE") == 1 and db.statements.count("COMMIT") == 1


def test_a_failing_row_fails_alone_and_a_skipped_row_says_so(
    db: Recorded, group: GroupCommit
) -> None:
    results = behind_a_writer(db, group, ["first", "a", None, "a", "b"])
    assert results[0] == ("first",)
    assert results[1] == ("a",)
    assert isinstance(results[2], sqlite3.IntegrityError)  # NOT NULL, its own error
    assert results[3] is None  # the conflict clause skipped the repeat
    assert results[4] == ("b",)
    assert sorted(db.values()) == ["a", "b", "first"]
    assert "ROLLBACK" in db.statements  # the batch was undone, then each row went alone


def test_without_returning_each_caller_learns_whether_its_row_was_inserted(
    db: Recorded, group: GroupCommit
) -> None:
    """The plain INSERT (no RETURNING): an empty tuple for a row inserted, None for one the
    conflict clause skipped, in a shared transaction as alone."""
    results = behind_a_writer(db, group, ["first", "a", "a", "b", "first"], returning=False)
    assert results == [(), (), None, (), None]
    assert group.insert(PLAIN_SQL, ("alone",)) == ()
    assert group.insert(PLAIN_SQL, ("alone",)) is None
    assert sorted(db.values()) == ["a", "alone", "b", "first"]
    assert db.statements.count("BEGIN IMMEDIATE") == 1  # the four queued ones, together


def test_a_connection_in_the_drivers_legacy_mode_commits_batches_and_lone_rows(
    db: Recorded,
) -> None:
    """An application's own engine may leave the driver's implicit transactions on."""

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(db.path, check_same_thread=False)  # isolation_level ""
        conn.execute("PRAGMA busy_timeout = 30000")
        return conn

    group = GroupCommit(connect)
    values = [f"v{n}" for n in range(5)]
    assert behind_a_writer(db, group, values) == [(value,) for value in values]
    assert group.insert(SQL, ("alone",), returning=True) == ("alone",)
    group.close()
    assert sorted(db.values()) == sorted([f"v{n}" for n in range(5)] + ["alone"])


def test_a_lone_caller_commits_without_an_explicit_transaction(
    db: Recorded, group: GroupCommit
) -> None:
    assert group.insert(SQL, ("solo",), returning=True) == ("solo",)
    assert group.insert(SQL, ("solo",), returning=True) is None
    expanded = SQL.replace("?", "'solo'")  # the trace shows bound values
    assert db.statements == [expanded, expanded]
    assert db.values() == ["solo"]


def test_an_unopenable_database_fails_every_caller(tmp_path: Path) -> None:
    def connect() -> sqlite3.Connection:
        return sqlite3.connect(tmp_path / "missing" / "dir" / "x.db")

    group = GroupCommit(connect)
    with pytest.raises(sqlite3.OperationalError, match="unable to open"):
        group.insert(SQL, ("x",))
    assert not group._leading  # the next caller is not left waiting for a leader


def test_close_waits_for_the_write_under_way(db: Recorded, group: GroupCommit) -> None:
    blocker = db.open()
    blocker.execute("BEGIN IMMEDIATE")
    writer = threading.Thread(target=group.insert, args=(SQL, ("late",)))
    writer.start()
    assert wait_until(lambda: group._leading)
    closer = threading.Thread(target=group.close)
    closer.start()
    closer.join(timeout=0.2)
    assert closer.is_alive()  # still waiting for the INSERT
    blocker.rollback()
    writer.join(timeout=60)
    closer.join(timeout=60)
    assert not closer.is_alive()
    assert db.values() == ["late"]


def test_many_threads_of_a_client_each_get_their_own_event(sqlite_url: str) -> None:
    """Through the client with durability full: every call stores exactly its own row,
    and a sale repeated across threads is stored once."""
    client = CMSClient(database_url=sqlite_url, flush="off")

    def track(n: int) -> tuple[str, str]:
        lead = client.track_lead("signup", f"customer_{n % 7}", click_id=f"click_{n}")
        invoice = n % 50  # the same sale (same customer) repeated by several threads
        sale = client.track_sale("purchase", f"customer_{invoice}", f"inv_{invoice}", 100, "USD")
        return lead.event_id, sale.event_id

    with ThreadPoolExecutor(16) as pool:
        pairs = list(pool.map(track, range(400)))
    client.close()
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:
        rows = dict(conn.execute("SELECT event_id, kind FROM cms_outbox_events").fetchall())
    leads = {lead for lead, _ in pairs}
    sales = {sale for _, sale in pairs}
    assert len(leads) == 400 and all(rows[event_id] == "lead" for event_id in leads)
    assert len(sales) == 50 and all(rows[event_id] == "sale" for event_id in sales)
    assert len(rows) == 450


def _track_in_child(client: CMSClient) -> None:
    client.track_lead("signup", "child")
    client.close()


def test_fork_waits_for_the_write_under_way(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child forked mid-write would inherit a transaction and SQLite locks it can
    never finish (its own inserts then fail as "database is locked"): fork waits."""
    client = CMSClient(database_url=sqlite_url, flush="off")
    path = sqlite_url.removeprefix("sqlite:///")
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    writer = threading.Thread(target=client.track_lead, args=("signup", "parent"))
    writer.start()
    assert wait_until(lambda: client.store._group is not None and client.store._group._leading)
    waiting = threading.Event()  # set once fork() has begun to wait for the writes
    before_fork = client.store.before_fork

    def announced(timeout: float) -> bool:
        waiting.set()
        return before_fork(timeout)

    monkeypatch.setattr(client.store, "before_fork", announced)
    child = multiprocessing.get_context("fork").Process(target=_track_in_child, args=(client,))
    forker = threading.Thread(target=child.start)
    forker.start()
    assert waiting.wait(60)
    assert writer.is_alive()  # the write is still under way while fork() waits
    blocker.rollback()  # it goes through during fork(), however late fork() came
    forker.join(timeout=60)
    child.join(timeout=60)
    writer.join(timeout=60)
    client.close()
    blocker.close()
    assert child.exitcode == 0
    with sqlite3.connect(path) as conn:
        query = "SELECT customer_external_id FROM cms_outbox_events ORDER BY id"
        assert [row[0] for row in conn.execute(query)] == ["parent", "child"]
