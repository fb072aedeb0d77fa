"""What ``cms-outbox status`` and the tables print of long error messages."""

from __future__ import annotations

import pytest

from cms_outbox import CMSClient
from cms_outbox.cli import main
from cms_outbox.cli._common import shorten
from cms_outbox.sandbox import Sandbox
from tests.conftest import TOKEN

REFUSED = "ConnectionError: connection refused (nothing listens at the host and port)"


def test_status_shows_a_pause_error_whole(
    sqlite_url: str, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was cut at 60 characters, mid-word: "... (nothing listens at the h..."."""
    sandbox.down()
    with CMSClient(TOKEN, sandbox.url, sqlite_url, flush="off", rate_limit=None) as client:
        client.track_lead("signup", "user_1", click_id="c1")
        assert client.flush().paused == "outage"
        capsys.readouterr()
    assert main(["status", "--database-url", sqlite_url]) == 0
    [delivery] = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("delivery ")
    ]
    assert delivery.endswith(f": {REFUSED}"), delivery


@pytest.mark.parametrize("limit", [20, 33, 40, 60])
def test_a_long_error_is_cut_at_a_word_boundary_with_an_ellipsis(limit: int) -> None:
    text = f"HTTP 503: {REFUSED}, said the load balancer"
    cut = shorten(text, limit)
    assert len(cut) <= limit and cut.endswith("..."), cut
    kept = cut.removesuffix("...")
    assert text.startswith(kept) and text[len(kept)] in " ,;:(", (cut, text[len(kept) :])


def test_a_short_error_is_kept_on_one_line() -> None:
    assert shorten("HTTP 503:\n  try again", 60) == "HTTP 503: try again"
