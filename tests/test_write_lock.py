"""The write lock (``cms_outbox.write_lock``): writers of one SQLite file queue on a file lock.

Real files, threads, forked and spawned processes; nothing is timed: a waiter is shown
to be waiting by its not having entered while the lock is held, and to wake by entering
once it is let go.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from cms_outbox import CMSClient
from cms_outbox.write_lock import WriteLock, sidecar_path
from tests.conftest import wait_until

HELD_FOR_A_WHILE = 0.3  # seconds a waiter is given to (wrongly) get in


def enter_in_thread(lock: WriteLock) -> tuple[threading.Thread, threading.Event, threading.Event]:
    """A thread that takes ``lock`` (sets ``inside``) and leaves once ``leave`` is set."""
    inside, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            inside.set()
            leave.wait(60)

    thread = threading.Thread(target=hold)
    thread.start()
    return thread, inside, leave


def test_two_locks_on_one_file_exclude_each_other(tmp_path: Path) -> None:
    first, second = WriteLock(str(tmp_path / "o.db")), WriteLock(str(tmp_path / "o.db"))
    holder, held, release = enter_in_thread(first)
    assert held.wait(60)
    waiter, got_in, leave = enter_in_thread(second)
    assert not got_in.wait(HELD_FOR_A_WHILE)
    release.set()
    assert got_in.wait(60)  # woken as soon as the holder let go
    leave.set()
    for thread in (holder, waiter):
        thread.join(60)
    first.close()
    second.close()


def test_threads_sharing_one_lock_take_turns(tmp_path: Path) -> None:
    lock = WriteLock(str(tmp_path / "o.db"))
    holder, held, release = enter_in_thread(lock)
    assert held.wait(60)
    waiter, got_in, leave = enter_in_thread(lock)
    assert not got_in.wait(HELD_FOR_A_WHILE)
    release.set()
    assert got_in.wait(60)
    leave.set()
    holder.join(60)
    waiter.join(60)
    lock.close()


def _hold_in_child(path: str, held: Any, release: Any) -> None:
    with WriteLock(path):
        held.set()
        release.wait(60)


def test_a_lock_held_by_another_process_is_waited_for(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    held, release = context.Event(), context.Event()
    child = context.Process(target=_hold_in_child, args=(str(tmp_path / "o.db"), held, release))
    child.start()
    assert held.wait(60)
    lock = WriteLock(str(tmp_path / "o.db"))
    waiter, got_in, leave = enter_in_thread(lock)
    assert not got_in.wait(HELD_FOR_A_WHILE)
    release.set()
    assert got_in.wait(60)
    leave.set()
    waiter.join(60)
    child.join(60)
    lock.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_does_not_share_its_parents_lock(tmp_path: Path) -> None:
    lock = WriteLock(str(tmp_path / "o.db"))
    with lock:  # open the file, so the child inherits it
        pass
    holder, held, release = enter_in_thread(lock)
    assert held.wait(60)
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report whether it got in while the parent held the lock
        try:
            os.close(reading)
            lock.__enter__()
            os.write(writing, b"in")
            lock.__exit__(None, None, None)
        finally:
            os._exit(0)
    os.close(writing)
    os.set_blocking(reading, False)
    assert not wait_until(lambda: _readable(reading), timeout=HELD_FOR_A_WHILE)
    release.set()
    holder.join(60)
    assert wait_until(lambda: _readable(reading), timeout=30)
    os.waitpid(pid, 0)
    os.close(reading)
    lock.close()


def _readable(fd: int) -> bool:
    try:
        return bool(os.read(fd, 2))
    except BlockingIOError:
        return False


def test_the_lock_file_is_private(tmp_path: Path) -> None:
    with CMSClient(database_url=f"sqlite:///{tmp_path / 'o.db'}", flush="off") as client:
        client.track_lead("signup", "customer-1", click_id="c1")
    mode = stat.S_IMODE(os.stat(sidecar_path(str(tmp_path / "o.db"))).st_mode)
    assert mode == 0o600


def test_without_a_usable_lock_file_writes_go_on_and_say_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "o.db"
    os.mkdir(sidecar_path(str(path)))  # a directory cannot be opened for writing
    with caplog.at_level(logging.WARNING, logger="cms_outbox.write_lock"):
        with CMSClient(database_url=f"sqlite:///{path}", flush="off") as client:
            for i in range(3):
                client.track_lead("signup", f"customer-{i}", click_id=f"c{i}")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM cms_outbox_events").fetchone()[0] == 3
    warnings = [r for r in caplog.records if "lock file" in r.getMessage()]
    assert len(warnings) == 1
    assert sidecar_path(str(path)) in warnings[0].getMessage()


def _in_thread(call: Any) -> tuple[threading.Thread, threading.Event]:
    done = threading.Event()

    def run() -> None:
        call()
        done.set()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, done


def test_the_enqueue_and_the_flushers_writes_queue_for_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with CMSClient(database_url=f"sqlite:///{path}", flush="off") as client:
        other = WriteLock(str(path))  # another process's writer, as far as the file lock goes
        holder, held, release = enter_in_thread(other)
        assert held.wait(60)
        enqueue, enqueued = _in_thread(lambda: client.track_lead("signup", "c-1", click_id="c1"))
        lease, leased = _in_thread(lambda: client.store.lease("owner", 10, 2e9, 60.0))
        assert not enqueued.wait(HELD_FOR_A_WHILE)
        assert not leased.is_set()
        release.set()
        assert enqueued.wait(60) and leased.wait(60)
        for thread in (holder, enqueue, lease):
            thread.join(60)
        other.close()
        assert sum(client.store.count_by_state().values()) == 1
