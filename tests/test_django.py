"""The Django app (``cms_outbox.django``) and the example shop, on SQLite, PostgreSQL and
MySQL/MariaDB: a signup view creates a user and tracks its lead in one ``atomic()``
block, and the tests read the database afterwards with plain SQL.

Each backend gets a database of its own (Django's tables are created by ``migrate``,
the outbox's by the app's migration wrapping the Alembic revisions). Django's settings
are per process, so the views run in child processes through Django's test client.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from cms_outbox import CMSClient, EventState, migrate
from cms_outbox.sandbox import Sandbox
from tests.conftest import TOKEN, wait_until

pytest.importorskip("django")

SHOP = Path(__file__).resolve().parent.parent / "examples" / "django_app"

# Posts each (path, form) with Django's test client; prints [status, json or None] each.
# A step ("outside", {...}) calls track_lead with Django's connection outside atomic().
DRIVER = textwrap.dedent(
    """
    import json, sys
    import django
    django.setup()
    from django.db import connection
    from django.test import Client
    from cms_outbox import ValidationError
    from cms_outbox.django import get_client

    client = Client(raise_request_exception=False)
    answers = []
    for path, form in json.loads(sys.argv[1]):
        if path == "outside":
            try:
                get_client().track_lead("signup", form["customer"], connection=connection)
                answers.append(["stored", None])
            except ValidationError as exc:
                answers.append([exc.field, str(exc)])
            continue
        response = client.post(path, form)
        body = json.loads(response.content) if response.status_code == 200 else None
        answers.append([response.status_code, body])
    print(json.dumps(answers))
    """
)


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def shop_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of the test's own, dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shop.db'}"
        return
    server = str(request.getfixturevalue(f"{request.param}_url"))
    name = f"cms_outbox_django_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    quote = '"' if request.param == "postgres" else "`"
    admin = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {quote}{name}{quote}"))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        force = " WITH (FORCE)" if request.param == "postgres" else ""
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {quote}{name}{quote}{force}"))
        admin.dispose()


def shop_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMS_")}
    env.update(
        SHOP_DATABASE_URL=url,
        DJANGO_SETTINGS_MODULE="shop.settings",
        CMS_BEARER_TOKEN=TOKEN,
        PYTHONPATH=os.pathsep.join([str(SHOP), env.get("PYTHONPATH", "")]),
    )
    return env


def manage(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=SHOP, env=shop_env(url),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def post(url: str, steps: list[tuple[str, dict[str, str]]]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(steps)], cwd=SHOP, env=shop_env(url),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def answers(done: subprocess.CompletedProcess[str]) -> list[list[Any]]:
    assert done.returncode == 0, done.stderr[-3000:]
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql))]
    finally:
        engine.dispose()


def events_by_name(url: str) -> list[tuple[str, str]]:
    return sorted(
        (json.loads(payload)["eventName"], customer)
        for customer, payload in rows(
            url, "SELECT customer_external_id, payload FROM cms_outbox_events"
        )
    )


def test_a_signup_and_its_lead_commit_together_or_not_at_all(
    shop_url: str, sandbox: Sandbox
) -> None:
    migrated = manage(shop_url, "migrate", "--verbosity", "0")
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    engine = create_engine(shop_url, poolclass=NullPool)
    assert migrate.current_revision(engine) == migrate.head_revision()
    engine.dispose()

    done = answers(
        post(shop_url, [
            ("/signup", {"username": "alice", "click_id": "click-a"}),
            ("/signup", {"username": "bob", "click_id": "click-b", "fail": "after_insert"}),
            ("/signup", {"username": "carol", "click_id": "click-c", "referral": "broken"}),
            ("/signup", {"username": "dave", "click_id": "click-d", "referral": "ok"}),
            ("/purchase", {"customer": "user-1", "invoice_id": "inv-1", "amount": "4999",
                           "click_id": "click-a"}),
            ("/purchase", {"customer": "user-1", "invoice_id": "inv-1", "amount": "4999",
                           "click_id": "click-a"}),
            ("outside", {"customer": "nobody"}),
        ])
    )  # fmt: skip
    statuses = [status for status, _ in done]
    assert statuses == [200, 500, 200, 200, 200, 200, "connection"]
    assert "inside transaction.atomic()" in done[-1][1]
    assert done[4][1]["event_id"] == done[5][1]["event_id"]  # the duplicate: the stored sale

    users = dict(rows(shop_url, "SELECT username, id FROM auth_user"))
    assert set(users) == {"alice", "carol", "dave"}  # bob's signup rolled back
    a, c, d = (f"user-{users[name]}" for name in ("alice", "carol", "dave"))
    assert events_by_name(shop_url) == sorted([
        ("signup", a), ("signup", c), ("signup", d),
        ("referral", d),  # carol's referral savepoint rolled back, her signup stands
        ("purchase", "user-1"),
    ])  # fmt: skip

    killed = post(
        shop_url, [("/signup", {"username": "erin", "click_id": "click-e", "die": "after_commit"})]
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    [(erin,)] = rows(shop_url, "SELECT id FROM auth_user WHERE username = 'erin'")
    assert ("signup", f"user-{erin}") in events_by_name(shop_url)  # committed, so stored

    daemon = subprocess.Popen(
        [sys.executable, "manage.py", "cms_outbox_run", "--host", sandbox.url,
         "--rate-limit", "0", "--interval", "0.2"],
        cwd=SHOP, env=shop_env(shop_url), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        drained = wait_until(lambda: len(sandbox.accepted) == 6, timeout=120, step=0.05)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, log = daemon.communicate(timeout=60)
    assert drained and daemon.returncode == 0, (len(sandbox.accepted), log[-3000:])
    assert rows(shop_url, "SELECT state, count(*) FROM cms_outbox_events GROUP BY state") == [
        ("delivered", 6)
    ]


# Tracks events with Django's connection inside atomic(); prints [event_id, state] each.
TRACK = textwrap.dedent(
    """
    import json, sys
    import django
    django.setup()
    from django.db import connection, transaction
    from cms_outbox.django import get_client

    results = []
    with transaction.atomic():
        for kind, options in json.loads(sys.argv[1]):
            track = getattr(get_client(), f"track_{kind}")
            result = track(connection=connection, **options)
            results.append([result.event_id, result.state.value])
    print(json.dumps(results))
    """
)


def track(url: str, calls: list[tuple[str, dict[str, Any]]]) -> list[list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", TRACK, json.dumps(calls)], cwd=SHOP, env=shop_env(url),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return answers(done)


def test_a_follow_up_behind_a_dead_setup_reports_the_blocked_state_it_is_stored_in(
    shop_url: str, sandbox: Sandbox
) -> None:
    """As with a SQLAlchemy connection or none: the result says what the row says."""
    migrated = manage(shop_url, "migrate", "--verbosity", "0")
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    [[setup, _]] = track(shop_url, [
        ("lead", {"event_name": "signup", "customer_external_id": "held",
                  "click_id": "k1", "mode": "deferred"}),
    ])  # fmt: skip
    sandbox.set_faults(force_status=422, force_count=1)  # the setup is rejected
    with CMSClient(
        token=TOKEN, host=sandbox.url, database_url=shop_url, flush="off", rate_limit=None
    ) as sender:
        assert sender.flush().dead == 1
        assert sender.result(setup).state is EventState.DEAD

    follow_ups = track(shop_url, [
        ("lead", {"event_name": "step", "customer_external_id": "held"}),
        ("sale", {"event_name": "purchase", "customer_external_id": "held",
                  "invoice_id": "inv-held", "amount": 4999, "currency": "USD"}),
        ("lead", {"event_name": "signup", "customer_external_id": "free",
                  "click_id": "k2", "mode": "deferred"}),
        ("lead", {"event_name": "step", "customer_external_id": "free"}),
        ("lead", {"event_name": "signup", "customer_external_id": "held",
                  "click_id": "k3", "mode": "deferred"}),
        ("lead", {"event_name": "again", "customer_external_id": "held"}),
    ])  # fmt: skip
    # "free": its setup is pending; "held" again: its latest setup, k3, governs and is pending.
    states = ["blocked", "blocked", "pending", "pending", "pending", "pending"]
    assert [state for _, state in follow_ups] == states
    stored = dict(rows(shop_url, "SELECT event_id, state FROM cms_outbox_events"))
    assert [stored[event_id] for event_id, _ in follow_ups] == states
