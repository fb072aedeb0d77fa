"""``cms-outbox`` help and usage, and its errors: one line and a documented exit code."""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sysconfig
from pathlib import Path

import pytest

from cms_outbox.cli import build_parser, main
from tests.cli_runs import (
    Run,
    as_json,
    assert_one_line_error,
    cli,
    inproc,
    migrated,
)

__all__ = ["inproc", "migrated"]  # the fixtures: pytest finds them here

COMMANDS = [
    "run", "flush", "status", "events", "show", "health", "retry", "purge", "migrate",
    "sandbox", "demo", "ui",
]  # fmt: skip


# -- help and usage ----------------------------------------------------------------------


def test_every_command_is_registered() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(subparsers.choices) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command_has_an_example(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    examples = text.split("examples:", 1)[1]
    assert f"cms-outbox {command}" in examples
    assert ("--database-url" in text) == (command != "sandbox")  # the sandbox has no outbox


def test_top_level_help_documents_exit_codes_and_commands() -> None:
    result = cli("--help")
    assert result.returncode == 0
    assert "exit codes:" in result.stdout
    for code in ("0", "1", "2", "3", "4"):
        assert f"\n  {code} " in result.stdout
    for command in COMMANDS:
        assert command in result.stdout
    assert "CMS_BEARER_TOKEN" in result.stdout


def test_console_script_is_installed() -> None:
    script = Path(sysconfig.get_path("scripts")) / "cms-outbox"
    if not script.exists():
        pytest.skip(f"no console script at {script}")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CMS_")}
    result = subprocess.run(
        [str(script), "status", "--help"], capture_output=True, text=True, env=environment
    )
    assert result.returncode == 0
    assert "examples:" in result.stdout


def test_no_command_and_bad_arguments_exit_2(inproc: Run) -> None:
    assert cli().returncode == 2
    result = inproc("purge", "--delivered-older-than", "soon")
    assert result.returncode == 2
    assert "invalid duration" in result.stderr


def test_a_mistyped_option_points_at_its_command_help(inproc: Run) -> None:
    """It pointed at `cms-outbox --help`, which does not list the command's options."""
    result = inproc("status", "--jsn")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "cms-outbox status: error: unrecognized arguments: --jsn (see `cms-outbox status --help`)"
    )


def test_the_token_is_never_a_flag(inproc: Run) -> None:
    result = inproc("run", "--token", "secret")
    assert result.returncode == 2
    assert "unrecognized arguments" in result.stderr


# -- errors: one line and a documented exit code --------------------------------------------


def test_wrong_database_url_is_a_configuration_error(inproc: Run) -> None:
    line = assert_one_line_error(cli("status", "--database-url", "nosuchdb://x/y"), 2)
    assert "database URL" in line
    assert_one_line_error(inproc("status", "--database-url", "sqlite://"), 2)


def test_a_database_url_with_a_bad_port_is_one_line_without_its_password(inproc: Run) -> None:
    """It was a traceback ending in SQLAlchemy's ValueError, exit code 1."""
    for command in (["status"], ["flush"]):
        result = inproc(*command, "--database-url", "postgresql://u:sekrit@db:abc/app", token="t")
        line = assert_one_line_error(result, 2)
        assert "the port is not a number" in line
        assert "sekrit" not in line


def test_missing_database_file_is_reported_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    line = assert_one_line_error(cli("status", "--database-url", f"sqlite:///{path}"), 3)
    assert "cms-outbox migrate" in line
    assert not path.exists()


def test_unmigrated_database_is_not_migrated_implicitly(tmp_path: Path, inproc: Run) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE app (id INTEGER)")
    url = f"sqlite:///{path}"
    line = assert_one_line_error(cli("status", "--database-url", url), 3)
    assert "cms-outbox migrate" in line
    for command in (["events"], ["show", "x"], ["health"], ["retry", "--dead"], ["purge"]):
        line = assert_one_line_error(inproc(*command, "--database-url", url), 3)
        assert "cms-outbox migrate" in line
    with sqlite3.connect(path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert tables == {"app"}


def test_database_newer_than_the_code(migrated: str, inproc: Run) -> None:
    path = migrated.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE cms_outbox_alembic_version SET version_num = 'fffffffff'")
    assert "newer" in assert_one_line_error(cli("status", "--database-url", migrated), 3)
    assert "newer" in assert_one_line_error(inproc("migrate", "--database-url", migrated), 3)


def test_missing_token_for_flush_and_run(migrated: str, inproc: Run) -> None:
    line = assert_one_line_error(cli("flush", "--database-url", migrated), 2)
    assert "CMS_BEARER_TOKEN" in line
    line = assert_one_line_error(inproc("run", "--database-url", migrated), 2)
    assert "CMS_BEARER_TOKEN" in line


def test_verbose_shows_the_traceback() -> None:
    result = cli("status", "--verbose", "--database-url", "nosuchdb://x/y")
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("cms-outbox: error: ")


def test_database_url_from_the_environment(migrated: str) -> None:
    status = as_json(cli("status", "--json", env={"CMS_OUTBOX_URL": migrated}))
    assert status["database"] == migrated
