"""``CMSClient.stats()``, the activity counters behind metrics, and the CLI's small helpers."""

from __future__ import annotations

import argparse
import inspect
import io
import time
from datetime import timedelta
from pathlib import Path
from typing import Callable

import pytest

from cms_outbox import CMSClient, Daemon
from cms_outbox.cli import build_parser
from cms_outbox.cli._common import mask_url, table
from cms_outbox.cli.arguments import duration, optional_duration
from cms_outbox.cli.delivery import Progress
from cms_outbox.results import EventState, TrackResult
from cms_outbox.sandbox import Sandbox
from cms_outbox.status import ActivityTracker, Stats, check_health, outbox_status
from tests.conftest import TOKEN, FakeClock


def test_stats_counts_since_start(make_client: Callable[..., CMSClient], sandbox: Sandbox) -> None:
    clock = FakeClock()  # stands still: the 503's backoff never comes due
    earlier = make_client(clock=lambda: clock() - timedelta(minutes=1))
    earlier.track_lead("signup", "before", click_id="k0")  # before this client started
    client = make_client(token=TOKEN, host=sandbox.url, rate_limit=None, clock=clock)
    start = client.stats()
    assert isinstance(start, Stats)
    assert (start.enqueued, start.delivered, start.retried, start.dead) == (0, 0, 0, 0)
    assert start.pending == 1 and start.oldest_pending_age is not None
    ids = [client.track_lead("signup", f"c{i}", click_id=f"k{i}").event_id for i in range(3)]
    sandbox.set_faults(force_status=503, force_count=1)
    client.flush()  # no deadline to miss: it returns once nothing is due on the still clock
    sandbox.set_faults(force_status=422, force_count=1)
    client.track_sale("buy", "d", "inv-1", 100, "USD", click_id="k")
    client.flush()
    stats = client.stats()
    assert stats.enqueued == 4
    assert stats.retried == 1
    assert stats.dead == 1
    assert (stats.delivered, stats.pending) == (3, 1)  # four leads, one backing off
    assert len(ids) == 3
    assert stats.to_json()["since"].endswith("Z")


def test_activity_counters_never_go_down_after_a_purge(
    make_client: Callable[..., CMSClient], sandbox: Sandbox
) -> None:
    client = make_client(token=TOKEN, host=sandbox.url, rate_limit=None)
    tracker = ActivityTracker(client.engine, settle=0.05, since=time.time() - 1)
    for i in range(3):
        client.track_lead("signup", f"c{i}", click_id=f"k{i}")
    client.flush(5)
    first = tracker.snapshot()
    assert (first.enqueued, first.delivered, first.requests) == (3, 3, 3)
    assert first.duration_buckets[-1] <= 3 and first.duration_sum > 0
    tracker.snapshot(now=time.time() + 1)  # folds the settled window into the fixed totals
    assert client.purge(delivered_older_than=0) == 3
    after = tracker.snapshot()
    assert (after.enqueued, after.delivered, after.requests) == (3, 3, 3)
    assert after.counts["delivered"] == 0


def test_prometheus_families(make_client: Callable[..., CMSClient], sandbox: Sandbox) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest

    from cms_outbox.metrics import OutboxCollector

    client = make_client(token=TOKEN, host=sandbox.url, rate_limit=None)
    tracker = ActivityTracker(client.engine, since=time.time() - 1)
    client.track_lead("signup", "c", click_id="k")
    client.flush(5)
    client.track_lead("signup", "waiting", click_id="k2")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OutboxCollector(tracker))
    text = generate_latest(registry).decode()
    for line in (
        "cms_outbox_enqueued_total 2.0",
        "cms_outbox_delivered_total 1.0",
        "cms_outbox_retried_total 0.0",
        "cms_outbox_dead_total 0.0",
        "cms_outbox_pending 1.0",
        'cms_outbox_events{state="delivered"} 1.0',
        'cms_outbox_request_duration_seconds_bucket{le="+Inf"} 1.0',
        "cms_outbox_request_duration_seconds_count 1.0",
    ):
        assert line in text, text
    assert "cms_outbox_oldest_pending_age_seconds" in text


def test_health_verdicts(make_client: Callable[..., CMSClient]) -> None:
    client = make_client()
    status = outbox_status(client.engine)
    assert check_health(status, max_pending_age=1, max_dead=0).healthy
    client.track_lead("signup", "c", click_id="k")
    later = outbox_status(client.engine, now=time.time() + 3600)
    verdict = check_health(later, max_pending_age=600)
    assert not verdict.healthy
    assert verdict.summary.startswith("unhealthy: the oldest pending event is 1h00m old")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("10m", 600),
        ("2h", 7200),
        ("7d", 604800),
        ("1w", 604800),
        ("1.5m", 90),
        ("0", 0),
    ],  # fmt: skip
)
def test_durations(text: str, seconds: float) -> None:
    assert duration(text) == seconds


def test_bad_durations_and_never() -> None:
    # A number without its unit is refused: "7" was seven seconds, not the seven days meant.
    for text in ("", "soon", "-5s", "10 minutes", "1y", "7", "1.5", "600"):
        with pytest.raises(argparse.ArgumentTypeError):
            duration(text)
    assert optional_duration("never") is None


def test_mask_url_hides_the_password() -> None:
    masked = mask_url("postgresql+psycopg://outbox:s3cret@db.example:5432/app")
    assert "s3cret" not in masked and "outbox:***@db.example" in masked
    assert mask_url("sqlite:////var/lib/app/outbox.db") == "sqlite:////var/lib/app/outbox.db"


def test_mask_url_shows_where_a_relative_sqlite_path_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert mask_url("sqlite:///app.db") == f"sqlite:///{tmp_path / 'app.db'}"
    assert mask_url("sqlite+pysqlite:///data/app.db?timeout=5") == (
        f"sqlite+pysqlite:///{tmp_path / 'data' / 'app.db'}?timeout=5"
    )


def test_table_aligns_columns() -> None:
    assert table(["A", "BB"], [["xyz", 1], [None, "two"]]).splitlines() == [
        "A    BB",
        "xyz  1",
        "     two",
    ]


def test_progress_line_on_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(stream, live=True, every=0.01)
    progress.start(total=4)
    done = TrackResult(success=True, event_id="e", state=EventState.DELIVERED)
    for _ in range(3):
        progress.on_delivered(done)
    progress.on_dead(TrackResult(success=False, event_id="d", state=EventState.DEAD))
    time.sleep(0.05)
    progress.stop()
    output = stream.getvalue()
    assert output.startswith("\r") and output.endswith("\n")
    final = output.rstrip("\n").split("\r")[-1]
    assert final.startswith("flush: 3 delivered, 1 dead, 0 remaining")
    assert "ETA done" in final


def test_metrics_are_served_on_loopback_unless_asked(
    make_client: Callable[..., CMSClient], capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = pytest.importorskip("cms_outbox.metrics")
    assert build_parser().parse_args(["run"]).metrics_address == "127.0.0.1"
    assert inspect.signature(Daemon).parameters["metrics_address"].default == "127.0.0.1"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--metrics-port (default: 127.0.0.1, this host only: the counts are business" in (
        help_text
    )
    assert "0.0.0.0 for a scraper on another host or outside a container" in help_text
    client = make_client()
    server = metrics.serve(ActivityTracker(client.engine, settle=1.0), 0)
    try:
        assert server.address == "127.0.0.1"
    finally:
        server.close()
