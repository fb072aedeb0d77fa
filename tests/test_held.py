"""``flush`` and ``show`` on events that wait: for a retry ahead of them, a dead setup, a token.

A follow-up held behind its customer's earlier event has a next attempt time in the past
that says nothing; a 401 pause hands every event back without retrying any; a blocked
event's ``show`` names the setup it waits on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from cms_outbox import CMSClient
from cms_outbox.cli import main
from cms_outbox.sandbox import Sandbox
from cms_outbox.status import outbox_status
from tests.conftest import TOKEN


@pytest.fixture
def client(sqlite_url: str, sandbox: Sandbox) -> Iterator[CMSClient]:
    with CMSClient(TOKEN, sandbox.url, sqlite_url, flush="off", rate_limit=None) as client:
        yield client


def run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str,
    token: str = TOKEN,
) -> tuple[int, str]:  # fmt: skip
    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setenv("CMS_BEARER_TOKEN", token)
        code = main(list(args))
    return code, capsys.readouterr().out


def test_flush_says_which_events_are_held_and_never_a_negative_wait(
    client: CMSClient,
    sandbox: Sandbox,
    sqlite_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sandbox.set_faults(force_status=503, force_count=1, retry_after="60")
    client.track_lead("signup", "held", click_id="clk_1", mode="deferred")
    client.flush(30)  # the setup waits a minute for its retry
    for step in range(3):
        client.track_lead(f"step_{step}", "held")  # due now, but behind the setup
    status = outbox_status(client.engine)
    assert (status.pending_due, status.pending_held) == (0, 3)
    assert status.next_attempt_at is not None and status.next_attempt_at > status.now + 50

    flags = ("flush", "--host", sandbox.url, "--rate-limit", "0", "--database-url", sqlite_url)
    code, out = run(capsys, monkeypatch, *flags)
    assert code == 0, out
    left = out.splitlines()[1]
    assert re.fullmatch(
        r"left: 4 to send \(0 due now, 3 held behind earlier events of their customers, "
        r"next attempt in (59|60)s\), 0 blocked, 0 dead",
        left,
    ), left
    code, out = run(capsys, monkeypatch, *flags, "--json")
    report = json.loads(out)
    assert (report["pending"], report["due"], report["held"]) == (4, 0, 3)
    assert report["next_attempt_at"].endswith("Z")

    code, out = run(capsys, monkeypatch, "status", "--database-url", sqlite_url)
    next_line = next(line for line in out.splitlines() if line.startswith("next attempt"))
    assert "ago" not in next_line and "(in " in next_line, next_line


def test_a_401_pause_is_not_a_retry(
    client: CMSClient,
    sandbox: Sandbox,
    sqlite_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client.track_lead("signup", "u1", click_id="clk_1")
    code, out = run(
        capsys, monkeypatch, "flush", "--host", sandbox.url, "--database-url", sqlite_url,
        token="not-the-token",
    )  # fmt: skip
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith("delivered 0, retried 0, dead 0 in "), out
    assert lines[2].startswith("delivery paused (auth): HTTP 401"), out
    code, out = run(
        capsys, monkeypatch, "flush", "--json", "--host", sandbox.url, "--database-url",
        sqlite_url, token="not-the-token",
    )  # fmt: skip
    report = json.loads(out)
    assert (report["retried"], report["paused"], report["pending"]) == (0, "auth", 1)
    stats = client.stats()
    assert stats.retried == 0


def test_show_names_the_setup_a_blocked_event_waits_on(
    client: CMSClient,
    sandbox: Sandbox,
    sqlite_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sandbox.set_faults(force_status=422, force_count=1)
    setup = client.track_lead("signup", "held", click_id="clk_1", mode="deferred").event_id
    client.flush(30)
    sandbox.clear_faults()
    blocked = client.track_lead("kyc", "held").event_id
    later = client.track_lead("login", "held", click_id="clk_2").event_id  # behind it
    client.flush(30)
    assert [client.result(e).state.value for e in (setup, blocked, later)] == [
        "dead", "blocked", "pending",
    ]  # fmt: skip

    code, out = run(capsys, monkeypatch, "show", blocked, "--database-url", sqlite_url)
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("waits on"))
    assert line == (
        f"waits on      {setup} (its deferred setup, dead: HTTP 422: injected fault: HTTP 422); "
        f"`cms-outbox retry {setup}` releases it"
    )
    code, out = run(capsys, monkeypatch, "show", blocked, "--json", "--database-url", sqlite_url)
    waits: dict[str, Any] = json.loads(out)["waits_on"]
    assert waits == {
        "event_id": setup, "reason": "deferred setup", "kind": "lead", "state": "dead",
        "last_status_code": 422, "last_error": "HTTP 422: injected fault: HTTP 422",
    }  # fmt: skip

    code, out = run(capsys, monkeypatch, "show", later[:8], "--json", "--database-url", sqlite_url)
    held = json.loads(out)["waits_on"]
    assert (held["event_id"], held["reason"], held["state"]) == (
        blocked,
        "earlier event",
        "blocked",
    )
    code, out = run(capsys, monkeypatch, "show", setup, "--json", "--database-url", sqlite_url)
    assert json.loads(out)["waits_on"] is None
    code, out = run(capsys, monkeypatch, "show", setup, "--database-url", sqlite_url)
    assert "waits on      -" in out
