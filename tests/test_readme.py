"""Every Python block of README.md runs as written, against the sandbox, and keeps its word.

Each block runs as a script of its own, as a reader pastes one into a file, and then the
blocks run in order in one fresh interpreter, as a reader pastes them into one session;
each time in an empty directory (the default outbox ``sqlite:///cms_outbox.db`` lands
there), with the sandbox's address and token in ``CMS_HOST`` and ``CMS_BEARER_TOKEN``.
What they promise is then checked: every event they stored was delivered (none dead, none
left pending), the sandbox refused nothing, stderr stayed empty, and each
``print(...)  # text`` printed its text (comments starting with "e.g." describe a case
that may not happen). A block that serves for ever (``run_forever()``) runs in its own
process and is stopped with SIGTERM once its outbox has nothing left to send, as an
operator would.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from cms_outbox.sandbox import Sandbox
from tests.conftest import TOKEN, wait_until

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
PROMISE = re.compile(r"^\s*print\(.*\)\s+# (?!e\.g\.)(.+)$", re.M)

SESSION = """
import sys
namespace = {"__name__": "__main__"}
for number, path in enumerate(sys.argv[1:], 1):
    code = compile(open(path).read(), f"README block {number}", "exec")
    exec(code, namespace)
"""


def blocks() -> list[str]:
    return BLOCK.findall(README.read_text())


def outbox_states(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT state, count(*) FROM cms_outbox_events GROUP BY state")
        return dict(rows.fetchall())


def child_env(sandbox: Sandbox) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("CMS_")}
    env.update(CMS_HOST=sandbox.url, CMS_BEARER_TOKEN=TOKEN, PYTHONUNBUFFERED="1")
    return env


def test_the_readme_has_python_blocks() -> None:
    assert len(blocks()) >= 3


def test_every_readme_block_runs_and_delivers_what_it_stores(tmp_path: Path) -> None:
    session = [code for code in blocks() if "run_forever(" not in code]
    paths = []
    for number, code in enumerate(session, 1):
        path = tmp_path / f"block{number}.py"
        path.write_text(code)
        paths.append(str(path))
    workdir = tmp_path / "work"
    workdir.mkdir()
    with Sandbox(token=TOKEN) as sandbox:
        done = subprocess.run(
            [sys.executable, "-c", SESSION, *paths],
            cwd=workdir,
            env=child_env(sandbox),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert (done.returncode, done.stderr) == (0, ""), done.stderr
        printed = done.stdout.splitlines()
        for code in session:
            for promise in PROMISE.findall(code):
                assert promise.strip() in printed, (promise, printed)
        stored = outbox_states(workdir / "cms_outbox.db")
        assert set(stored) == {"delivered"}, stored  # none dead, none left pending
        assert len(sandbox.accepted) == stored["delivered"]
        assert [r.status for r in sandbox.requests if (r.status or 0) >= 400] == []


@pytest.mark.parametrize(
    "code", [c for c in blocks() if "run_forever(" not in c], ids=lambda c: c.splitlines()[0]
)
def test_each_readme_block_runs_as_its_own_script(code: str, tmp_path: Path) -> None:
    # A reader pastes one block into a file of its own: it must not lean on another block.
    with Sandbox(token=TOKEN) as sandbox:
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env=child_env(sandbox),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert (done.returncode, done.stderr) == (0, ""), done.stderr


@pytest.mark.parametrize("code", [c for c in blocks() if "run_forever(" in c])
def test_a_serving_block_delivers_and_stops_on_sigterm(code: str, tmp_path: Path) -> None:
    url = re.search(r'database_url="(sqlite:///[^"]+)"', code)
    assert url is not None, "a serving block names its outbox"
    outbox = tmp_path / url.group(1).removeprefix("sqlite:///")
    with Sandbox(token=TOKEN) as sandbox:
        env = child_env(sandbox)
        seed = (
            "from cms_outbox import CMSClient\n"
            f"with CMSClient(database_url={url.group(1)!r}, flush='off') as client:\n"
            "    client.track_lead('signup', 'user_1', click_id='c1')\n"
        )
        subprocess.run([sys.executable, "-c", seed], cwd=tmp_path, env=env, check=True)
        process = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert wait_until(lambda: outbox_states(outbox) == {"delivered": 1}, timeout=60)
        finally:
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr
        assert len(sandbox.accepted) == 1


def test_the_sdk_differences_say_how_a_currency_is_sent() -> None:
    """`currency="usd"` is upper-cased: a difference from the SDK, which sends it as given."""
    section = README.read_text().split("## Coming from the official SDK", 1)[1]
    section = section.split("\n## ", 1)[0]
    [row] = [line for line in section.splitlines() if line.startswith("| `currency` |")]
    assert '`"usd"` goes out as `"USD"`' in row and "sent as given" in row
