"""Does the pacing follow the service's real limit, shared by three daemons on one outbox?

Three ``cms-outbox run`` processes, left at the default ``rate_limit="auto"``, drain a
3,000-event backlog (300 customers) from one outbox (SQLite, and PostgreSQL when a
server is given) against a sandbox in its own process whose limit is its own, counted
in fixed windows of 6 seconds, and changed while they run:

1. 30 per window, advertised in the IETF draft's ``RateLimit-Policy``/``RateLimit``;
2. raised to 120 per window, advertised;
3. back to 30 per window, with no headers at all (only 429s and ``Retry-After``).

Per phase it counts the sandbox's answers per window: 429s, and the accepted requests as
a share of the real limit. Afterwards it checks that no event was lost, doubled,
reordered within its customer or dead-lettered (the backlog is not meant to drain: the
limit decides, which is the point). ``--quick`` uses 1-second windows, 5 and 20 per
window, and fewer windows, to show the script works (no figure to read).

    python benchmarks/pacing.py [--quick] [--backend both|sqlite|postgresql]
        [--database-url postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    DaemonProcess,
    admin,
    arguments,
    backlog_rows,
    emit,
    fresh_database,
    sandbox_process,
    table,
    target,
)
from sqlalchemy import create_engine, func, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from cms_outbox import CMSClient
from cms_outbox.schema import events

DAEMONS = 3
BACKLOG = 3000
CUSTOMERS = 300
WORKERS = 4


@dataclass(frozen=True)
class Plan:
    window: int  # seconds
    limit: int  # requests per window, phases 1 and 3
    raised: int  # phase 2
    windows: tuple[int, int, int]  # full windows per phase


FULL = Plan(window=6, limit=30, raised=120, windows=(6, 5, 10))
QUICK = Plan(window=1, limit=5, raised=20, windows=(2, 3, 3))


def parse_args() -> argparse.Namespace:
    parser = arguments(
        (__doc__ or "").split("\n\n")[0], server="a PostgreSQL server for the second run"
    )
    parser.add_argument(
        "--backend",
        choices=("both", "sqlite", "postgresql"),
        default="both",
        help="which outbox to run (default: both; PostgreSQL needs a server)",
    )
    return parser.parse_args()


# -- processes -----------------------------------------------------------------------------


def sandbox_of(plan: Plan) -> AbstractContextManager[str]:
    """``cms-outbox sandbox`` with the plan's own limit, in its own process; yields its URL."""
    return sandbox_process(
        "--rate-limit", str(plan.limit), "--rate-window", str(plan.window),
        "--rate-accounting", "fixed", "--rate-headers", "ietf",
    )  # fmt: skip


def start_daemon(database_url: str, host: str, log_path: Path) -> DaemonProcess:
    """``cms-outbox run`` at its defaults (``rate_limit="auto"``)."""
    options = ["--workers", str(WORKERS), "--interval", "0.5"]
    return DaemonProcess(database_url, host, log_path, options)


# -- one run -------------------------------------------------------------------------------


def prepare(url: str) -> None:
    """Migrate and store the backlog in one transaction."""
    CMSClient(database_url=url, flush="off").close()
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(insert(events), backlog_rows(BACKLOG, CUSTOMERS))
    finally:
        engine.dispose()


def sleep_until(moment: float) -> None:
    while (left := moment - time.time()) > 0:
        time.sleep(min(left, 0.5))


def run(url: str, plan: Plan, directory: Path) -> dict[str, Any]:
    """Three daemons through the three phases; the sandbox's answers per window."""
    prepare(url)
    w = plan.window
    with sandbox_of(plan) as sandbox:
        logs_at = [directory / f"daemon-{n}.log" for n in range(DAEMONS)]
        daemons = [start_daemon(url, sandbox, log_path) for log_path in logs_at]
        logs: list[str] = []
        try:
            # The clock starts with the first request: start-up time is not pacing.
            while not admin(sandbox, "requests")["requests"]:
                time.sleep(0.1)
            first = math.floor(time.time() / w) + 1  # the first full window
            boundaries = [first + sum(plan.windows[:k]) for k in range(4)]
            sleep_until(boundaries[1] * w)
            admin(sandbox, "limits", {"requests": plan.raised})
            sleep_until(boundaries[2] * w)
            admin(sandbox, "limits", {"requests": plan.limit, "headers": "none"})
            sleep_until(boundaries[3] * w)
        finally:
            logs = [daemon.stop() for daemon in daemons]
        requests = admin(sandbox, "requests")["requests"]
        accepted = admin(sandbox, "accepted")["accepted"]
    per_window: dict[int, Counter[str]] = defaultdict(Counter)
    for record in requests:
        per_window[math.floor(record["time"] / w)][str(record["status"])] += 1
    phases = []
    for k, limit in enumerate((plan.limit, plan.raised, plan.limit)):
        windows = range(boundaries[k], boundaries[k + 1])
        phases.append(
            {
                "limit": limit,
                "accepted": [per_window[n]["200"] for n in windows],
                "rate_limited": [per_window[n]["429"] for n in windows],
                "other": [
                    sum(v for s, v in per_window[n].items() if s not in ("200", "429"))
                    for n in windows
                ],
            }
        )
    before = sum(per_window[n]["429"] for n in per_window if n < boundaries[0])
    return {
        "phases": phases,
        "rate_limited_before_first_window": before,
        "integrity": integrity(url, accepted),
        "tracebacks": sum(log.count("Traceback") for log in logs),
    }


