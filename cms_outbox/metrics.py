"""Prometheus metrics for ``cms-outbox run --metrics-port`` (the optional ``metrics`` extra).

Every value is read from the outbox database at scrape time through
``status.ActivityTracker``, so the numbers describe the outbox (all its writers and
flushers), not one process: with several daemons on one outbox, aggregate with
``max``, not ``sum``. Counters start at zero when the daemon starts and never go
down, not even across purges.

- ``cms_outbox_enqueued_total``, ``cms_outbox_delivered_total`` (2xx and 409),
  ``cms_outbox_retried_total`` (retryable failures, outages, auth pauses),
  ``cms_outbox_dead_total`` (rejected or expired)
- ``cms_outbox_pending`` (pending or in flight), ``cms_outbox_oldest_pending_age_seconds``
  (0 when nothing is pending), ``cms_outbox_events{state=...}``
- ``cms_outbox_request_duration_seconds``: a histogram of HTTP attempts
- ``cms_outbox_pacing_requests_per_minute{source=...}`` (the limit every flusher paces
  at; source ``assumed``, ``configured``, ``advertised`` or ``learned``),
  ``cms_outbox_pacing_remaining`` (requests the service still allows in its window; absent
  when it did not say), ``cms_outbox_pacing_pause_seconds`` (left of a 429 pause, 0 when
  none); absent until a paced flusher has run
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from .errors import ConfigurationError, OutboxError
from .status import DURATION_BUCKETS, Activity, ActivityTracker

try:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ConfigurationError(
        "metrics need prometheus-client: pip install 'cms-outbox[metrics]'"
    ) from exc

__all__ = ["MetricsServer", "OutboxCollector", "families", "serve"]

logger = logging.getLogger(__name__)


def families(activity: Activity) -> list[Metric]:
    """The metric families for one snapshot of the outbox."""
    counters = [
        ("cms_outbox_enqueued", "Events stored in the outbox.", activity.enqueued),
        ("cms_outbox_delivered", "Events delivered (2xx, or 409 duplicate).", activity.delivered),
        ("cms_outbox_retried", "Attempts that failed and will be retried.", activity.retried),
        ("cms_outbox_dead", "Events dead-lettered (rejected or expired).", activity.dead),
    ]
    result: list[Metric] = [
        CounterMetricFamily(name, documentation, value=value)
        for name, documentation, value in counters
    ]
    result.append(
        GaugeMetricFamily(
            "cms_outbox_pending", "Events waiting to be sent or in flight.", value=activity.pending
        )
    )
    result.append(
        GaugeMetricFamily(
            "cms_outbox_oldest_pending_age_seconds",
            "Age of the oldest pending event (0 when none).",
            value=activity.oldest_pending_age or 0.0,
        )
    )
    by_state = GaugeMetricFamily("cms_outbox_events", "Stored events by state.", labels=["state"])
    for state, count in activity.counts.items():
        by_state.add_metric([state], count)
    result.append(by_state)
    buckets: list[tuple[str, float]] = [
        (_bound(bound), float(count))
        for bound, count in zip(DURATION_BUCKETS, activity.duration_buckets)
    ]
    buckets.append(("+Inf", float(activity.requests)))
    result.append(
        HistogramMetricFamily(
            "cms_outbox_request_duration_seconds",
            "Duration of HTTP attempts to the CMS service.",
            buckets=buckets,
            sum_value=activity.duration_sum,
        )
    )
    result.extend(_pacing(activity))
    return result


def _pacing(activity: Activity) -> list[Metric]:
    pacing = activity.pacing
    if pacing is None:
        return []
    rate = GaugeMetricFamily(
        "cms_outbox_pacing_requests_per_minute",
        "The request rate every flusher of the outbox paces at, and where it came from.",
        labels=["source"],
    )
    rate.add_metric([pacing.source], pacing.per_minute)
    families: list[Metric] = [
        rate,
        GaugeMetricFamily(
            "cms_outbox_pacing_pause_seconds",
            "Seconds left of the pause a 429 imposed on every flusher (0 when none).",
            value=pacing.pause_seconds,
        ),
    ]
    if pacing.remaining is not None:
        families.append(
            GaugeMetricFamily(
                "cms_outbox_pacing_remaining",
                "Requests the service still allows before its window resets.",
                value=pacing.remaining,
            )
        )
    return families


class OutboxCollector(Collector):
    """Reads the outbox at every scrape; a database failure is logged, not served."""

    def __init__(self, tracker: ActivityTracker) -> None:
        self.tracker = tracker

    def collect(self) -> Iterator[Metric]:
        try:
            activity = self.tracker.snapshot()
        except OutboxError as exc:
            logger.warning("metrics: reading the outbox failed: %s", exc)
            return
        yield from families(activity)


class MetricsServer:
    """The HTTP endpoint serving ``/metrics``; ``close()`` stops it."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def address(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)


# Loopback unless asked: the counts are business data (conversions per minute), and a
# scraper on another host or outside a container is a choice the operator makes.
DEFAULT_ADDRESS = "127.0.0.1"


def serve(tracker: ActivityTracker, port: int, address: str = DEFAULT_ADDRESS) -> MetricsServer:
    """Serve the outbox's metrics on ``address:port`` in a daemon thread.

    :raises ConfigurationError: the port cannot be bound.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OutboxCollector(tracker))
    try:
        server, thread = start_http_server(port, addr=address, registry=registry)
    except OSError as exc:
        raise ConfigurationError(f"cannot serve metrics on {address}:{port}: {exc}") from exc
    return MetricsServer(server, thread)


def _bound(value: float) -> str:
    return repr(float(value))
