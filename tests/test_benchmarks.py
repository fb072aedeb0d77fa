"""The benchmark scripts' smoke runs (``--quick``, seconds each) end with their JSON line,
every target a number; no timing asserts.

All of them start at once, so that CI waits for the slowest rather than for their sum;
the figures they print are then meaningless, which is fine: only the full runs'
figures go to the README.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
TIMEOUT = 600  # seconds; a quick run takes seconds, far more on a loaded machine
EXPECTED = {
    "enqueue": {"median_us", "ratios", "concurrency", "targets"},
    "drain": {"results", "paced", "ratios", "targets"},
    "latency": {"cms_outbox", "sdk", "breakdown", "ratios", "targets"},
    "outage": {"outage", "lost_response", "ratios", "targets"},
    "backlog": {"rss_mb", "db_bytes", "bytes_per_pending_event", "ratios", "targets"},
    "idle": {"write_bytes_per_10min", "wchar_per_10min", "ratios", "targets"},
    "scaleout": {"results", "ratios", "targets"},
    "dashboard": {"pages", "ratios", "targets"},
    "dead_setups": {"results", "ratios", "targets"},
    "pacing": {"results", "ratios", "targets"},
    "short_script": {"results", "ratios", "targets"},
    "tail": {"results", "ratios", "targets"},  # skipped (JSON says why) without PostgreSQL
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs() -> Iterator[dict[str, subprocess.Popen[str]]]:
    started = {
        name: subprocess.Popen(
            [sys.executable, str(BENCHMARKS / f"{name}.py"), "--quick"],
            cwd=BENCHMARKS,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in EXPECTED
    }
    yield started
    for process in started.values():
        if process.poll() is None:
            process.kill()
        process.wait()
        # Also the pipes of a run whose test was deselected: left open, each would be
        # reported unclosed when the process object is collected.
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_quick_run_ends_with_its_json(runs: dict[str, subprocess.Popen[str]], name: str) -> None:
    stdout, stderr = runs[name].communicate(timeout=TIMEOUT)
    assert runs[name].returncode == 0, f"{name}.py failed:\n{stdout[-2000:]}\n{stderr[-4000:]}"
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["benchmark"] == name
    assert result["quick"] is True
    assert EXPECTED[name] <= result.keys()
    for key, item in result["targets"].items():
        assert {"value", "want", "met"} <= item.keys(), key
        assert isinstance(item["met"], bool), key
        assert math.isfinite(item["value"]), key  # even a smoke run measures each target
