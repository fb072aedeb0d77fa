"""The dashboard as its tests drive it: a Werkzeug browser on loopback, an outbox, dashboards."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Callable

import pytest
from werkzeug.test import Client, TestResponse

from cms_outbox import CMSClient
from cms_outbox.sandbox import Sandbox
from cms_outbox.web import Dashboard
from tests.conftest import TOKEN

LOCAL = {"REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1:8000"}


class Browser:
    """A Werkzeug client that keeps cookies and speaks from the loopback."""

    def __init__(self, app: Dashboard, **environ: str) -> None:
        self.client = Client(app)
        self.environ = {**LOCAL, **environ}

    def get(self, path: str, **kwargs: Any) -> TestResponse:
        return self.client.get(path, environ_overrides=self.environ, **kwargs)

    def post(self, path: str, **kwargs: Any) -> TestResponse:
        return self.client.post(path, environ_overrides=self.environ, **kwargs)

    def csrf(self, page: str = "/") -> str:
        html = self.get(page).get_data(as_text=True)
        found = re.search(r'name="csrf_token" value="([^"]+)"', html)
        if found:
            return found.group(1)
        cookie = self.client.get_cookie("cms_outbox_csrf", domain="127.0.0.1")
        assert cookie is not None
        return cookie.value


@pytest.fixture
def outbox(database_url: str) -> Iterator[CMSClient]:
    client = CMSClient(database_url=database_url, flush="off", token=TOKEN, rate_limit=None)
    yield client
    client.close()


@pytest.fixture
def dashboards() -> Iterator[Callable[..., Dashboard]]:
    made: list[Dashboard] = []

    def make(url: str, **options: Any) -> Dashboard:
        dashboard = Dashboard(url, **options)
        made.append(dashboard)
        return dashboard

    yield make
    for dashboard in made:
        dashboard.close()


def delivering(outbox: CMSClient, sandbox: Sandbox) -> CMSClient:
    client = CMSClient(
        database_url=outbox.settings.database_url, flush="off", token=TOKEN,
        host=sandbox.url, rate_limit=None,
    )  # fmt: skip
    return client


def text(response: TestResponse) -> str:
    return response.get_data(as_text=True)


def listed_ids(html: str) -> list[str]:
    return re.findall(r'data-event-id="([^"]+)"', html)
