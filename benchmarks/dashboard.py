"""Dashboard page times with 1,000,000 events stored, beside the same pages at 1,000.

Builds two SQLite outboxes at the schema head: a small one (1,000 events) and a large
one (1,000,000; 3,000 with ``--quick``) shaped like a week of traffic: mostly
delivered, a backlog of pending and in-flight events, dead events and blocked
follow-ups, one attempt per delivered event and more for the retried and dead, 300
customers per 1,000 events and twenty event names. Then it requests every page of
``cms_outbox.web.Dashboard`` through Werkzeug's WSGI client (no network: the
application's own time) several times and reports the median and worst, and the
ratio large/small per page. The target: every page under 200 ms at the large size.

    python benchmarks/dashboard.py [--quick] [--keep DIR] [--database-url POSTGRES_URL]

``--keep DIR`` builds the databases there once and reuses them on later runs (the large
one takes a couple of minutes to build).
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _common import emit, median, ratio, table, target
from sqlalchemy import create_engine, insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from werkzeug.test import Client

from cms_outbox import CMSClient
from cms_outbox.schema import attempts, events
from cms_outbox.web import Dashboard

LOCAL = {"REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1"}
WEEK = 7 * 86400.0
EVENT_COLUMNS = (
    "id", "event_id", "kind", "customer_external_id", "click_id", "mode", "invoice_id",
    "payload", "state", "attempts", "next_attempt_at", "created_at", "last_attempt_at",
    "delivered_at", "last_status_code", "last_error", "last_response",
)  # fmt: skip
ATTEMPT_COLUMNS = ("event_seq", "started_at", "duration", "status_code", "outcome", "error",
                   "response")  # fmt: skip
NAMES = [f"event_{n:02d}" for n in range(20)]
RARE = "rare_event"  # a handful of events: the filter no index narrows
LIMIT_MS = 200.0
REPEATS = 7  # 3 with --quick


class Rows:
    """Bulk inserts: raw ``sqlite3`` for a file, SQLAlchemy batches for a server."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sqlite = url.startswith("sqlite:")
        if self.sqlite:
            self.conn: Any = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
            self.conn.execute("PRAGMA synchronous = OFF")
            self.conn.execute("BEGIN")
        else:
            self.engine = create_engine(url, pool_pre_ping=True)

    def add(self, event_rows: list[tuple[Any, ...]], attempt_rows: list[tuple[Any, ...]]) -> None:
        if self.sqlite:
            self.conn.executemany(
                f"INSERT INTO cms_outbox_events ({', '.join(EVENT_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(EVENT_COLUMNS))})",
                event_rows,
            )
            self.conn.executemany(
                f"INSERT INTO cms_outbox_attempts ({', '.join(ATTEMPT_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(ATTEMPT_COLUMNS))})",
                attempt_rows,
            )
            return
        for _ in range(30):  # a server restarted by other work on the machine: wait, redo
            try:
                with self.engine.begin() as conn:
                    conn.execute(
                        insert(events), [dict(zip(EVENT_COLUMNS, row)) for row in event_rows]
                    )
                    conn.execute(
                        insert(attempts), [dict(zip(ATTEMPT_COLUMNS, row)) for row in attempt_rows]
                    )
                return
            except OperationalError:
                time.sleep(2)
        raise RuntimeError("the database server kept failing")

    def close(self) -> None:
        if self.sqlite:
            self.conn.execute("COMMIT")
            self.conn.execute("ANALYZE")
            self.conn.close()
            return
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE cms_outbox_events")
            conn.exec_driver_sql("VACUUM ANALYZE cms_outbox_attempts")
        self.engine.dispose()


def server_size_mb(url: str) -> float:
    engine = create_engine(url)
    with engine.connect() as conn:
        size = conn.exec_driver_sql(
            "SELECT pg_total_relation_size('cms_outbox_events') "
            "+ pg_total_relation_size('cms_outbox_attempts')"
        ).scalar_one()
    engine.dispose()
    return float(size) / 2**20


def reset(url: str) -> None:
    """Drop the outbox tables of a server database (the benchmark builds its own)."""
    engine = create_engine(url)
    with engine.begin() as conn:
        for table in ("cms_outbox_attempts", "cms_outbox_events", "cms_outbox_control",
                      "cms_outbox_alembic_version"):  # fmt: skip
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table} CASCADE")
    engine.dispose()


