"""fork() waits until no thread of ours is inside SQLite: a child forked while another
thread held one of SQLite's process-wide mutexes hung at its first connect."""

from __future__ import annotations

import os
import sqlite3
import threading

import pytest

from cms_outbox import CMSClient
from cms_outbox.fork_gate import GATE, ForkGate
from tests.conftest import wait_until


def test_close_waits_for_the_threads_inside_and_keeps_new_ones_out() -> None:
    gate = ForkGate()
    inside, leave, entered_late = threading.Event(), threading.Event(), threading.Event()

    def hold() -> None:
        with gate.passing():
            inside.set()
            leave.wait()

    def enter_late() -> None:
        with gate.passing():
            entered_late.set()

    holder = threading.Thread(target=hold)
    holder.start()
    inside.wait()
    assert not gate.close(timeout=0.05)  # still inside
    latecomer = threading.Thread(target=enter_late)
    latecomer.start()
    leave.set()
    holder.join()
    assert gate.close(timeout=60)
    assert not entered_late.is_set()  # kept out while closed
    gate.reopen()
    latecomer.join()
    assert entered_late.is_set()


def test_a_thread_inside_passes_again_and_does_not_wait_for_itself() -> None:
    gate = ForkGate()
    with gate.passing():
        assert gate.close(timeout=60)  # its own passage does not count
        with gate.passing():  # nested: does not wait for the reopen
            pass
        gate.reopen()
    assert gate.close(timeout=0)


# Python 3.12+ warns of fork() in a process with threads: this test forks on purpose.
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_fork_waits_for_a_read_under_way(sqlite_url: str) -> None:
    client = CMSClient(database_url=sqlite_url, flush="off")
    client.track_lead("signup", "parent")
    inside, leave = threading.Event(), threading.Event()
    left: list[bool] = []

    def read_slowly() -> None:
        with GATE.passing():  # as a read of the store holds it
            inside.set()
            leave.wait()
            left.append(True)

    reader = threading.Thread(target=read_slowly)
    reader.start()
    inside.wait()
    forked: list[tuple[int, bool]] = []

    def fork() -> None:
        pid = os.fork()
        if pid == 0:  # the child connects at once: it would hang on an inherited mutex
            client.track_lead("signup", "child")
            client.close()
            os._exit(0)
        forked.append((pid, bool(left)))

    forker = threading.Thread(target=fork)
    forker.start()
    assert wait_until(lambda: GATE._closed)
    assert not forked  # fork() is waiting for the reader
    leave.set()
    reader.join()
    forker.join(timeout=60)
    ((pid, reader_had_left),) = forked
    assert reader_had_left
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    client.close()
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:
        query = "SELECT customer_external_id FROM cms_outbox_events ORDER BY id"
        assert [row[0] for row in conn.execute(query)] == ["parent", "child"]
