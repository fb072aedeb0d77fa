"""``cms-outbox demo`` run again and again into the same outbox."""

from __future__ import annotations

import io
import time
from types import SimpleNamespace

import pytest

from cms_outbox import CMSClient, demo


def test_two_demos_in_the_same_second_into_one_outbox_both_succeed(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ids stamped with the second repeated: the second run found its sales already stored."""
    same_second = SimpleNamespace(
        time=lambda: 1_764_633_600.0, monotonic=time.monotonic, sleep=time.sleep
    )
    monkeypatch.setattr(demo, "time", same_second)
    first, second = io.StringIO(), io.StringIO()
    assert demo.run(sqlite_url, out=first) == 0, first.getvalue()
    assert demo.run(sqlite_url, out=second) == 0, second.getvalue()
    assert "OK: every event was accepted exactly once" in second.getvalue()


def test_the_demo_shows_its_events_in_an_outbox_full_of_others(sqlite_url: str) -> None:
    """It listed the outbox's first 1,000 events and kept its own: after ~200 runs, none."""
    with CMSClient(database_url=sqlite_url, flush="off", durability="normal") as client:
        for number in range(1000):
            client.track_lead("signup", f"earlier-{number}", click_id=f"c{number}")
    out = io.StringIO()
    assert demo.run(sqlite_url, out=out) == 0, out.getvalue()
    shown = out.getvalue().splitlines()
    header = next(i for i, line in enumerate(shown) if line.split()[:1] == ["EVENT"])
    table = shown[header + 1 : header + 6]
    assert [line.split()[1].split("-")[0] for line in table] == [
        "alice", "bob", "bob", "bob", "alice",
    ], out.getvalue()  # fmt: skip
