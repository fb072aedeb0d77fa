"""The CLI takes any unique prefix of an event id, as git takes short commit ids."""

from __future__ import annotations

import json
import sqlite3

import pytest
from sqlalchemy.engine import make_url

from cms_outbox import CMSClient
from cms_outbox.cli import main

A = "abcd1111-0000-4000-8000-000000000001"
B = "abcd2222-0000-4000-8000-000000000002"
C = "f00d3333-0000-4000-8000-000000000003"
EXACT = "e-1"  # an exact id that is also the start of another one
LONGER = "e-10"


@pytest.fixture
def outbox(sqlite_url: str) -> str:
    with CMSClient(database_url=sqlite_url, flush="off") as client:
        stored = [client.track_lead("signup", f"u{i}", click_id="c").event_id for i in range(5)]
    path = str(make_url(sqlite_url).database)
    with sqlite3.connect(path) as conn:
        for old, new in zip(stored, (A, B, C, EXACT, LONGER)):
            conn.execute("UPDATE cms_outbox_events SET event_id = ? WHERE event_id = ?", (new, old))
        conn.execute("UPDATE cms_outbox_events SET state = 'dead' WHERE event_id = ?", (C,))
    return sqlite_url


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("prefix", ["abcd1", "abcd1111", "ABCD1111", A])
def test_show_takes_a_unique_prefix(
    outbox: str, capsys: pytest.CaptureFixture[str], prefix: str
) -> None:
    code, out, err = run(capsys, "show", prefix, "--json", "--database-url", outbox)
    assert (code, err) == (0, "")
    assert json.loads(out)["event_id"] == A


def test_an_ambiguous_prefix_is_an_error_listing_the_candidates(
    outbox: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "show", "abcd", "--database-url", outbox)
    assert (code, out) == (2, "")
    [line] = err.strip().splitlines()
    assert line.startswith("cms-outbox: error: event_id: 'abcd' is the start of more than one")
    assert A in line and B in line and C not in line


def test_an_exact_id_wins_over_the_ids_it_starts(
    outbox: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "show", EXACT, "--json", "--database-url", outbox)
    assert code == 0 and json.loads(out)["event_id"] == EXACT
    code, _, err = run(capsys, "show", "e-", "--database-url", outbox)
    assert code == 2 and EXACT in err and LONGER in err


def test_no_match_exits_4(outbox: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "show", "beef", "--database-url", outbox)
    assert code == 4 and "'beef' is not in the outbox" in err


def test_retry_takes_prefixes_and_refuses_an_ambiguous_one(
    outbox: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "retry", "f00d", "abcd", "--database-url", outbox)
    assert code == 2 and "more than one" in err
    with CMSClient(database_url=outbox, flush="off") as client:
        assert client.result(C).state.value == "dead"  # nothing was retried
    code, out, err = run(capsys, "retry", "f00d", "--json", "--database-url", outbox)
    assert (code, err) == (0, "")
    assert json.loads(out) == {"retried": 1, "skipped": []}
    with CMSClient(database_url=outbox, flush="off") as client:
        assert client.result(C).state.value == "pending"
