"""The dashboard's retry and purge take only what was confirmed, behind CSRF; read-only refuses."""

from __future__ import annotations

import re
import time
from typing import Callable

import pytest
from sqlalchemy import update

from cms_outbox import CMSClient, EventState
from cms_outbox.sandbox import Sandbox
from cms_outbox.schema import events
from cms_outbox.web import Dashboard
from tests.dashboard_browser import Browser, dashboards, delivering, outbox, text

__all__ = ["dashboards", "outbox"]  # the fixtures: pytest finds them here


# -- actions ------------------------------------------------------------------------------


def test_retry_one_needs_its_csrf_token_and_releases_the_blocked_followup(
    outbox: CMSClient, sandbox: Sandbox, dashboards: Callable[..., Dashboard]
) -> None:
    setup = outbox.track_lead("lead_captured", "user-1", click_id="c1", mode="deferred")
    followup = outbox.track_lead("kyc", "user-1")
    sender = delivering(outbox, sandbox)
    try:
        sandbox.set_faults(force_status=422, force_count=1)
        sender.flush()
        browser = Browser(dashboards(outbox.settings.database_url))
        page = f"/events/{setup.event_id}"
        token = browser.csrf(page)
        assert browser.post(f"{page}/retry").status_code == 403
        assert browser.post(f"{page}/retry", data={"csrf_token": "forged"}).status_code == 403
        forged_origin = browser.post(
            f"{page}/retry", data={"csrf_token": token}, headers={"Origin": "http://evil.test"}
        )
        assert forged_origin.status_code == 403
        # Behind a TLS proxy the browser's origin is https while this server sees http.
        proxied = browser.post(f"{page}/retry", data={"csrf_token": token},
                               headers={"Origin": "https://127.0.0.1:8000"})  # fmt: skip
        assert proxied.status_code == 303
        assert outbox.result(setup.event_id).state == EventState.PENDING
        with outbox.engine.begin() as conn:  # dead again, for the retry below
            conn.execute(update(events).where(events.c.event_id == setup.event_id)
                         .values(state="dead"))  # fmt: skip
            conn.execute(update(events).where(events.c.event_id == followup.event_id)
                         .values(state="blocked"))  # fmt: skip
        assert outbox.result(setup.event_id).state == EventState.DEAD
        response = browser.post(f"{page}/retry", data={"csrf_token": token})
        assert response.status_code == 303 and response.headers["Cache-Control"] == "no-store"
        assert outbox.result(followup.event_id).state == EventState.PENDING
        assert "Retried" in text(browser.get(response.headers["Location"]))
        assert sender.flush().delivered == 2
        assert "state-delivered" in text(browser.get(page))
    finally:
        sender.close()


def test_retry_matching_takes_exactly_the_confirmed_ids(
    outbox: CMSClient, dashboards: Callable[..., Dashboard]
) -> None:
    first = [outbox.track_lead("signup", f"c{n}", click_id="k").event_id for n in range(3)]
    later = outbox.track_lead("signup", "c-late", click_id="k").event_id
    with outbox.engine.begin() as conn:
        conn.execute(update(events).where(events.c.event_id.in_(first)).values(state="dead"))
    browser = Browser(dashboards(outbox.settings.database_url))
    listing = text(browser.get("/events?state=dead"))
    assert "Retry 3 dead or blocked matching" in listing
    confirm = text(browser.get("/retry?state=dead"))
    shown = re.findall(r'name="event_id" value="([^"]+)"', confirm)
    assert sorted(shown) == sorted(first)
    # An event that dies after the page was shown is not swept in.
    with outbox.engine.begin() as conn:
        conn.execute(update(events).where(events.c.event_id == later).values(state="dead"))
    token = browser.csrf("/retry?state=dead")
    form = {"csrf_token": token, "event_id": shown, "back": "state=dead"}
    wrong = browser.post("/retry", data={**form, "count": "4"})
    assert wrong.status_code == 400 and "count:" in text(wrong)
    assert all(outbox.result(e).state == EventState.DEAD for e in first)
    done = browser.post("/retry", data={**form, "count": "3"})
    assert done.status_code == 200 and "3 of the 3 selected" in text(done)
    assert [outbox.result(e).state for e in first] == [EventState.PENDING] * 3
    assert outbox.result(later).state == EventState.DEAD


def test_purge_deletes_only_delivered_events_older_than_the_age(
    outbox: CMSClient, dashboards: Callable[..., Dashboard], caplog: pytest.LogCaptureFixture
) -> None:
    old, recent, pending = (outbox.track_lead("s", f"c{n}", click_id="k") for n in range(3))
    now = time.time()
    with outbox.engine.begin() as conn:
        for result, delivered_at in ((old, now - 3 * 86400), (recent, now - 60)):
            conn.execute(
                update(events).where(events.c.event_id == result.event_id)
                .values(state="delivered", delivered_at=delivered_at)
            )  # fmt: skip
    browser = Browser(dashboards(outbox.settings.database_url))
    assert browser.get("/purge?older_than=soon").status_code == 400
    token = browser.csrf("/purge?older_than=1d")
    with caplog.at_level("INFO", logger="cms_outbox.web"):
        done = browser.post("/purge", data={"csrf_token": token, "older_than": "1d"})
    assert done.status_code == 200 and "1 delivered events older than 1d" in text(done)
    assert "purge of delivered events older than 1d" in caplog.text
    assert browser.get(f"/events/{old.event_id}").status_code == 404
    assert browser.get(f"/events/{recent.event_id}").status_code == 200
    assert browser.get(f"/events/{pending.event_id}").status_code == 200


def test_read_only_hides_and_refuses_every_action(
    outbox: CMSClient, dashboards: Callable[..., Dashboard]
) -> None:
    dead = outbox.track_lead("signup", "c1", click_id="k").event_id
    with outbox.engine.begin() as conn:
        conn.execute(update(events).values(state="dead"))
    writable = Browser(dashboards(outbox.settings.database_url))
    token = writable.csrf(f"/events/{dead}")
    browser = Browser(dashboards(outbox.settings.database_url, read_only=True))
    browser.client.set_cookie("cms_outbox_csrf", token, domain="127.0.0.1")
    for page in ("/", "/events?state=dead", f"/events/{dead}"):
        html = text(browser.get(page))
        assert '<form method="post"' not in html and "Retry" not in html, page
        assert 'id="read-only"' in html
    for page in ("/retry?state=dead", "/purge?older_than=1d"):
        assert browser.get(page).status_code == 403, page
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for path in (f"/events/{dead}/retry", "/retry", "/purge"):
            response = browser.client.open(
                path, method=method, data={"csrf_token": token, "older_than": "1h",
                                           "event_id": dead, "count": "1"},
                environ_overrides=browser.environ,
            )  # fmt: skip
            assert response.status_code == 403, (method, path)
    assert outbox.result(dead).state == EventState.DEAD
