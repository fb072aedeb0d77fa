"""The dashboard shows hostile data as text, bars inline script and framing, admits only users."""

from __future__ import annotations

import re
from importlib import resources
from typing import Callable
from urllib.parse import urlsplit

from cms_outbox import CMSClient
from cms_outbox.web import Dashboard
from tests.conftest import TOKEN
from tests.dashboard_browser import Browser, dashboards, outbox, text

__all__ = ["dashboards", "outbox"]  # the fixtures: pytest finds them here


HOSTILE = '<script>alert("x")</script>'


# -- security -----------------------------------------------------------------------------


def test_hostile_event_data_stays_text_on_every_page(
    outbox: CMSClient, dashboards: Callable[..., Dashboard]
) -> None:
    hostile = outbox.track_lead(
        HOSTILE,
        HOSTILE,
        click_id=HOSTILE,
        customer_name=HOSTILE,
        customer_email="<img/src=x/onerror=alert(1)>@example.com",
    )
    browser = Browser(dashboards(outbox.settings.database_url))
    for page in ("/", "/events", f"/events/{hostile.event_id}", "/events?customer=" + HOSTILE):
        html = text(browser.get(page))
        assert "<script>alert" not in html, page
        # Every script the page has is the dashboard's own file: none is inline.
        assert re.findall(r"<script[^>]*>", html) == [
            '<script src="/static/dashboard.js" defer>'
        ], page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in text(
        browser.get(f"/events/{hostile.event_id}")
    )


def test_headers_forbid_inline_script_framing_and_caching_of_actions(
    outbox: CMSClient, dashboards: Callable[..., Dashboard]
) -> None:
    browser = Browser(dashboards(outbox.settings.database_url))
    for path in ("/", "/events", "/static/dashboard.js", "/nowhere"):
        headers = browser.get(path).headers
        policy = headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
        assert "frame-ancestors 'none'" in policy and headers["X-Frame-Options"] == "DENY"
        assert headers["X-Content-Type-Options"] == "nosniff"
    refused = browser.post("/purge", data={"older_than": "1d"})
    assert refused.status_code == 403 and refused.headers["Cache-Control"] == "no-store"
    cookie = browser.client.get_cookie("cms_outbox_csrf", domain="127.0.0.1")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Strict"


def test_only_loopback_unless_a_password_or_the_application_authorizes(
    outbox: CMSClient, dashboards: Callable[..., Dashboard]
) -> None:
    url = outbox.settings.database_url
    local = dashboards(url)
    assert Browser(local).get("/").status_code == 200
    assert Browser(local, REMOTE_ADDR="10.1.2.3").get("/").status_code == 403
    # DNS rebinding: a loopback peer asking for a foreign host name.
    assert Browser(local, HTTP_HOST="attacker.example:8000").get("/").status_code == 403
    guarded = dashboards(url, password="dash-secret")
    remote = Browser(guarded, REMOTE_ADDR="10.1.2.3", HTTP_HOST="outbox.internal")
    challenge = remote.get("/")
    assert challenge.status_code == 401 and "Basic" in challenge.headers["WWW-Authenticate"]
    assert remote.get("/", auth=("ops", "wrong")).status_code == 401
    assert remote.get("/", auth=("ops", "dash-secret")).status_code == 200
    assert "dash-secret" not in text(remote.get("/", auth=("ops", "dash-secret")))
    mounted = dashboards(url, authorize=lambda environ: environ.get("REMOTE_USER") == "ops")
    assert Browser(mounted, REMOTE_ADDR="10.1.2.3").get("/").status_code == 401
    assert Browser(mounted, REMOTE_ADDR="10.1.2.3", REMOTE_USER="ops").get("/").status_code == 200


def test_no_secret_is_rendered_and_nothing_loads_from_the_internet(
    postgres_url: str, dashboards: Callable[..., Dashboard]
) -> None:
    # PostgreSQL trusts the loopback here, so a password in the URL is accepted and unused.
    parts = urlsplit(postgres_url)
    with_password = postgres_url.replace(f"{parts.username}@", f"{parts.username}:pw-s3cret@")
    client = CMSClient(database_url=with_password, flush="off", token=TOKEN)
    try:
        event_id = client.track_lead("signup", "c1", click_id="k").event_id
    finally:
        client.close()
    browser = Browser(dashboards(with_password))
    for page in ("/", "/events", f"/events/{event_id}", "/purge?older_than=1d"):
        html = text(browser.get(page))
        assert "pw-s3cret" not in html and TOKEN not in html, page
    folder = resources.files("cms_outbox.web")
    for sub in ("templates", "static"):
        for item in (folder / sub).iterdir():
            assert not re.search(r"https?://", item.read_text()), item.name
