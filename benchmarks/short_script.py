"""Short scripts, start to exit, beside the official SDK: the SDK's documented snippets.

Each script is one of the official SDK's documented snippets, run as its own ``python``
process with only the import changed (``from cutmeshort import CMSClient`` or ``from
cms_outbox import CMSClient``; defaults otherwise, so the outbox paces itself at 60
requests per minute and flushes in the background): one lead, five leads, the standard
flow (a lead, then a sale with the click id) and the deferred flow (a deferred lead, then
a follow-up lead and a sale without the click id, which the outbox holds until the setup
is accepted). The sandbox answers at once (0 ms latency), so the figures show each
library's own cost: interpreter start, imports, the outbox's schema check, and the exit
flush. Runs alternate between the two libraries.

Every run is checked: the server accepted exactly the script's events, stderr is empty,
and nothing is left pending in the outbox. ``first run`` times a script that creates its
outbox (the schema migration included); the target is on the everyday case, an outbox that
exists already. Target: each script within 0.3 s of the SDK's time. ``--quick`` runs
each script twice, to show the benchmark works (no figure to read).

Both libraries run as ``pip install`` leaves them, byte-compiled: an editable checkout (or
``PYTHONDONTWRITEBYTECODE=1``) would otherwise compile cms_outbox from source on every
run while the SDK's wheel came with its bytecode.
"""

from __future__ import annotations

import compileall
import importlib.util
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    TOKEN,
    emit,
    median,
    migrated_outbox,
    parse_args,
    remote_sandbox,
    table,
    target,
)

TARGET_GAP = 0.3  # seconds more than the SDK's time, at most
FIRST_RUNS = 2  # cms_outbox runs that create their outbox (timed apart); 1 with --quick

PREAMBLE = """
import os
from {module} import CMSClient

client = CMSClient(token=os.environ["CMS_BEARER_TOKEN"], host=os.environ["CMS_HOST"])
customer = os.environ["CUSTOMER"]
"""

LEADS = """
for n in range({events}):
    response = client.track_lead(
        click_id=f"id_{{n}}",
        event_name="signup_started",
        customer_external_id=f"{{customer}}_{{n}}",
    )
    assert response["status"], response
"""

STANDARD_FLOW = """
lead = client.track_lead(
    click_id="id_123",
    event_name="signup_started",
    customer_external_id=customer,
    customer_name="Jane Doe",
    customer_email="jane@example.com",
)
sale = client.track_sale(
    click_id="id_123",
    event_name="purchase_completed",
    customer_external_id=customer,
    invoice_id=f"inv_{customer}",
    amount=4999,
    currency="USD",
)
assert lead["status"] and sale["status"], (lead, sale)
"""

DEFERRED_FLOW = """
setup = client.track_lead(
    click_id="id_456", event_name="lead_captured", customer_external_id=customer, mode="deferred"
)
follow_up = client.track_lead(event_name="kyc_completed", customer_external_id=customer)
sale = client.track_sale(
    event_name="purchase_completed",
    customer_external_id=customer,
    invoice_id=f"inv_{customer}",
    amount=1500,
    currency="EUR",
)
assert setup["status"] and follow_up["status"] and sale["status"], (setup, follow_up, sale)
"""

# name: (what the table calls it, the script after the preamble, events it sends)
SCRIPTS = {
    "1_event": ("1-event script", LEADS.format(events=1), 1),
    "5_event": ("5-event script", LEADS.format(events=5), 5),
    "standard_flow": ("standard flow: lead, sale", STANDARD_FLOW, 2),
    "deferred_flow": ("deferred flow: setup, lead, sale", DEFERRED_FLOW, 3),
}


def run_script(module: str, body: str, url: str, cwd: Path, customer: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMS_")}
    env.update(CMS_BEARER_TOKEN=TOKEN, CMS_HOST=url, CUSTOMER=customer)
    code = PREAMBLE.format(module=module) + body
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0 or done.stderr:
        raise SystemExit(f"{module} script failed ({done.returncode}):\n{done.stderr}")
    return elapsed


def pending_in(outbox: Path) -> int:
    with sqlite3.connect(outbox) as conn:
        row = conn.execute(
            "SELECT count(*) FROM cms_outbox_events WHERE state NOT IN ('delivered')"
        ).fetchone()
    return int(row[0])


def byte_compile(*packages: str) -> None:
    """Write each package's bytecode, as pip does when it installs a wheel."""
    for package in packages:
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.submodule_search_locations, package
        for folder in spec.submodule_search_locations:
            compileall.compile_dir(folder, quiet=1)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    byte_compile("cutmeshort", "cms_outbox")
    runs, first_runs_of = (2, 1) if args.quick else (15, FIRST_RUNS)
    results: dict[str, Any] = {}
    rows = []
    targets = {}
    with remote_sandbox(latency=0.0) as sandbox, tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for name, (label, body, events) in SCRIPTS.items():
            times: dict[str, list[float]] = {"cutmeshort": [], "cms_outbox": []}
            first_runs = []
            for n in range(runs):
                for module in ("cutmeshort", "cms_outbox"):
                    # Each run in a directory of its own: the script's default outbox
                    # (./cms_outbox.db) is idle, as a script run now and then finds it.
                    # The first cms_outbox runs create theirs; the others find it made.
                    workdir = base / f"{module}-{name}-{n}"
                    workdir.mkdir()
                    first = module == "cms_outbox" and n < first_runs_of
                    if module == "cms_outbox" and not first:
                        migrated_outbox(workdir / "cms_outbox.db")
                    before = sandbox.summary()["accepted"]
                    elapsed = run_script(module, body, sandbox.url, workdir, workdir.name)
                    accepted = sandbox.summary()["accepted"] - before
                    if accepted != events:
                        raise SystemExit(f"{module}: server accepted {accepted}, not {events}")
                    if module == "cms_outbox":
                        left = pending_in(workdir / "cms_outbox.db")
                        if left:
                            raise SystemExit(f"{left} events left undelivered in the outbox")
                    (first_runs if first else times[module]).append(elapsed)
            sdk, ours = median(times["cutmeshort"]), median(times["cms_outbox"])
            results[name] = {
                "sdk_s": round(sdk, 3),
                "cms_outbox_s": round(ours, 3),
                "cms_outbox_first_run_s": round(median(first_runs), 3),
                "gap_s": round(ours - sdk, 3),
            }
            rows.append((label, sdk, ours, median(first_runs), ours - sdk))
            targets[f"{name}_gap_s"] = (ours - sdk, "<=", TARGET_GAP)

    table(
        f"short scripts, start to exit, median of {runs} runs (s), sandbox latency 0 ms",
        ["script", "official SDK", "cms_outbox", "cms_outbox first run", "gap"],
        rows,
    )
    print()
    checked = {name: target(name, *spec) for name, spec in targets.items()}
    emit(
        {
            "benchmark": "short_script",
            "quick": args.quick,
            "runs": runs,
            "results": results,
            "ratios": {
                name: round(r["cms_outbox_s"] / r["sdk_s"], 3) for name, r in results.items()
            },
            "targets": checked,
        }
    )


if __name__ == "__main__":
    main()