def build(url: str, size: int, now: float) -> dict[str, str]:
    """Fill an outbox with ``size`` events; returns ids and values the pages look up."""
    if not url.startswith("sqlite:"):
        reset(url)
    CMSClient(database_url=url, flush="off").close()  # migrate to the head
    rng = random.Random(size)
    customers = max(10, size * 3 // 10)
    sink = Rows(url)
    pick: dict[str, str] = {}
    event_rows = []
    attempt_rows = []
    start = now - WEEK
    for seq in range(1, size + 1):
        created = start + WEEK * seq / size
        customer = f"customer_{rng.randrange(customers):07d}"
        share = rng.random()
        from_end = size - seq
        if from_end < size * 0.008:
            state = "pending" if from_end % 20 else "in_flight"
        elif share < 0.005 or seq == size // 2 + 1:
            state = "dead"
        elif share < 0.0065 or seq == size // 2 + 2:
            state = "blocked"
        else:
            state = "delivered"
        sale = seq % 3 == 0
        name = RARE if seq % (size // 5) == 7 else NAMES[seq % len(NAMES)]
        event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        payload = {
            "eventName": name,
            "customerExternalId": customer,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(created)),
            "customerName": f"Customer {customer[-7:]}",
            "customerEmail": f"{customer}@example.com",
        }
        if sale:
            payload.update(invoiceId=f"inv-{seq:09d}", amount=4999, currency="USD")
        if state != "blocked":
            payload["clickId"] = f"click_{seq:09d}_0123456789abcdef"
        tries = {"delivered": 1, "dead": 3, "blocked": 0, "pending": 0, "in_flight": 0}[state]
        if state == "delivered" and share > 0.95:
            tries = 2
        status = {"delivered": 200, "dead": 422}.get(state)
        last = created + 1.0 if tries else None
        event_rows.append((
            seq, event_id, "sale" if sale else "lead", customer,
            payload.get("clickId"), None, payload.get("invoiceId"),
            json.dumps(payload, separators=(",", ":")), state, tries,
            created if state == "pending" else created + 60, created, last,
            last if state == "delivered" else None, status,
            "rejected: unprocessable" if state == "dead" else None,
            '{"success":true}' if state == "delivered" else None,
        ))  # fmt: skip
        for n in range(tries):
            final = n == tries - 1
            outcome = ("delivered" if state == "delivered" else "dead") if final else "retry"
            code = status if final else 503
            attempt_rows.append((seq, created + 1.0 + n, 0.05, code, outcome, None,
                                 '{"success":true}'))  # fmt: skip
        for key, wanted in (("delivered", "delivered"), ("dead", "dead"), ("blocked", "blocked"),
                            ("pending", "pending")):  # fmt: skip
            if state == wanted and from_end < size // 2:
                pick.setdefault(key, event_id)
        if sale:
            pick.setdefault("invoice", f"inv-{seq:09d}")
        if seq == size // 2:
            pick["customer"] = customer
        if len(event_rows) >= 50_000 or seq == size:
            sink.add(event_rows, attempt_rows)
            event_rows.clear()
            attempt_rows.clear()
    sink.close()
    pick["middle"] = str(size // 2)
    pick["window_since"] = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(now - 3 * 86400))
    pick["window_until"] = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(now - 3 * 86400 + 3600))
    return pick


def prepared(path: Path, size: int) -> dict[str, str]:
    """The outbox at ``path``, built unless a previous ``--keep`` run left it there."""
    picks = path.with_suffix(".json")
    if path.exists() and picks.exists():
        return dict(json.loads(picks.read_text()))
    path.unlink(missing_ok=True)
    pick = build(f"sqlite:///{path}", size, time.time())
    picks.write_text(json.dumps(pick))
    return pick


def pages(pick: dict[str, str]) -> dict[str, str]:
    return {
        "overview": "/",
        "events": "/events",
        "events, page at the middle": f"/events?before={pick['middle']}",
        "events, state=dead": "/events?state=dead",
        "events, state=delivered": "/events?state=delivered",
        "events, customer": f"/events?customer={pick['customer']}",
        "events, invoice": f"/events?invoice={pick['invoice']}",
        f"events, event_name={RARE}": f"/events?event_name={RARE}",
        "events, status_code=422": "/events?status_code=422",
        "events, min_attempts=2": "/events?min_attempts=2",
        "events, an hour 3 days ago": (
            f"/events?since={pick['window_since']}&until={pick['window_until']}"
        ),
        "event, delivered": f"/events/{pick['delivered']}",
        "event, dead": f"/events/{pick['dead']}",
        "event, blocked": f"/events/{pick['blocked']}",
        "retry all dead, confirm": "/retry?state=dead",
        "purge, confirm": "/purge?older_than=7d",
    }


