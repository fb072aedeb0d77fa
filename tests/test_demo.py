"""``cms-outbox demo`` run again and again into the same outbox."""

from __future__ import annotations

import io
import time
from types import SimpleNamespace

import pytest

from cms_outbox import demo


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