def integrity(url: str, accepted: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Lost, doubled, reordered, dead: each must be 0."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            states = dict(
                conn.execute(select(events.c.state, func.count()).group_by(events.c.state)).all()
            )
    finally:
        engine.dispose()
    keys = Counter(item["idempotency_key"] for item in accepted)
    clicks: dict[str, list[str]] = defaultdict(list)
    for item in accepted:
        clicks[item["customer_external_id"]].append(item["payload"]["clickId"])
    return {
        "delivered": int(states.get("delivered", 0)),
        "pending": int(states.get("pending", 0)) + int(states.get("in_flight", 0)),
        "lost": BACKLOG - sum(int(v) for v in states.values()),
        "unrecorded": len(keys) - int(states.get("delivered", 0)),
        "doubled": sum(count - 1 for count in keys.values()),
        "reordered_customers": sum(c != sorted(c) for c in clicks.values()),
        "dead": int(states.get("dead", 0)) + int(states.get("blocked", 0)),
    }


# -- figures -------------------------------------------------------------------------------


def figures(name: str, result: dict[str, Any]) -> dict[str, float]:
    """The ratios the targets read, for one backend."""
    advertised, raised, silent = result["phases"]

    def share(phase: dict[str, Any], skip: int) -> float:
        counts = phase["accepted"][skip:]
        return sum(counts) / (len(counts) * phase["limit"]) if counts else math.nan

    followed = next(
        (n + 1 for n, count in enumerate(raised["accepted"]) if count >= 0.9 * raised["limit"]),
        len(raised["accepted"]) + 1,
    )
    return {
        f"{name}_advertised_429_per_flusher": (
            sum(advertised["rate_limited"]) + result["rate_limited_before_first_window"]
        )
        / DAEMONS,
        f"{name}_advertised_rate_from_window_2": share(advertised, 1),
        f"{name}_raised_429_per_flusher": sum(raised["rate_limited"]) / DAEMONS,
        f"{name}_raised_followed_in_window": float(followed),
        f"{name}_raised_rate_from_window_3": share(raised, 2),
        f"{name}_silent_max_429_per_window_from_3": float(max(silent["rate_limited"][2:])),
        f"{name}_silent_rate_from_window_3": share(silent, 2),
    }


def print_run(name: str, result: dict[str, Any]) -> None:
    labels = ("30/window advertised", "raised, advertised", "no headers")
    rows = []
    for label, phase in zip(labels, result["phases"]):
        for n, (ok, limited) in enumerate(zip(phase["accepted"], phase["rate_limited"])):
            rows.append((label if n == 0 else "", n + 1, phase["limit"], ok, limited,
                         ok / phase["limit"]))  # fmt: skip
    header = ("phase", "window", "limit", "200", "429", "x limit")
    table(f"{name}: the sandbox's answers per window", header, rows)
    print(f"{name} integrity: {result['integrity']}")


def main() -> None:
    args = parse_args()
    plan = QUICK if args.quick else FULL
    server = args.database_url
    postgres = bool(server) and make_url(server).get_backend_name() == "postgresql"
    backends = [] if args.backend == "postgresql" else ["sqlite"]
    if args.backend != "sqlite" and not args.quick and postgres:
        backends.append("postgresql")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cms-pacing-") as tmp:
        directory = Path(tmp)
        for backend in backends:
            if backend == "sqlite":
                results[backend] = run(f"sqlite:///{directory / 'outbox.db'}", plan, directory)
            else:
                assert server is not None
                with fresh_database(server) as url:
                    results[backend] = run(url, plan, directory)
            print_run(backend, results[backend])
    ratios: dict[str, float] = {}
    for backend, result in results.items():
        ratios.update(figures(backend, result))
    print()
    targets: dict[str, Any] = {}
    for b, result in results.items():
        wanted = [
            ("advertised_429_per_flusher", "429s per flusher, limit advertised", "<=", 1),
            ("advertised_rate_from_window_2", "achieved x limit from window 2", ">=", 0.95),
            ("raised_429_per_flusher", "429s per flusher, limit raised", "<=", 1),
            ("raised_followed_in_window", "window the raised limit is reached in", "<=", 2),
            ("silent_max_429_per_window_from_3", "429s per window, no headers, window 3 on",
             "<=", 1),
            ("silent_rate_from_window_3", "achieved x limit, no headers, window 3 on", ">=", 0.9),
        ]  # fmt: skip
        for key, label, op, limit in wanted:
            targets[f"{b}_{key}"] = target(f"{b}: {label}", ratios[f"{b}_{key}"], op, limit)
        faults = sum(v for k, v in result["integrity"].items() if k not in ("delivered", "pending"))
        targets[f"{b}_integrity"] = target(
            f"{b}: lost + doubled + reordered + dead + unrecorded + tracebacks",
            float(faults + result["tracebacks"]), "==", 0,
        )  # fmt: skip
    if "postgresql" not in backends and args.backend != "sqlite" and not args.quick:
        print("PostgreSQL run skipped: pass --database-url or set CMS_OUTBOX_TEST_POSTGRES_URL")
    emit(
        {
            "benchmark": "pacing",
            "quick": args.quick,
            "plan": plan.__dict__,
            "results": results,
            "ratios": ratios,
            "targets": targets,
        }
    )


if __name__ == "__main__":
    main()
