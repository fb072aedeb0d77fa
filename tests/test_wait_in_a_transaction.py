"""``wait=`` cannot deliver an event stored in the application's transaction (``connection=``):
the event exists only once that transaction commits, after the call has returned. Every way
in (a SQLAlchemy ``Connection`` or ``Session``, the awaited calls, Django's connection) says so
with a ``ValidationError`` naming ``wait`` and writes nothing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.orm import Session

from cms_outbox import CMSClient, ValidationError

LEAD: dict[str, Any] = {"event_name": "signup", "customer_external_id": "user_1", "click_id": "c1"}
SALE: dict[str, Any] = {"event_name": "purchase", "customer_external_id": "user_1",
                        "invoice_id": "inv_1", "amount": 4999, "currency": "USD"}  # fmt: skip
WORDS = "the event exists only once your transaction commits"


def stored(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM cms_outbox_events")).scalar_one())
    finally:
        engine.dispose()


def in_transaction(url: str, call: Callable[[Connection | Session], object], orm: bool) -> None:
    """``call`` inside the application's transaction, which then commits."""
    engine = create_engine(url)
    try:
        if orm:
            with Session(engine) as session, session.begin():
                call(session)
        else:
            with engine.begin() as conn:
                call(conn)
    finally:
        engine.dispose()


@pytest.mark.parametrize("wait", [0, 1.5])
@pytest.mark.parametrize("orm", [False, True], ids=["Connection", "Session"])
@pytest.mark.parametrize("kind", ["lead", "sale"])
def test_wait_with_connection_raises_naming_wait_and_writes_nothing(
    database_url: str, kind: str, orm: bool, wait: float
) -> None:
    """It was ignored: the call returned a pending result without waiting at all."""
    with CMSClient(database_url=database_url, flush="off") as client:
        track = client.track_lead if kind == "lead" else client.track_sale
        arguments = LEAD if kind == "lead" else SALE
        caught: list[ValidationError] = []

        def call(connection: Connection | Session) -> None:
            with pytest.raises(ValidationError) as error:
                track(**arguments, connection=connection, wait=wait)
            caught.append(error.value)

        in_transaction(database_url, call, orm)
    [error] = caught
    assert error.field == "wait" and WORDS in str(error), str(error)
    assert stored(database_url) == 0


def test_the_awaited_calls_refuse_it_too(sqlite_url: str) -> None:
    with CMSClient(database_url=sqlite_url, flush="off") as client:

        def call(connection: Connection | Session) -> None:
            with pytest.raises(ValidationError) as error:
                asyncio.run(client.atrack_lead(**LEAD, connection=connection, wait=1))
            assert error.value.field == "wait"

        in_transaction(sqlite_url, call, orm=False)
    assert stored(sqlite_url) == 0


DJANGO = textwrap.dedent(
    """
    import django
    django.setup()
    from django.db import connection, transaction
    from cms_outbox import ValidationError
    from cms_outbox.django import get_client

    with transaction.atomic():
        try:
            get_client().track_lead("signup", "user_1", "c1", connection=connection, wait=1)
        except ValidationError as exc:
            print(exc.field)
    """
)


def test_djangos_connection_refuses_it_too(tmp_path: Path) -> None:
    pytest.importorskip("django")
    from tests.test_django import SHOP, manage, rows, shop_env  # Django's tests only

    url = f"sqlite:///{tmp_path / 'shop.db'}"
    migrated = manage(url, "migrate", "--verbosity", "0")
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    done = subprocess.run(
        [sys.executable, "-c", DJANGO], cwd=SHOP, env=shop_env(url),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert (done.returncode, done.stdout.split()) == (0, ["wait"]), done.stderr[-3000:]
    assert rows(url, "SELECT count(*) FROM cms_outbox_events") == [(0,)]
