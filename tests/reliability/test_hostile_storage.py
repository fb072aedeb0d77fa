"""Hostile storage: a file that is not an outbox, a directory in its place, a damaged
file, a full disk. The caller gets a ``StorageError`` (an ``OutboxError``), never a raw
``sqlite3``/SQLAlchemy exception; nothing is half-written; and once the cause is fixed
the same outbox works again: ``track_*`` stores and ``flush`` delivers."""

from __future__ import annotations

import errno
import os
import random
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
from sqlalchemy.exc import SQLAlchemyError

from cms_outbox import CMSClient, OutboxError, StorageError
from cms_outbox.sandbox import Sandbox
from tests.conftest import TOKEN

from .conftest import integrity, query, wait_for

SEED = 9091
SHORT_LEASE: dict[str, Any] = {"lease_seconds": 2.0, "connect_timeout": 0.5, "read_timeout": 1.0}
Build = Callable[[Path], None]


def outbox_with_events(path: Path, count: int) -> None:
    with CMSClient(database_url=f"sqlite:///{path}", flush="off", durability="normal") as client:
        for n in range(count):
            client.track_lead("step", f"customer-{n % 40}", click_id="c", customer_name="n" * 300)


def text_file(path: Path) -> None:
    path.write_text("order_id,total\n1,4999\n" * 200)


def random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(SEED).randbytes(64 * 1024))


def bad_header(path: Path) -> None:
    outbox_with_events(path, 20)
    data = bytearray(path.read_bytes())
    data[:16] = b"not SQLite here!"
    path.write_bytes(bytes(data))


def truncated(path: Path) -> None:
    outbox_with_events(path, 500)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def expect_storage_error(action: Callable[[], Any]) -> StorageError:
    with pytest.raises(OutboxError) as caught:
        action()
    assert isinstance(caught.value, StorageError), repr(caught.value)
    # A driver's error is chained; a check made before the driver opened the file has none.
    assert caught.value.__cause__ is None or isinstance(caught.value.__cause__, Exception)
    assert "Error" not in str(caught.value)  # plain words, not a driver's exception text
    return caught.value


def works_again(url: str, sandbox: Sandbox) -> None:
    """The fixed outbox stores an event and delivers it, once."""
    with CMSClient(TOKEN, sandbox.url, url, flush="off", rate_limit=None) as client:
        event_id = client.track_lead("signup", "after-the-fix", click_id="c").event_id
        assert client.flush(timeout=60).delivered == 1
    assert sandbox.accepted_count(event_id) == 1


@pytest.mark.parametrize("build", [text_file, random_bytes, bad_header, truncated])
def test_a_file_that_is_no_outbox_is_refused_and_left_untouched(
    build: Build, tmp_path: Path, make_sandbox: Callable[..., Sandbox]
) -> None:
    path = tmp_path / "outbox.db"
    build(path)
    before = path.read_bytes()
    url = f"sqlite:///{path}"
    error = expect_storage_error(lambda: CMSClient(database_url=url, flush="off"))
    assert str(path) in str(error)  # which file
    assert path.read_bytes() == before  # never "repaired" by overwriting someone's file
    path.rename(tmp_path / "aside.db")
    works_again(url, make_sandbox())


def test_a_directory_where_the_file_should_be_is_refused(
    tmp_path: Path, make_sandbox: Callable[..., Sandbox]
) -> None:
    path = tmp_path / "outbox.db"
    path.mkdir()
    url = f"sqlite:///{path}"
    error = expect_storage_error(lambda: CMSClient(database_url=url, flush="off"))
    assert f"{path} is a directory, not a SQLite file" in str(error)
    assert path.is_dir() and list(path.iterdir()) == []
    path.rmdir()
    works_again(url, make_sandbox())


def test_damaged_pages_give_storage_errors_never_driver_errors(
    tmp_path: Path, make_sandbox: Callable[..., Sandbox]
) -> None:
    """Garbage in the middle of the file: opening may work, every use fails cleanly."""
    rng = random.Random(SEED)
    path = tmp_path / "outbox.db"
    outbox_with_events(path, 2000)
    data = bytearray(path.read_bytes())
    for offset in range(8192, len(data), 4096 * 7):
        data[offset : offset + 2000] = rng.randbytes(2000)
    path.write_bytes(bytes(data))
    sandbox = make_sandbox()
    url = f"sqlite:///{path}"
    operations: list[Callable[[CMSClient], Any]] = [
        lambda client: client.track_lead("signup", "customer-1", click_id="c"),
        lambda client: client.track_sale("buy", "customer-2", "inv-1", 100, "EUR", click_id="c"),
        lambda client: client.flush(timeout=5),
        lambda client: client.stats(),
        lambda client: client.retry(dead=True, blocked=True),
        lambda client: client.purge(delivered_older_than=0, dead_older_than=0),
    ]
    failures = 0
    try:
        client = CMSClient(TOKEN, sandbox.url, url, flush="off", rate_limit=None)
    except OutboxError as exc:
        assert isinstance(exc, StorageError), repr(exc)
        failures += 1
    else:
        with client:
            for operation in operations:
                try:
                    operation(client)
                except OutboxError as exc:
                    assert isinstance(exc, StorageError), repr(exc)
                    failures += 1
    assert failures >= 1  # the damage was met, and reported as StorageError each time
    path.rename(tmp_path / "damaged.db")
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    works_again(url, sandbox)


