"""The dashboard mounts in an application: under a prefix, behind Flask's login, in FastAPI."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import pytest
from werkzeug.test import Client

from cms_outbox import CMSClient
from cms_outbox.web import Dashboard
from tests.dashboard_browser import Browser, dashboards, outbox, text

__all__ = ["dashboards", "outbox"]  # the fixtures: pytest finds them here


def test_mounted_under_a_prefix_every_link_keeps_it(
    outbox: CMSClient, dashboards: Callable[..., Dashboard]
) -> None:
    event_id = outbox.track_lead("signup", "c1", click_id="k").event_id
    browser = Browser(dashboards(outbox.settings.database_url))
    response = browser.client.get("/events", environ_overrides={
        **browser.environ, "SCRIPT_NAME": "/outbox"})  # fmt: skip
    html = text(response)
    links = re.findall(r'(?:href|src|action)="([^"]+)"', html)
    assert links and all(link.startswith("/outbox/") for link in links), links
    assert f'href="/outbox/events/{event_id}"' in html


def test_the_readme_mounts_it_in_flask_behind_the_applications_login(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Dashboard") :]
    code = re.search(r"```python\n(.+?)\n```", section, re.S)
    assert code is not None
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "readme_dashboard"}
    exec(compile(code.group(1), "README.md", "exec"), namespace)
    try:
        app = Client(namespace["app"].wsgi_app)
        remote = {"REMOTE_ADDR": "10.0.0.7", "HTTP_HOST": "app.example"}
        assert app.get("/outbox/", environ_overrides=remote).status_code == 401
        page = app.get("/outbox/events", environ_overrides={**remote, "REMOTE_USER": "ops"})
        assert page.status_code == 200 and 'action="/outbox/events"' in text(page)
    finally:
        namespace["dashboard"].close()
        namespace["outbox"].close()


def test_fastapi_mounts_it_through_a_wsgi_adapter(
    outbox: CMSClient, dashboards: Callable[..., Dashboard]
) -> None:
    import asyncio

    import httpx
    from a2wsgi import WSGIMiddleware
    from fastapi import FastAPI

    event_id = outbox.track_lead("signup", "c1", click_id="k").event_id
    dashboard = dashboards(
        outbox.settings.database_url,
        authorize=lambda environ: environ.get("HTTP_X_OPS_SESSION") == "valid",
    )
    app = FastAPI()
    app.mount("/outbox", WSGIMiddleware(dashboard))  # type: ignore[arg-type]

    async def visit() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            refused = await client.get("/outbox/")
            page = await client.get(f"/outbox/events/{event_id}",
                                    headers={"X-Ops-Session": "valid"})  # fmt: skip
            return refused, page

    refused, page = asyncio.run(visit())
    assert refused.status_code == 401
    assert page.status_code == 200 and 'href="/outbox/events"' in page.text


def test_without_the_ui_extra_the_import_error_names_it() -> None:
    """It was Jinja2's bare ModuleNotFoundError, with no word of the extra to install."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "sys.modules['jinja2'] = None  # as where the ui extra is not installed\n"
        "try:\n"
        "    from cms_outbox.web import Dashboard\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(exc.name, '|', exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stderr == ""
    assert done.stdout.strip() == (
        "jinja2 | cms_outbox.web needs the ui extra (jinja2 is missing): "
        "pip install 'cms-outbox[ui]'"
    )
