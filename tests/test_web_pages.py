"""The dashboard's pages count, filter, page through and show events as the tables hold them."""

from __future__ import annotations

import re
from typing import Callable
from urllib.parse import parse_qs

import pytest
from sqlalchemy import update

from cms_outbox import CMSClient, EventState
from cms_outbox.queries import browse
from cms_outbox.sandbox import Sandbox
from cms_outbox.schema import events
from cms_outbox.web import Dashboard
from cms_outbox.web.filters import EventFilter
from tests.dashboard_browser import Browser, dashboards, delivering, listed_ids, outbox, text

__all__ = ["dashboards", "outbox"]  # the fixtures: pytest finds them here


# -- pages --------------------------------------------------------------------------------


def test_overview_counts_states_and_charts_attempts_from_the_tables(
    outbox: CMSClient, sandbox: Sandbox, dashboards: Callable[..., Dashboard]
) -> None:
    for n in range(3):
        outbox.track_lead("signup", f"c{n}", click_id=f"k{n}")
    dead = outbox.track_lead("signup", "c9", click_id="k9")
    browser = Browser(dashboards(outbox.settings.database_url))
    before = text(browser.get("/"))
    assert re.search(r'id="count-pending">4<', before)
    assert re.search(r'id="count-delivered">0<', before)
    assert re.search(r'id="flushers"><strong class="warn">none running</strong>', before)
    sender = delivering(outbox, sandbox)
    try:
        sandbox.set_faults(force_status=422, force_count=1)
        sender.flush()
    finally:
        sender.close()
    assert outbox.result(dead.event_id).state in (EventState.DEAD, EventState.DELIVERED)
    after = text(browser.get("/"))
    assert re.search(r'id="count-pending">0<', after)
    assert re.search(r'id="count-delivered">3<', after)
    assert re.search(r'id="count-dead">1<', after)
    # Both charts count the attempts recorded in the last hour and day.
    assert after.count("delivered 3") == 2 and after.count("dead 1") == 2
    assert "nothing pending" in after
    assert re.search(r'id="pacing">\d+ requests per \d+ s \((assumed|advertised|learned)\)', after)
    assert "circuit closed" in after


def test_events_filter_by_every_field_and_the_url_is_the_filter(
    outbox: CMSClient, dashboards: Callable[..., Dashboard]
) -> None:
    lead = outbox.track_lead("signup", "alice", click_id="k1")
    sale = outbox.track_sale("purchase", "alice", "inv-7", 4999, "USD", click_id="k1")
    other = outbox.track_lead("newsletter", "bob", click_id="k2")
    with outbox.engine.begin() as conn:
        conn.execute(
            update(events).where(events.c.event_id == sale.event_id)
            .values(state="dead", attempts=3, last_status_code=422, created_at=1_000_000_000.0)
        )  # fmt: skip
    browser = Browser(dashboards(outbox.settings.database_url))

    def ids(query: str) -> set[str]:
        response = browser.get(f"/events?{query}")
        assert response.status_code == 200, text(response)
        return set(listed_ids(text(response)))

    assert ids("") == {lead.event_id, sale.event_id, other.event_id}
    assert ids("state=dead") == {sale.event_id}
    assert ids("customer=alice") == {lead.event_id, sale.event_id}
    assert ids("event_name=newsletter") == {other.event_id}
    assert ids("event_name=Newsletter") == set()  # exact, case included
    assert ids("invoice=inv-7") == {sale.event_id}
    assert ids("status_code=422") == {sale.event_id}
    assert ids("min_attempts=2") == {sale.event_id}
    assert ids("until=2001-09-09T01:47") == {sale.event_id}  # created at 2001-09-09T01:46:40
    assert ids("since=2001-09-09T01:47") == {lead.event_id, other.event_id}
    assert ids("customer=alice&state=pending&event_name=signup") == {lead.event_id}
    assert ids("customer=nobody") == set()
    # The form's values round-trip into the same URL, so any view can be shared.
    selection = EventFilter.parse({"customer": "alice", "since": "2026-12-01T21:30"})
    again = EventFilter.parse({k: v[0] for k, v in parse_qs(selection.query_string()).items()})
    assert again == selection


