"""``cms-outbox sandbox --help`` names every admin endpoint the sandbox serves."""

from __future__ import annotations

import re

import pytest
import requests

from cms_outbox.cli import main
from cms_outbox.sandbox import Sandbox
from cms_outbox.sandbox.handler import ADMIN_ROUTES
from tests.sandbox_requests import http, sb

__all__ = ["http", "sb"]  # the fixtures: pytest finds them here


def listed_endpoints(capsys: pytest.CaptureFixture[str]) -> list[str]:
    assert main(["sandbox", "--help"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    found = re.search(r"/_admin/ endpoints \(([^)]*)\)", said)
    assert found, said
    return found.group(1).split(", ")


def test_the_help_lists_every_admin_route_the_sandbox_serves(
    sb: Sandbox, http: requests.Session, capsys: pytest.CaptureFixture[str]
) -> None:
    """`limits` was left out of the list, though the help described it further on."""
    listed = listed_endpoints(capsys)
    assert sorted(f"/_admin/{name}" for name in listed) == sorted(ADMIN_ROUTES)
    for name in listed:  # served: a POST-only endpoint answers GET with 405, not 404
        assert http.get(f"{sb.url}/_admin/{name}", timeout=60).status_code != 404, name
    assert http.get(f"{sb.url}/_admin/nothing-here", timeout=60).status_code == 404