@pytest.fixture
def small_disk(tmpfs: Callable[..., Path]) -> Path:
    """A 2 MiB tmpfs for the full-disk test."""
    return tmpfs("small", size="2m", mode="0700")


def fill(directory: Path, headroom: int) -> Path:
    """Fill the file system with one file, then give ``headroom`` bytes back."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as stream:
        chunk = b"\0" * 4096
        try:
            while True:
                stream.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - headroom))
    return filler


def test_full_disk_is_a_storage_error_and_the_outbox_recovers_when_space_is_freed(
    small_disk: Path, make_sandbox: Callable[..., Sandbox]
) -> None:
    sandbox = make_sandbox()
    path = small_disk / "outbox.db"
    url = f"sqlite:///{path}"
    client = CMSClient(TOKEN, sandbox.url, url, flush="off", rate_limit=None, **SHORT_LEASE)
    with client:
        filler = fill(small_disk, headroom=160 * 1024)
        stored: list[str] = []
        error: StorageError | None = None
        for n in range(2000):
            name = f"{n}" + "x" * 400
            try:
                stored.append(
                    client.track_lead("step", "c", click_id="c", customer_name=name).event_id
                )
            except OutboxError as exc:
                assert isinstance(exc, StorageError), repr(exc)
                error = exc
                break
        assert error is not None, "the disk never filled up"
        assert isinstance(error.__cause__, (sqlite3.Error, SQLAlchemyError)), error.__cause__
        assert "full" in str(error).lower(), str(error)
        # Delivery cannot record its results either: a StorageError, or nothing to do.
        try:
            client.flush(timeout=5)
        except OutboxError as exc:
            assert isinstance(exc, StorageError), repr(exc)
        # Nothing half-written: every returned call is stored, the failed one is not.
        assert integrity(path) == "ok"
        rows = query(path, "SELECT event_id FROM cms_outbox_events ORDER BY id")
        assert [row[0] for row in rows] == stored

        filler.unlink()  # the cause is fixed: the same client stores and delivers again
        stored.append(client.track_lead("step", "c", click_id="c").event_id)
        # A flush cut short by the full disk may have left a lease behind: the next pass
        # hands it back, so delivery resumes at once.
        wait_for(
            lambda: client.flush(timeout=5).pending == 0,
            60,
            "delivery after the space was freed",
        )
        assert client.store.count_by_state() == {"delivered": len(stored)}
    assert [event.idempotency_key for event in sandbox.accepted] == stored
    assert integrity(path) == "ok"
    print(
        f"\nfull disk: {len(stored) - 1} events stored before the disk was full, then a "
        f"StorageError ({str(error)[:50]}...), all {len(stored)} delivered once after"
    )


def test_after_a_storage_error_mid_pass_the_next_flush_delivers_at_once(
    tmp_path: Path, make_sandbox: Callable[..., Sandbox]
) -> None:
    """A transient storage failure between lease and record (here: the attempts table is
    away while the request is in flight) must not hold the event back once it is over."""
    sandbox = make_sandbox()
    sandbox.set_faults(stall=300.0)  # held until the service goes down: no answer to record
    path = tmp_path / "outbox.db"
    url = f"sqlite:///{path}"
    with CMSClient(TOKEN, sandbox.url, url, flush="off", rate_limit=None) as client:
        first = client.track_lead("signup", "customer", click_id="c").event_id
        second = client.track_lead("step", "customer", click_id="c").event_id

        def break_storage() -> None:
            # Once the request is held at the sandbox (the row is leased), take the table
            # away, then end the request: its outcome finds no table to be recorded in.
            wait_for(lambda: len(sandbox.requests) == 1, 60, "the first request")
            query(path, "ALTER TABLE cms_outbox_attempts RENAME TO attempts_away")
            sandbox.down()

        breaker = threading.Thread(target=break_storage)
        breaker.start()
        expect_storage_error(lambda: client.flush(timeout=60))
        breaker.join()
        query(path, "ALTER TABLE attempts_away RENAME TO cms_outbox_attempts")  # fixed
        sandbox.clear_faults()
        sandbox.up()
        report = client.flush(timeout=60)
        assert (report.delivered, report.pending) == (2, 0), report
    assert [event.idempotency_key for event in sandbox.accepted] == [first, second]
