"""The processes the reliability scenarios start, kill and restart.

Run as ``python programs.py <program> '<json arguments>'``, or through the launcher
(``python programs.py launcher``): it imports ``cms_outbox`` once, then forks one child
per JSON command line read on stdin and answers each with the child's pid. A restart
then costs a fork (milliseconds) instead of a fresh interpreter importing SQLAlchemy,
Alembic and APScheduler (1 to 3 s on a busy 2-core CI machine); the child is still a
real process that builds its own ``CMSClient`` and dies for real under SIGKILL.

Every program writes what it did to stdout, one line per fact, flushed as soon as the
fact is true (an event id is printed only after ``track_*`` returned).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
import traceback
from typing import Any, Callable

from cms_outbox import CMSClient

CUSTOMERS = 200
CURRENCIES = ("USD", "eur", "Gbp", "JPY")


def story(seed: int, events: int, customers: int) -> list[dict[str, Any]]:
    """A seeded mix of calls: deferred setups and their follow-ups (no click_id), standard
    leads and sales with a click_id, interleaved across customers.

    Each customer has ``events // customers`` events (the first ones one more each for the
    remainder). A deferred customer's first event is its setup; its later events, leads
    and sales alike, omit ``click_id`` (sending it again would be a duplicate attribution).
    """
    rng = random.Random(seed)
    deferred = {c for c in range(customers) if rng.random() < 0.4}
    plan = [n % customers for n in range(events)]
    rng.shuffle(plan)
    seen: set[int] = set()
    calls: list[dict[str, Any]] = []
    for n, c in enumerate(plan):
        customer = f"customer-{seed}-{c:03d}"
        first = c not in seen
        seen.add(c)
        click = f"click-{seed}-{c:03d}"
        if c in deferred and first:
            role, kind = "setup", "lead"
            args: dict[str, Any] = {"click_id": click, "mode": "deferred"}
        else:
            role = "followup" if c in deferred else "standard"
            kind = "sale" if rng.random() < 0.3 else "lead"
            args = {} if c in deferred else {"click_id": click}
            if kind == "sale":
                args.update(
                    invoice_id=f"inv-{seed}-{n:06d}",
                    amount=rng.randrange(0, 10**6),
                    currency=rng.choice(CURRENCIES),
                )
        name = {"setup": "lead_captured", "lead": "step", "sale": "purchase"}
        calls.append(
            {
                "role": role,
                "kind": kind,
                "event_name": name["setup" if role == "setup" else kind],
                "customer_external_id": customer,
                **args,
            }
        )
    return calls


def call(client: CMSClient, spec: dict[str, Any]) -> str:
    """Make one ``track_*`` call from a ``story`` entry; returns the event id."""
    arguments = {k: v for k, v in spec.items() if k not in ("role", "kind")}
    if spec["kind"] == "sale":
        return client.track_sale(**arguments).event_id
    return client.track_lead(**arguments).event_id


def say(*parts: object) -> None:
    sys.stdout.write(" ".join(str(part) for part in parts) + "\n")
    sys.stdout.flush()


# -- programs ------------------------------------------------------------------------


def writer(database_url: str, seed: int, events: int, customers: int = CUSTOMERS,
           durability: str = "full") -> None:  # fmt: skip
    """Enqueue a ``story``; print ``<customer> <event_id> <role>`` per event, then ``done N``."""
    client = CMSClient(database_url=database_url, flush="off", durability=durability)
    for spec in story(seed, events, customers):
        event_id = call(client, spec)
        say(spec["customer_external_id"], event_id, spec["role"])
    client.close()
    say("done", events)


def lead_loop(database_url: str, customer: str) -> None:
    """Call ``track_lead`` forever; print each event id once the call has returned."""
    client = CMSClient(database_url=database_url, flush="off")
    say("ready")
    n = 0
    while True:
        n += 1
        result = client.track_lead(f"step-{n}", customer, click_id=f"click-{customer}")
        say(result.event_id)


def flusher(database_url: str, host: str, **options: Any) -> None:
    """A background ``CMSClient`` flusher (token from ``CMS_BEARER_TOKEN``) until killed."""
    options.setdefault("rate_limit", None)
    client = CMSClient(host=host, database_url=database_url, flush="background", **options)
    say("ready", os.getpid())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # close(): a graceful final flush
    try:
        while True:
            time.sleep(3600)
    finally:
        client.close()


def contention_writer(database_url: str, writer: int, events: int) -> None:
    """Enqueue ``events`` leads and sales for customer ``writer-<n>``; print ``stored <n>``.

    Every id goes to stdout at the end, so the test can compare with the sandbox.
    """
    client = CMSClient(database_url=database_url, flush="off")
    ids = []
    for n in range(events):
        customer = f"writer-{writer}-{n % 10}"
        if n % 4 == 3:
            result = client.track_sale(
                "purchase", customer, f"inv-{writer}-{n}", n, "USD", click_id=f"c-{writer}"
            )
        else:
            result = client.track_lead(f"step-{n}", customer, click_id=f"c-{writer}")
        assert result.success, result
        ids.append(result.event_id)
    client.close()
    say("ids", json.dumps(ids))
    say("stored", len(ids))


PROGRAMS: dict[str, Callable[..., None]] = {
    "contention_writer": contention_writer,
    "flusher": flusher,
    "lead_loop": lead_loop,
    "writer": writer,
}


# -- the launcher ---------------------------------------------------------------------


def launcher() -> None:
    """Fork a child per command line ``{"program", "args", "stdout"}``; answer its pid.

    Children are reaped by the kernel (SIGCHLD ignored), so a killed child vanishes from
    ``/proc`` at once. The launcher itself holds no engine, thread or lock to inherit.
    """
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    say("launcher", os.getpid())
    for line in sys.stdin:
        command = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(command)  # never returns
        say(pid)
    # stdin closed: the test run is over (or was killed). Take our children with us: the
    # launcher runs in a session of its own, so its process group is exactly them and us.
    os.killpg(os.getpgid(0), signal.SIGKILL)


def _child(command: dict[str, Any]) -> None:
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        out = os.open(command["stdout"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(out, 1)
        os.dup2(out, 2)
        sys.stdin = open(os.devnull)
        PROGRAMS[command["program"]](**command["args"])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main(argv: list[str]) -> None:
    if argv[0] == "launcher":
        launcher()
    else:
        PROGRAMS[argv[0]](**json.loads(argv[1]))


if __name__ == "__main__":
    main(sys.argv[1:])
