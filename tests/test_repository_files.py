"""The repository holds no outbox of its own: a file a run leaves behind (the database,
its WAL, shared-memory index or write lock) is ignored, never committed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LEFT_BY_A_RUN = (".db", ".db-wal", ".db-shm", ".db-lock")


def test_no_file_a_run_leaves_behind_is_tracked_or_unignored() -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert [name for name in tracked if name.endswith(LEFT_BY_A_RUN)] == []
    names = [f"cms_outbox{suffix}" for suffix in LEFT_BY_A_RUN]
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *names], cwd=REPO, capture_output=True, text=True
    ).stdout.split()
    assert sorted(ignored) == sorted(names)
