"""The small things a newcomer trips over: help that tells the truth, one-line errors that
say what to do, and no library's internal text in what the user reads."""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cms_outbox import CMSClient, demo
from cms_outbox.cli import build_parser, main
from cms_outbox.transport import Transport
from tests.conftest import TOKEN

REPO = Path(__file__).resolve().parent.parent
URLLIB3_TEXT = ("HTTPConnectionPool", "Max retries exceeded", "NewConnectionError")


def option_help(command: str, dest: str) -> str:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a.choices, dict))
    assert isinstance(commands.choices, dict)
    sub = commands.choices[command]
    return str(next(a.help for a in sub._actions if a.dest == dest))


def test_demo_help_does_not_promise_cms_outbox_url() -> None:
    said = option_help("demo", "database_url")
    assert "CMS_OUTBOX_URL" not in said and "temporary" in said


def test_sandbox_refuses_a_database_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sandbox", "--database-url", "sqlite:///x.db"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["cms-outbox: error: the sandbox keeps its state in memory: "
                   "--database-url does not apply to it"]  # fmt: skip


def test_sandbox_help_does_not_offer_a_database_url() -> None:
    assert option_help("sandbox", "database_url") == argparse.SUPPRESS


def test_the_top_level_help_does_not_offer_create_directories(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """It belongs to migrate and run, the commands that create an outbox."""
    assert main(["--help"]) == 0
    said = capsys.readouterr().out
    assert "[--create-directories]" not in said and "  --create-directories" not in said
    assert "`migrate --create-directories` creates it" in said


@pytest.mark.parametrize("command", ["status", "sandbox", "demo"])
def test_create_directories_elsewhere_says_where_it_belongs(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'outbox.db'}"
    assert main([command, "--database-url", url, "--create-directories"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"cms-outbox {command}: error: --create-directories is an option of `migrate` and "
        "`run` only, the commands that create an outbox: `cms-outbox migrate "
        f"--create-directories` (see `cms-outbox {command} --help`)"
    ]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["migrate", "run"])
def test_create_directories_before_its_command_says_to_put_it_after(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'outbox.db'}"
    assert main(["--create-directories", command, "--database-url", url]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"cms-outbox {command}: error: --create-directories goes after the command: "
        f"`cms-outbox {command} --create-directories` (see `cms-outbox {command} --help`)"
    ]
    assert list(tmp_path.iterdir()) == []


def test_run_with_plain_http_says_what_the_command_line_accepts(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CMS_BEARER_TOKEN", TOKEN)
    assert main(["run", "--host", "http://example.com"]) == 2
    err = capsys.readouterr().err
    assert "use https://" in err and "only to a loopback host" in err


def test_a_missing_postgres_driver_names_the_extra(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--database-url", "postgresql+pg8000://u@127.0.0.1/db"]) == 2
    assert "pip install 'cms-outbox[postgres]'" in capsys.readouterr().err


def test_a_bad_duration_is_one_line_not_the_whole_usage() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cms_outbox", "purge", "--delivered-older-than", "7x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "cms-outbox purge: error: argument --delivered-older-than: invalid duration '7x': use "
        "a number with s, m, h, d or w (e.g. 30s, 10m, 7d) (see `cms-outbox purge --help`)"
    ]


@pytest.mark.parametrize(
    ("example", "install"),
    [("flask_app.py", "pip install flask"), ("fastapi_app.py", "pip install fastapi uvicorn")],
)
def test_the_examples_say_what_to_install(example: str, install: str) -> None:
    assert install in (REPO / "examples" / example).read_text()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_refused_connection_is_said_in_plain_words() -> None:
    transport = Transport(f"http://127.0.0.1:{closed_port()}", TOKEN, connect_timeout=1.0)
    try:
        reply = transport.send("lead", "e-1", '{"eventName":"x","customerExternalId":"u"}')
    finally:
        transport.close()
    assert (
        reply.error == "ConnectionError: connection refused (nothing listens at the host and port)"
    )


def test_the_demo_prints_no_urllib3_text(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMS_")}
    done = subprocess.run(
        [sys.executable, "-m", "cms_outbox", "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for text in URLLIB3_TEXT:
        assert text not in done.stdout + done.stderr
    assert "Delivery paused: the service does not answer" in done.stdout


def test_events_and_the_demo_say_attempts_as_the_rest_of_the_product(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`events` and the demo said TRIES where show, the dashboard and the JSON say attempts."""
    with CMSClient(database_url=sqlite_url, flush="off") as client:
        client.track_lead("signup", "user_1", click_id="c1")
    assert main(["events", "--database-url", sqlite_url]) == 0
    header = capsys.readouterr().out.splitlines()[0].split()
    assert "ATTEMPTS" in header and "TRIES" not in header, header
    out = io.StringIO()
    assert demo.run(out=out) == 0
    shown = out.getvalue().splitlines()
    table_header = next(line for line in shown if line.split()[:1] == ["EVENT"])
    assert table_header.split()[-1] == "ATTEMPTS", table_header


@pytest.mark.parametrize("command", ["show", "retry"])
def test_the_id_prefix_help_says_as_git_does(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--help"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "unique prefix" in said and "as git does" in said and "(as git)" not in said, said


@pytest.mark.parametrize(
    ("command", "option", "given"),
    [("purge", "--delivered-older-than", "-1d"), ("purge", "--dead-older-than", "-1"),
     ("purge", "--delivered-older-than", "-.5h"), ("health", "--max-pending-age", "-10m")],
)  # fmt: skip
def test_a_negative_duration_is_the_products_one_line_error(
    command: str, option: str, given: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse took `-1d` for an unknown option: "expected one argument"."""
    assert main([command, option, given]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"cms-outbox {command}: error: argument {option}: invalid duration {given!r}: a "
        f"duration cannot be negative (see `cms-outbox {command} --help`)"
    ]


def test_the_sandbox_says_where_it_listens_once() -> None:
    """It printed its address on stdout and logged it again on stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMS_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "cms_outbox", "sandbox", "--port", "0", "--token", "tok"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        first, second = process.stdout.readline(), process.stdout.readline()
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    url = first.split(" on ", 1)[1].split()[0]
    assert first == (
        f"CMS sandbox listening on {url} (token: tok; POST /track/lead and /track/sale, "
        "admin at /_admin/)\n"
    )
    assert second == f"  export CMS_HOST={url} CMS_BEARER_TOKEN=tok\n"
    assert (first + second + out + err).count(url) == 2, err  # the line and the export


@pytest.mark.parametrize(
    ("argv", "option"),
    [(["sandbox", "--port", "70000"], "--port"), (["ui", "--port", "70000"], "--port"),
     (["run", "--metrics-port", "70000"], "--metrics-port")],
    ids=["sandbox", "ui", "run"],
)  # fmt: skip
def test_a_port_beyond_65535_is_refused_naming_the_option(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """ui served on 70000 - 65536 = 4464 without a word; sandbox and run gave a traceback."""
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"cms-outbox {argv[0]}: error: argument {option}: must be a port number from "
        f"{'1' if option == '--metrics-port' else '0'} to 65535, got 70000 "
        f"(see `cms-outbox {argv[0]} --help`)"
    ]


@pytest.mark.parametrize("command", ["sandbox", "ui"])
def test_a_port_in_use_is_one_line_not_a_traceback(
    command: str, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    CMSClient(database_url=sqlite_url, flush="off").close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        outbox = ["--database-url", sqlite_url] if command == "ui" else []
        assert main([command, "--port", str(port), *outbox]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"cms-outbox: error: cannot listen on 127.0.0.1:{port}: address already in use "
        "(another server? choose another --port, or 0 for a free one)"
    ]


@pytest.mark.parametrize("command", [None, "run", "flush", "status", "events", "show", "health",
                                     "retry", "purge", "migrate", "ui"])  # fmt: skip
def test_the_help_examples_name_a_driver_that_is_installed(
    command: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    """`postgresql://` means psycopg2, which the postgres extra does not install."""
    assert main([command, "--help"] if command else ["--help"]) == 0
    said = capsys.readouterr().out
    assert "postgresql://" not in said and "mysql://" not in said, said
