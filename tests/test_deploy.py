"""The deployment files run as an operator runs them: the container entrypoint as a script
in a scratch directory (there is no container engine here), the systemd units through
``systemd-analyze`` and their commands as the units run them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import pytest

from cms_outbox import CMSClient
from cms_outbox.sandbox import Sandbox
from tests.conftest import wait_until
from tests.example_servers import (
    DELIVERY,
    SCRIPTS,
    STARTUP,
    Server,
    accepted_at_least,
    app_env,
    launch,
)

__all__ = ["launch"]  # the fixture, shared with the examples' tests

pytestmark = pytest.mark.slow

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
ENTRYPOINT = DEPLOY / "docker-entrypoint.sh"


# -- the container entrypoint ----------------------------------------------------------------


def test_docker_entrypoint_migrates_runs_the_daemon_and_stops_on_sigterm(
    sqlite_url: str, sandbox: Sandbox, launch: Callable[..., Server]
) -> None:
    env = app_env(sqlite_url, sandbox)
    entrypoint = str(ENTRYPOINT)
    daemon = launch(
        "entrypoint", ["bash", entrypoint, "--rate-limit", "0", "--interval", "0.2"], env
    )
    assert wait_until(lambda: "cms-outbox run: delivering" in daemon.log(), timeout=STARTUP), (
        daemon.log()
    )
    assert daemon.process.poll() is None
    with CMSClient(database_url=sqlite_url, flush="off") as app:
        ids = [app.track_lead("signup", f"user_{n}", click_id="clk").event_id for n in range(20)]
    assert accepted_at_least(sandbox, 20), daemon.log()
    assert all(sandbox.accepted_count(event_id) == 1 for event_id in ids)

    # The HEALTHCHECK command in the comment, run through the entrypoint (not `run`).
    script = ENTRYPOINT.read_text()
    healthcheck = re.search(r"HEALTHCHECK .*\n#\s+CMD cms-outbox (.+)", script)
    assert healthcheck is not None and healthcheck.group(1) == "health --max-pending-age 10m"
    health = subprocess.run(
        ["bash", entrypoint, *healthcheck.group(1).split(), "--json"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert health.returncode == 0, health.stdout + health.stderr
    assert json.loads(health.stdout)["healthy"] is True

    assert daemon.stop(timeout=30) == 0, daemon.log()  # exec: the daemon itself got SIGTERM
    assert "cms-outbox run: stopped" in daemon.log()


@pytest.mark.parametrize("form", ["--database-url URL", "--database-url=URL"])
def test_entrypoint_migrates_and_runs_the_database_its_flag_names(
    tmp_path: Path, sandbox: Sandbox, launch: Callable[..., Server], form: str
) -> None:
    workdir, volume = tmp_path / "workdir", tmp_path / "data"
    workdir.mkdir()
    volume.mkdir()
    url = f"sqlite:///{volume / 'x.db'}"
    env = app_env(url, sandbox)
    del env["CMS_OUTBOX_URL"]  # only the flag names it
    flag = ["--database-url", url] if " " in form else [f"--database-url={url}"]
    daemon = launch(
        "entrypoint",
        [str(ENTRYPOINT), *flag, "--rate-limit", "0", "--interval", "0.2"],
        env,
        cwd=workdir,
    )
    assert wait_until(lambda: "cms-outbox run: delivering" in daemon.log(), timeout=STARTUP), (
        daemon.log()
    )
    assert f"{url}: outbox schema upgraded from none" in daemon.log()
    assert list(workdir.iterdir()) == []  # no stray cms_outbox.db where it was started
    with CMSClient(database_url=url, flush="off", auto_migrate=False) as app:
        event_id = app.track_lead("signup", "user_1", click_id="clk").event_id
    assert sandbox.wait_for(lambda sb: sb.accepted_count(event_id) == 1, timeout=DELIVERY)
    assert daemon.stop(timeout=30) == 0, daemon.log()
    assert list(workdir.iterdir()) == []


def run_entrypoint(
    args: list[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENTRYPOINT), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("case", "url", "token", "named"),
    [
        ("no database", None, "t", "CMS_OUTBOX_URL"),
        ("relative SQLite path", "sqlite:///outbox.db", "t", "sqlite:////data/outbox.db"),
        ("no token", "sqlite:///{tmp}/x.db", None, "CMS_BEARER_TOKEN"),
    ],
)
def test_entrypoint_refuses_to_start_without_what_it_requires(
    tmp_path: Path, case: str, url: str | None, token: str | None, named: str
) -> None:
    env = app_env("unused")
    del env["CMS_OUTBOX_URL"]
    if url is not None:
        env["CMS_OUTBOX_URL"] = url.format(tmp=tmp_path)
    if token is not None:
        env["CMS_BEARER_TOKEN"] = token
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    result = run_entrypoint([], env, workdir)
    assert result.returncode == 2, (case, result.stdout, result.stderr)
    message = result.stderr.strip()
    assert message.startswith("docker-entrypoint.sh: error: ") and named in message, message
    assert "\n" not in message and "Traceback" not in message
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == [workdir] and list(workdir.iterdir()) == []


def test_entrypoint_exits_3_when_the_database_is_unreachable(tmp_path: Path) -> None:
    env = app_env("postgresql+psycopg://postgres@127.0.0.1:9/outbox")  # discard: closed
    env["CMS_BEARER_TOKEN"] = "t"
    result = run_entrypoint([], env, tmp_path)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "cannot connect to the database server" in result.stderr
    assert "Traceback" not in result.stderr and "cms-outbox run" not in result.stderr


def test_entrypoint_runs_another_command_as_it_is(tmp_path: Path) -> None:
    env = app_env("unused")
    del env["CMS_OUTBOX_URL"]
    result = run_entrypoint(["migrate", "--help"], env, tmp_path)  # `docker run IMAGE migrate`
    assert result.returncode == 0 and "usage: cms-outbox migrate" in result.stdout
    assert list(tmp_path.iterdir()) == []


# -- systemd units -----------------------------------------------------------------------------


HARDENING = (
    "NoNewPrivileges", "CapabilityBoundingSet", "AmbientCapabilities", "ProtectSystem",
    "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateMounts", "PrivateUsers",
    "ProtectHostname", "ProtectClock", "ProtectKernelTunables", "ProtectKernelModules",
    "ProtectKernelLogs", "ProtectControlGroups", "ProtectProc", "ProcSubset",
    "RestrictAddressFamilies", "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID",
    "RemoveIPC", "LockPersonality", "SystemCallArchitectures", "SystemCallFilter",
    "SystemCallErrorNumber", "UMask",
)  # fmt: skip
EXPOSURE = 1.5  # systemd-analyze security's overall exposure (0 to 10), at most


def unit_settings(name: str) -> dict[str, list[str]]:
    """Each key of a unit file with its values, in order (a key may repeat)."""
    settings: dict[str, list[str]] = {}
    for line in (DEPLOY / name).read_text().splitlines():
        if "=" in line and line[:1].isalpha():
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing: .ci/run installs the systemd package")
        pytest.skip("systemd-analyze is not installed: the units were not analyzed")
    return path


def installed_units(tmp_path: Path) -> list[Path]:
    """The units as installed: ``verify`` insists that the command exists."""
    units = []
    for source in sorted(DEPLOY.glob("cms-outbox*.*")):
        target = tmp_path / source.name
        target.write_text(
            re.sub(r"^(Exec\w*=)cms-outbox", rf"\g<1>{SCRIPTS / 'cms-outbox'}",
                   source.read_text(), flags=re.M)
        )  # fmt: skip
        units.append(target)
    return units


def test_systemd_units_are_valid_and_stop_with_sigterm(tmp_path: Path) -> None:
    settings = unit_settings("cms-outbox.service")
    assert settings["ExecStart"] == ["cms-outbox run"]
    assert settings["KillSignal"] == ["SIGTERM"]
    assert settings["Restart"] == ["on-failure"]
    assert int(settings["TimeoutStopSec"][0]) >= 20  # longer than one HTTP attempt plus margin
    analyze = systemd_analyze()
    verify = subprocess.run(
        [analyze, "verify", *map(str, installed_units(tmp_path))],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    # Unknown keys and bad values are only warnings: any output is a failure.
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")


def test_only_the_daemon_loads_the_token() -> None:
    daemon, health = unit_settings("cms-outbox.service"), unit_settings("cms-outbox-health.service")
    assert daemon["EnvironmentFile"] == ["/etc/cms-outbox/outbox.env", "/etc/cms-outbox/token.env"]
    assert health["EnvironmentFile"] == ["/etc/cms-outbox/outbox.env"]
    documented = (DEPLOY / "cms-outbox.service").read_text()
    token_file = documented.index("/etc/cms-outbox/token.env (root-owned, mode 0600)")
    assert documented.index("CMS_BEARER_TOKEN=") > token_file  # listed under token.env
    assert "CMS_BEARER_TOKEN" not in (DEPLOY / "cms-outbox-health.service").read_text()


@pytest.mark.parametrize("unit", ["cms-outbox.service", "cms-outbox-health.service"])
def test_systemd_units_are_hardened_alike(unit: str, tmp_path: Path) -> None:
    settings, daemon = unit_settings(unit), unit_settings("cms-outbox.service")
    assert {key: settings.get(key) for key in HARDENING} == {
        key: daemon.get(key) for key in HARDENING
    }
    assert all(daemon.get(key) for key in HARDENING if key != "CapabilityBoundingSet")
    assert daemon["CapabilityBoundingSet"] == [""] and daemon["AmbientCapabilities"] == [""]
    installed = next(path for path in installed_units(tmp_path) if path.name == unit)
    security = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", f"--threshold={EXPOSURE * 10:.0f}",
         "--no-pager", str(installed)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    level = re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout)
    assert level is not None, security.stdout + security.stderr
    print(f"{unit}: exposure {level.group(1)}")
    assert float(level.group(1)) <= EXPOSURE, security.stdout
    assert security.returncode == 0, security.stdout + security.stderr
