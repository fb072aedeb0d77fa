"""``cms-outbox health`` flags dead and blocked events: each is a lost conversion until acted on.

By default a dead or blocked event that went wrong since the last operator ``retry`` or
``purge`` is unhealthy; ``--max-dead`` / ``--max-blocked`` set a count instead, or
``any``. The shipped health unit's command runs here as systemd runs it.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cms_outbox import CMSClient
from cms_outbox.cli import main
from cms_outbox.sandbox import Sandbox
from cms_outbox.status import outbox_status
from tests.conftest import TOKEN
from tests.example_servers import SCRIPTS, app_env

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


@pytest.fixture
def client(sqlite_url: str, sandbox: Sandbox) -> Iterator[CMSClient]:
    with CMSClient(TOKEN, sandbox.url, sqlite_url, flush="off", rate_limit=None) as client:
        yield client


def lose(client: CMSClient, sandbox: Sandbox, dead: int, blocked: int, tag: str) -> None:
    """``dead`` rejected leads; then a dead deferred setup with ``blocked`` follow-ups."""
    sandbox.set_faults(force_status=422, force_count=dead + (1 if blocked else 0))
    for n in range(dead):
        client.track_lead("signup", f"{tag}_rejected_{n}", click_id=f"clk_{tag}_{n}")
    if blocked:
        client.track_lead("signup", f"{tag}_held", click_id=f"clk_{tag}_held", mode="deferred")
    client.flush(30)
    sandbox.clear_faults()
    for n in range(blocked):
        client.track_lead(f"step_{n}", f"{tag}_held")
    client.flush(30)


def health(capsys: pytest.CaptureFixture[str], url: str, *options: str) -> tuple[int, Any]:
    capsys.readouterr()
    code = main(["health", "--json", "--database-url", url, *options])
    return code, json.loads(capsys.readouterr().out)


def test_dead_and_blocked_events_are_unhealthy_until_a_retry_or_purge(
    client: CMSClient, sandbox: Sandbox, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert health(capsys, sqlite_url)[0] == 0
    lose(client, sandbox, dead=8, blocked=2, tag="a")  # the setup is the 9th dead
    assert client.store.count_by_state() == {"dead": 9, "blocked": 2}
    code, verdict = health(capsys, sqlite_url)
    assert code == 1
    assert verdict["reasons"] == [
        "9 dead events, never retried or purged: see `cms-outbox events --state dead`, "
        "then retry or purge them",
        "2 blocked events, never retried or purged: they wait for a dead deferred setup: "
        "see `cms-outbox events --state blocked`, then retry the setup",
    ]
    status = outbox_status(client.engine)
    assert (status.acknowledged_at, status.new_dead, status.new_blocked) == (None, 9, 2)

    # The hourly retention purge is housekeeping: it acknowledges nothing.
    client.purge_expired()
    assert health(capsys, sqlite_url)[0] == 1

    # The operator purges the rejected leads (dry run first: that acknowledges nothing).
    capsys.readouterr()
    assert main(["purge", "--dead-older-than", "0", "--dry-run", "--database-url", sqlite_url]) == 0
    assert health(capsys, sqlite_url)[0] == 1
    assert main(["purge", "--dead-older-than", "0", "--database-url", sqlite_url]) == 0
    code, verdict = health(capsys, sqlite_url)
    assert (code, verdict["reasons"]) == (0, []), verdict
    assert verdict["summary"].startswith("ok: 0 to send, 2 blocked, 0 dead (none new since")

    # A new loss after the acknowledgement is flagged again, and only it.
    lose(client, sandbox, dead=1, blocked=0, tag="b")
    code, verdict = health(capsys, sqlite_url)
    assert code == 1 and len(verdict["reasons"]) == 1
    since = r"1 new dead event since the last retry or purge \(20\d\d-"
    assert re.match(since, verdict["reasons"][0])
    assert outbox_status(client.engine).new_blocked == 0  # the old ones were acknowledged


def test_a_retry_acknowledges_and_a_follow_up_behind_an_old_dead_setup_is_new(
    client: CMSClient, sandbox: Sandbox, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lose(client, sandbox, dead=1, blocked=1, tag="a")
    rejected = client.store.count_by_state()
    assert rejected == {"dead": 2, "blocked": 1}
    assert client.retry(dead=True) == 3  # the setup's follow-up comes back with it
    sandbox.set_faults(force_status=422, force_count=1)
    client.flush(30)  # the first of them dies again, after the acknowledgement
    sandbox.clear_faults()
    status = outbox_status(client.engine)
    assert status.acknowledged_at is not None
    assert status.new_dead == 1 and health(capsys, sqlite_url)[0] == 1

    client.retry(dead=True)  # acknowledged; the retried one is delivered
    client.flush(30)
    assert outbox_status(client.engine).new_dead == 0
    sandbox.set_faults(force_status=422, force_count=1)
    client.track_lead("signup", "c_held", click_id="clk_c", mode="deferred")
    client.flush(30)
    sandbox.clear_faults()
    client.retry(["does-not-exist"])  # an acknowledgement: the dead setup is old now
    client.track_lead("login", "c_held")  # a new conversion, held behind the old dead setup
    client.flush(30)
    status = outbox_status(client.engine)
    assert (status.new_dead, status.new_blocked) == (0, 1)
    code, verdict = health(capsys, sqlite_url)
    assert code == 1 and verdict["reasons"][0].startswith("1 new blocked event since")


def test_limits_tune_the_check(
    client: CMSClient, sandbox: Sandbox, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lose(client, sandbox, dead=2, blocked=2, tag="a")
    assert health(capsys, sqlite_url, "--max-dead", "3", "--max-blocked", "2")[0] == 0
    code, verdict = health(capsys, sqlite_url, "--max-dead", "2", "--max-blocked", "1")
    assert code == 1
    assert [reason.split(":")[0] for reason in verdict["reasons"]] == [
        "3 dead events (limit 2)",
        "2 blocked events (limit 1)",
    ]
    assert health(capsys, sqlite_url, "--max-dead", "any", "--max-blocked", "ANY")[0] == 0
    assert main(["health", "--max-dead", "some", "--database-url", sqlite_url]) == 2
    assert "invalid limit 'some': use a number, 'new' or 'any'" in capsys.readouterr().err


def test_status_shows_what_is_new_since_the_acknowledgement(
    client: CMSClient, sandbox: Sandbox, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lose(client, sandbox, dead=1, blocked=1, tag="a")
    capsys.readouterr()
    assert main(["status", "--json", "--database-url", sqlite_url]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["acknowledged_at"], status["new_dead"], status["new_blocked"]) == (None, 2, 1)
    assert main(["status", "--database-url", sqlite_url]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^dead\s+2\s+2 new \(no retry or purge yet\)$", text, re.M), text
    assert re.search(r"^blocked\s+1\s+1 new \(no retry", text, re.M), text


def test_the_health_unit_command_flags_dead_events_without_the_token(
    client: CMSClient, sandbox: Sandbox, sqlite_url: str, tmp_path: Path
) -> None:
    unit = (DEPLOY / "cms-outbox-health.service").read_text()
    command = re.search(r"^ExecStart=cms-outbox (.+)$", unit, re.M)
    env_files = re.findall(r"^EnvironmentFile=(.+)$", unit, re.M)
    assert command is not None and env_files == ["/etc/cms-outbox/outbox.env"]
    outbox_env = tmp_path / "outbox.env"  # as the daemon unit's comment says to fill it in
    outbox_env.write_text(f"CMS_OUTBOX_URL={sqlite_url}\n")
    env = app_env("unused")
    del env["CMS_OUTBOX_URL"]
    for line in outbox_env.read_text().splitlines():
        name, value = line.split("=", 1)
        env[name] = value

    def run_unit() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPTS / "cms-outbox"), *command.group(1).split()],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    healthy = run_unit()
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    lose(client, sandbox, dead=1, blocked=0, tag="a")
    failed = run_unit()
    assert failed.returncode == 1
    assert failed.stdout.startswith("unhealthy: 1 dead event, never retried or purged")
    assert "CMS_BEARER_TOKEN" not in env


def test_the_help_names_every_exit_code_health_gives(capsys: pytest.CaptureFixture[str]) -> None:
    """The command list said "exit 0 when healthy, 1 otherwise"; health also exits 6."""
    assert main(["--help"]) == 0
    [listed] = [line for line in capsys.readouterr().out.splitlines() if "health  " in line]
    assert "1 or 6" in listed, listed
    assert main(["health", "--help"]) == 0
    assert "Exit 6 instead of 1" in " ".join(capsys.readouterr().out.split())
