"""``cms-outbox ui``: served by waitress on the loopback; anywhere else only with a password."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from cms_outbox import CMSClient
from cms_outbox.cli import main


@pytest.fixture
def outbox_url(sqlite_url: str) -> str:
    client = CMSClient(database_url=sqlite_url, flush="off")
    client.track_lead("signup", "c1", click_id="k")
    client.close()
    return sqlite_url


@pytest.fixture
def serve(outbox_url: str) -> Iterator[Any]:
    started: list[subprocess.Popen[str]] = []

    def start(*flags: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "cms_outbox", "ui", "--port", "0",
             "--database-url", outbox_url, *flags],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
        started.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        assert " at http://" in line, process.stderr.read() if process.stderr else line
        return process, line.split(" at ", 1)[1].split()[0]

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_serves_on_the_loopback_and_stops_cleanly_on_sigterm(serve: Any) -> None:
    process, url = serve()
    assert url.startswith("http://127.0.0.1:")
    response = requests.get(url, timeout=60)
    assert response.status_code == 200 and 'id="count-pending">1<' in response.text
    assert response.headers["Server"] == "cms-outbox"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0


def test_read_only_server_refuses_actions(serve: Any) -> None:
    process, url = serve("--read-only")
    page = requests.get(url, timeout=60)
    assert 'id="read-only"' in page.text
    refused = requests.post(url + "purge", data={"older_than": "1h"}, timeout=60)
    assert refused.status_code == 403 and "read-only" in refused.text


def test_a_password_guards_every_request(serve: Any) -> None:
    _, url = serve(env={"CMS_OUTBOX_UI_PASSWORD": "dash-only-secret"})
    assert requests.get(url, timeout=60).status_code == 401
    assert requests.get(url, auth=("ops", "dash-only-secret"), timeout=60).status_code == 200


def test_any_other_address_needs_a_dashboard_password(
    outbox_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CMS_OUTBOX_UI_PASSWORD", raising=False)
    assert main(["ui", "--bind", "0.0.0.0", "--database-url", outbox_url]) == 2
    assert "CMS_OUTBOX_UI_PASSWORD" in capsys.readouterr().err
    monkeypatch.setenv("CMS_BEARER_TOKEN", "the-cms-token")
    monkeypatch.setenv("CMS_OUTBOX_UI_PASSWORD", "the-cms-token")
    assert main(["ui", "--database-url", outbox_url]) == 2
    assert "must not be the CMS bearer token" in capsys.readouterr().err


def test_a_missing_database_is_refused_without_creating_it(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'typo.db'}"
    assert main(["ui", "--database-url", url]) == 3
    assert "no outbox database" in capsys.readouterr().err
    assert not (tmp_path / "typo.db").exists()