def test_bad_filter_input_names_the_field_and_lists_nothing(
    outbox: CMSClient, dashboards: Callable[..., Dashboard]
) -> None:
    outbox.track_lead("signup", "alice", click_id="k1")
    browser = Browser(dashboards(outbox.settings.database_url))
    for query, field in [
        ("state=lost", "state"),
        ("status_code=abc", "status_code"),
        ("min_attempts=-1", "min_attempts"),
        ("since=yesterday", "since"),
        ("since=2026-12-02&until=2026-12-01", "until"),
        ("before=x", "before"),
    ]:
        response = browser.get(f"/events?{query}")
        assert response.status_code == 400, query
        assert f"{field}:" in text(response) and not listed_ids(text(response))


def test_keyset_pages_walk_every_event_once_both_ways(
    outbox: CMSClient, dashboards: Callable[..., Dashboard]
) -> None:
    enqueued = [outbox.track_lead("step", f"c{n % 7}").event_id for n in range(120)]
    browser = Browser(dashboards(outbox.settings.database_url))
    seen: list[str] = []
    pages = []
    path = "/events"
    while True:
        html = text(browser.get(path))
        pages.append(path)
        seen.extend(listed_ids(html))
        older = re.search(r'id="older" href="([^"]+)"', html)
        if older is None:
            break
        path = older.group(1).replace("&amp;", "&")
    assert seen == list(reversed(enqueued)) and len(pages) == 3
    newer = re.search(r'id="newer" href="([^"]+)"', text(browser.get(pages[-1])))
    assert newer is not None
    back = listed_ids(text(browser.get(newer.group(1).replace("&amp;", "&"))))
    assert back == seen[50:100]


def test_a_filter_no_index_narrows_is_searched_window_by_window(
    outbox: CMSClient, dashboards: Callable[..., Dashboard], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(browse, "SCAN_WINDOW", 10)
    rare = [outbox.track_lead("rare", "c1", click_id="k").event_id]
    rare += [outbox.track_lead("common", "c2", click_id="k").event_id for _ in range(25)]
    browser = Browser(dashboards(outbox.settings.database_url))
    path, found, pages = "/events?event_name=rare", [], 0
    while path:
        html = text(browser.get(path))
        pages += 1
        found += listed_ids(html)
        if not listed_ids(html):
            assert 'id="searched"' in html  # says how far it looked, and offers to go on
        older = re.search(r'id="older" href="([^"]+)"', html)
        path = older.group(1).replace("&amp;", "&") if older else ""
    assert found == rare[:1] and pages == 3


def test_event_detail_shows_every_attempt_the_payload_and_the_customer_in_fifo_order(
    outbox: CMSClient, sandbox: Sandbox, dashboards: Callable[..., Dashboard]
) -> None:
    setup = outbox.track_lead("lead_captured", "user-1", click_id="c1", mode="deferred")
    followup = outbox.track_sale("purchase", "user-1", "inv-1", 4999, "USD")
    for status in (503, 422):
        sandbox.set_faults(force_status=status, force_count=1)
        sender = delivering(outbox, sandbox)
        try:
            sender.flush()
        finally:
            sender.close()
        with outbox.engine.begin() as conn:  # due again now, without sitting out the backoff
            conn.execute(update(events).values(next_attempt_at=0.0))
    assert outbox.result(setup.event_id).state == EventState.DEAD
    assert outbox.result(followup.event_id).state == EventState.BLOCKED
    browser = Browser(dashboards(outbox.settings.database_url))
    html = text(browser.get(f"/events/{setup.event_id}"))
    rows = re.findall(r'<tr class="attempt">(.*?)</tr>', html, re.S)
    assert len(rows) >= 2 and ">503<" in rows[0] and ">422<" in rows[-1]
    assert "&#34;success&#34;: false" in html  # the 422's response body, escaped
    assert "&#34;clickId&#34;: &#34;c1&#34;" in html  # the payload
    # The blocked follow-up names the setup it waits on and its customer's order.
    html = text(browser.get(f"/events/{followup.event_id}"))
    assert re.search(rf'id="setup">waits on <a[^>]*href="/events/{setup.event_id}"', html)
    assert listed_ids(html.split('id="neighbours"')[1]) == [setup.event_id, followup.event_id]
    assert browser.get("/events/no-such-event").status_code == 404