def measure(
    url: str, paths: dict[str, str], repeats: int
) -> dict[str, tuple[list[float], list[float]]]:
    """Per page: wall-clock and CPU milliseconds of each request but the first.

    The CPU time (this thread's, SQLite included: it runs in the calling thread) is
    what the page itself costs; on a machine shared with other work the wall clock
    also counts the time spent waiting for a core. On PostgreSQL the server's work is
    in the wall clock only.
    """
    dashboard = Dashboard(url)
    client = Client(dashboard)
    times: dict[str, tuple[list[float], list[float]]] = {}
    try:
        for name, path in paths.items():
            wall, cpu = [], []
            for _ in range(repeats):
                started, started_cpu = time.perf_counter(), time.thread_time()
                response = client.get(path, environ_overrides=LOCAL)
                body = response.get_data()
                wall.append((time.perf_counter() - started) * 1000)
                cpu.append((time.thread_time() - started_cpu) * 1000)
                assert response.status_code == 200, (name, response.status_code, body[:500])
            times[name] = (wall[1:], cpu[1:])  # the first warms SQLite's page cache
    finally:
        dashboard.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3,000 events, for CI")
    parser.add_argument("--keep", metavar="DIR", help="build the databases here once, reuse")
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="measure on this PostgreSQL database instead of SQLite files (its cms_outbox_* "
        "tables are dropped and rebuilt, small outbox first, then large)",
    )
    args = parser.parse_args()
    large, repeats = (3000, 3) if args.quick else (1_000_000, REPEATS)
    small = 1_000
    backend = "sqlite"
    built = time.perf_counter()
    if args.database_url:
        backend = make_url(args.database_url).get_backend_name()
        small_pick = build(args.database_url, small, time.time())
        small_times = measure(args.database_url, pages(small_pick), repeats)
        large_pick = build(args.database_url, large, time.time())
        build_s = time.perf_counter() - built
        size_mb = server_size_mb(args.database_url)
        large_times = measure(args.database_url, pages(large_pick), repeats)
        reset(args.database_url)
    else:
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(args.keep or scratch)
            folder.mkdir(parents=True, exist_ok=True)
            small_pick = prepared(folder / "small.db", small)
            large_pick = prepared(folder / f"large-{large}.db", large)
            build_s = time.perf_counter() - built
            size_mb = (folder / f"large-{large}.db").stat().st_size / 2**20
            small_url = f"sqlite:///{folder / 'small.db'}"
            large_url = f"sqlite:///{folder / f'large-{large}.db'}"
            small_times = measure(small_url, pages(small_pick), repeats)
            large_times = measure(large_url, pages(large_pick), repeats)
    rows = []
    results = {}
    for (name, (few, _)), (many, many_cpu) in zip(small_times.items(), large_times.values()):
        results[name] = {
            "small_median_ms": round(median(few), 1),
            "large_median_ms": round(median(many), 1),
            "large_worst_ms": round(max(many), 1),
            "large_median_cpu_ms": round(median(many_cpu), 1),
            "large_worst_cpu_ms": round(max(many_cpu), 1),
            "large_vs_small": ratio(median(many), median(few)),
        }
        rows.append([name, median(few), median(many), max(many), median(many_cpu),
                     max(many_cpu), ratio(median(many), median(few))])  # fmt: skip
    table(
        f"Page times, ms, {backend} ({small:,} vs {large:,} events; database {size_mb:.0f} MB, "
        f"built in {build_s:.0f} s)",
        ["page", f"median {small:,}", f"median {large:,}", f"worst {large:,}",
         "median CPU", "worst CPU", "ratio"],
        rows,
    )  # fmt: skip
    worst_wall = max(item["large_worst_ms"] for item in results.values())
    worst_cpu = max(item["large_worst_cpu_ms"] for item in results.values())
    slowest = max(results, key=lambda name: results[name]["large_worst_ms"])
    costliest = max(results, key=lambda name: results[name]["large_worst_cpu_ms"])
    targets = {
        "worst_page_ms": target(f"worst page ({slowest})", worst_wall, "<", LIMIT_MS),
        "worst_page_cpu_ms": target(f"worst page CPU ({costliest})", worst_cpu, "<", LIMIT_MS),
    }
    emit(
        {
            "benchmark": "dashboard",
            "quick": args.quick,
            "backend": backend,
            "events": {"small": small, "large": large},
            "database_mb": round(size_mb, 1),
            "pages": results,
            "ratios": {name: item["large_vs_small"] for name, item in results.items()},
            "targets": targets,
        }
    )


if __name__ == "__main__":
    main()
