"""No lifecycle race prints anything: closing at once, twice, in a pass, after fork, on a signal."""

from __future__ import annotations

import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cms_outbox.sandbox import Sandbox
from tests.conftest import TOKEN
from tests.lifecycle_scripts import child_env, shared_sandbox

__all__ = ["shared_sandbox"]  # the fixture: pytest finds it here


RUNS = 50  # per race
AT_ONCE = 3  # subprocesses at a time: the machine has two shared cores


# -- the races ------------------------------------------------------------------------------

RACES = """
import os, sys
from cms_outbox import CMSClient

host, base = sys.argv[1], sys.argv[2]
# A generous final flush: on a loaded machine the verdict must not depend on its speed.
options = dict(token=os.environ["TOKEN"], host=host, rate_limit=None, final_flush_timeout=60)

# close right after construction, and twice
CMSClient(database_url=f"sqlite:///{base}-a.db", **options).close()
client = CMSClient(database_url=f"sqlite:///{base}-b.db", **options)
client.close()
client.close()

# close during a pass: the background flusher is sending when close() comes
client = CMSClient(database_url=f"sqlite:///{base}-c.db", **options)
ids = [client.track_lead("signup", f"user_{n}", click_id=f"c_{n}").event_id for n in range(20)]
client.close()
with CMSClient(database_url=f"sqlite:///{base}-c.db", flush="off") as check:
    print("delivered", sum(check.result(i).state.value == "delivered" for i in ids))

# exit after fork: parent and child each leave with an open client, just used
client = CMSClient(database_url=f"sqlite:///{base}-d.db", **options)
client.track_lead("signup", "parent", click_id="p")
pid = os.fork()
if pid == 0:
    client.track_lead("signup", "child", click_id="k")
    sys.exit(0)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
CMSClient(database_url=f"sqlite:///{base}-e.db", **options)  # and exit right after it
"""

SIGNAL = """
import os, signal, sys
from cms_outbox import CMSClient

client = CMSClient(token=os.environ["TOKEN"], host=sys.argv[1],
                   database_url=f"sqlite:///{sys.argv[2]}.db", rate_limit=None,
                   final_flush_timeout=60)

def stop(signum, frame):
    client.close()
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
n = 0
while True:
    client.track_lead("signup", f"user_{n % 5}", click_id=f"c_{n}")
    n += 1
    if n == 3:
        print("ready", flush=True)
"""


def race_once(n: int, host: str, tmp_path: Path) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-c", RACES, host, str(tmp_path / f"run{n}")],
        cwd=tmp_path,
        env=child_env(TOKEN=TOKEN),
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done.returncode, done.stdout, done.stderr


@pytest.mark.slow
def test_no_lifecycle_race_prints_anything(shared_sandbox: Sandbox, tmp_path: Path) -> None:
    with ThreadPoolExecutor(AT_ONCE) as pool:
        outcomes = list(pool.map(lambda n: race_once(n, shared_sandbox.url, tmp_path), range(RUNS)))
    for code, stdout, stderr in outcomes:
        assert (code, stderr) == (0, ""), stderr
        assert stdout.splitlines() == ["delivered 20", "child 0"], stdout
    # Every event tracked before an exit was delivered by that exit's final flush.
    keys = {a.idempotency_key for a in shared_sandbox.accepted}
    assert len(keys) == RUNS * (20 + 2)


def signal_once(n: int, host: str, tmp_path: Path) -> tuple[int | None, str, str]:
    process = subprocess.Popen(
        [sys.executable, "-c", SIGNAL, host, str(tmp_path / f"sig{n}")],
        cwd=tmp_path,
        env=child_env(TOKEN=TOKEN),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    ready = process.stdout.readline()  # killed mid-work: it is tracking as fast as it can
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=600)
    return process.returncode, ready + stdout, stderr


@pytest.mark.slow
def test_close_from_a_signal_handler_prints_nothing(
    shared_sandbox: Sandbox, tmp_path: Path
) -> None:
    with ThreadPoolExecutor(AT_ONCE) as pool:
        outcomes = list(
            pool.map(lambda n: signal_once(n, shared_sandbox.url, tmp_path), range(RUNS))
        )
    for code, stdout, stderr in outcomes:
        assert (code, stdout, stderr) == (0, "ready\n", "")
