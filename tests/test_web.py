"""The dashboard's WSGI application, driven through Werkzeug's client against real databases."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import create_engine, update
from werkzeug.test import Client, TestResponse

from cms_outbox import CMSClient, EventState, SchemaError, database
from cms_outbox.queries import browse
from cms_outbox.sandbox import Sandbox
from cms_outbox.schema import events
from cms_outbox.web import Dashboard
from cms_outbox.web.filters import EventFilter
from tests.conftest import TOKEN

LOCAL = {"REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1:8000"}
HOSTILE = '<script>alert("x")</script>'

Factory = Callable[..., CMSClient]


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


def test_pages_answer_while_an_application_holds_the_write_lock(
    sqlite_url: str,
    make_client: Factory,
    dashboards: Callable[..., Dashboard],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_client(database_url=sqlite_url).track_lead("signup", "c1", click_id="k")
    monkeypatch.setattr(database, "BUSY_TIMEOUT", 0.5)  # a page that waited gets a 503
    browser = Browser(dashboards(sqlite_url))
    holder = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("UPDATE cms_outbox_events SET attempts = attempts")
        for page in ("/", "/events", "/events?state=pending"):
            assert browser.get(page).status_code == 200
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_database_failure_is_a_plain_503_and_a_missing_file_is_refused(
    tmp_path: Any, sqlite_url: str, make_client: Factory
) -> None:
    make_client(database_url=sqlite_url).track_lead("signup", "c1", click_id="k")
    engine = create_engine(sqlite_url)
    dashboard = Dashboard(engine=engine)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE cms_outbox_attempts")
        response = Browser(dashboard).get("/")
        assert response.status_code == 503
        assert "the outbox tables are missing" in text(response)
        assert "no such table" not in text(response)
    finally:
        dashboard.close()
        engine.dispose()
    with pytest.raises(SchemaError, match="no outbox database"):
        Dashboard(f"sqlite:///{tmp_path / 'typo.db'}")
    assert not (tmp_path / "typo.db").exists()


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
