"""The dashboard end to end in a real headless Chromium, served by ``cms-outbox ui``.

Debian's ``chromium`` and ``chromium-driver`` packages (``.ci/run`` installs them);
Selenium is pointed at both explicitly and its manager is disabled, so nothing is ever
downloaded: if Selenium tried, the test would fail. Every wait is on an observed
condition with a deadline. Screenshots go to ``test-artifacts/browser/`` (or
``$CMS_OUTBOX_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from cms_outbox import CMSClient, EventState
from cms_outbox.sandbox import Sandbox
from tests.conftest import TOKEN, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--disable-dev-shm-usage", "--window-size=1280,1000",
)  # fmt: skip
ARTIFACTS = (
    Path(
        os.environ.get("CMS_OUTBOX_TEST_ARTIFACTS")
        or Path(__file__).resolve().parent.parent / "test-artifacts"
    )
    / "browser"
)
WAIT = 60.0  # seconds: a deadline for conditions, not a pace
HOSTILE_NAME = "<script>window.pwned=1</script>"
HOSTILE_EMAIL = "<img/src=x/onerror=window.pwned='img'>@example.com"

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # Selenium Manager would download a browser or driver; point it at nothing so that
    # any attempt fails loudly instead.
    os.environ["SE_MANAGER_PATH"] = "/nonexistent/selenium-manager"
    os.environ["SE_OFFLINE"] = "true"
    profile = tempfile.mkdtemp(prefix="cms-outbox-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def serve(sqlite_url: str) -> Iterator[Callable[..., str]]:
    """Start ``cms-outbox ui`` on a free loopback port; returns its base URL."""
    started: list[subprocess.Popen[str]] = []

    def start(*flags: str) -> str:
        process = subprocess.Popen(
            [sys.executable, "-m", "cms_outbox", "ui", "--port", "0",
             "--database-url", sqlite_url, *flags],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        started.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        assert " at http://" in line, process.communicate()[1]
        return line.split(" at ", 1)[1].split()[0]

    yield start
    for process in started:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        process.communicate()


@pytest.fixture
def outbox(sqlite_url: str) -> Iterator[CMSClient]:
    client = CMSClient(database_url=sqlite_url, flush="off")
    yield client
    client.close()


def flusher(sqlite_url: str, sandbox: Sandbox) -> CMSClient:
    return CMSClient(
        database_url=sqlite_url, token=TOKEN, host=sandbox.url, rate_limit=None,
        flush="background", interval=0.2,
    )  # fmt: skip


def reject_once(sqlite_url: str, sandbox: Sandbox) -> None:
    """Deliver what is stored now, the service rejecting the first request with a 422."""
    sandbox.set_faults(force_status=422, force_count=1)
    with CMSClient(database_url=sqlite_url, token=TOKEN, host=sandbox.url, rate_limit=None,
                   flush="off") as client:  # fmt: skip
        client.flush()


def screenshot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def text_of(driver: Any, element_id: str) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return str(driver.find_element(By.ID, element_id).text)
    except (NoSuchElementException, StaleElementReferenceException):
        return ""  # being swapped by the live refresh this instant


def until(driver: Any, condition: Callable[[], object], what: str) -> None:
    assert wait_until(condition, timeout=WAIT, step=0.1), f"{what}; page: {driver.current_url}"


def test_overview_counts_change_live_while_a_flusher_delivers(
    browser: Any, serve: Callable[..., str], outbox: CMSClient, sandbox: Sandbox, sqlite_url: str
) -> None:
    for n in range(30):
        outbox.track_lead("signup", f"customer-{n % 6}", click_id=f"click-{n}")
    url = serve()
    browser.get(url)
    assert text_of(browser, "count-pending") == "30"
    assert text_of(browser, "count-delivered") == "0"
    loaded = browser.execute_script("return performance.timeOrigin")
    with flusher(sqlite_url, sandbox):
        until(browser, lambda: text_of(browser, "count-delivered") == "30",
              "the overview never showed 30 delivered")  # fmt: skip
        until(browser, lambda: text_of(browser, "flushers").startswith("client on "),
              "the overview never listed the running flusher")  # fmt: skip
    assert text_of(browser, "count-pending") == "0"
    # The same page load: the counts changed by live refresh, not by reloading.
    assert browser.execute_script("return performance.timeOrigin") == loaded
    assert int(browser.find_element("tag name", "body").get_attribute("data-live-refreshes")) >= 1
    until(browser, lambda: "delivered 30" in text_of(browser, "chart-1"),
          "the chart never counted the 30 deliveries")  # fmt: skip
    screenshot(browser, "overview")


def test_live_refresh_pauses_while_the_tab_is_hidden(
    browser: Any, serve: Callable[..., str], outbox: CMSClient
) -> None:
    outbox.track_lead("signup", "c1", click_id="k")
    url = serve()
    browser.get(url)
    first = browser.current_window_handle
    body = lambda: browser.find_element("tag name", "body")  # noqa: E731
    until(browser, lambda: int(body().get_attribute("data-live-refreshes") or 0) >= 1,
          "the overview never refreshed itself")  # fmt: skip
    browser.switch_to.new_window("tab")
    browser.get(url)
    until(browser, lambda: int(body().get_attribute("data-live-refreshes") or 0) >= 3,
          "the second tab never refreshed")  # fmt: skip
    browser.switch_to.window(first)
    # The first tab saw itself hidden and stopped its timer meanwhile.
    assert int(body().get_attribute("data-live-pauses") or 0) >= 1
    hidden_refreshes = browser.execute_script("return window.cmsOutboxHiddenRefreshes || 0")
    assert hidden_refreshes == 0
    for handle in browser.window_handles:
        if handle != first:
            browser.switch_to.window(handle)
            browser.close()
    browser.switch_to.window(first)


def test_filter_then_open_an_events_attempts(
    browser: Any, serve: Callable[..., str], outbox: CMSClient, sandbox: Sandbox, sqlite_url: str
) -> None:
    from selenium.webdriver.common.by import By

    rejected = outbox.track_sale("purchase", "alice", "inv-42", 4999, "USD", click_id="k1")
    reject_once(sqlite_url, sandbox)
    assert outbox.result(rejected.event_id).state == EventState.DEAD
    outbox.track_lead("signup", "alice", click_id="k1")
    outbox.track_lead("signup", "bob", click_id="k2")
    url = serve()
    browser.get(url + "events")
    form = browser.find_element(By.ID, "filter")
    form.find_element(By.NAME, "customer").send_keys("alice")
    form.find_element(By.NAME, "state").send_keys("dead")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    until(browser, lambda: "customer=alice" in browser.current_url, "the filter is not in the URL")
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.event-row")
    assert [row.get_attribute("data-event-id") for row in rows] == [rejected.event_id]
    screenshot(browser, "events-filtered")
    shared = browser.current_url
    browser.get(shared)  # the URL alone reproduces the view
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr.event-row")) == 1
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.event-row")
    rows[0].find_element(By.CSS_SELECTOR, "a.event-link").click()
    until(browser, lambda: rejected.event_id in browser.current_url, "the event did not open")
    attempts = browser.find_elements(By.CSS_SELECTOR, "tr.attempt")
    assert len(attempts) == 1 and "422" in attempts[0].text and "dead" in attempts[0].text
    assert '"success": false' in attempts[0].text  # the service's response body
    screenshot(browser, "event-attempts")


def test_retry_a_dead_event_and_watch_it_delivered(
    browser: Any, serve: Callable[..., str], outbox: CMSClient, sandbox: Sandbox, sqlite_url: str
) -> None:
    from selenium.webdriver.common.by import By

    dead = outbox.track_lead("signup", "carol", click_id="k3")
    reject_once(sqlite_url, sandbox)
    assert outbox.result(dead.event_id).state == EventState.DEAD
    with flusher(sqlite_url, sandbox):
        url = serve()
        browser.get(f"{url}events/{dead.event_id}")
        assert "dead" in text_of(browser, "state")
        browser.find_element(By.ID, "retry").click()
        until(browser, lambda: "Retried" in text_of(browser, "notice"), "no retry notice")
        until(browser, lambda: "delivered" in text_of(browser, "state"),
              "the retried event never showed as delivered")  # fmt: skip
    assert sandbox.accepted_count(dead.event_id) == 1
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr.attempt")) == 2
    screenshot(browser, "retried-delivered")


def test_read_only_hides_the_actions_and_the_server_refuses_them(
    browser: Any, serve: Callable[..., str], outbox: CMSClient
) -> None:
    from selenium.webdriver.common.by import By
    from sqlalchemy import update

    from cms_outbox.schema import events

    dead = outbox.track_lead("signup", "dave", click_id="k4")
    with outbox.engine.begin() as conn:
        conn.execute(update(events).values(state="dead"))
    url = serve("--read-only")
    for page in ("", "events?state=dead", f"events/{dead.event_id}"):
        browser.get(url + page)
        assert browser.find_element(By.ID, "read-only").text == "read-only"
        assert browser.find_elements(By.CSS_SELECTOR, "form[method=post]") == []
        assert browser.find_elements(By.ID, "retry") == []
        assert browser.find_elements(By.ID, "bulk") == []
    status = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0], {method: 'POST', body: new URLSearchParams({older_than: '1h'})})"
        ".then(r => done(r.status), e => done(String(e)));",
        url + f"events/{dead.event_id}/retry",
    )
    assert status == 403
    assert outbox.result(dead.event_id).state == EventState.DEAD
    screenshot(browser, "read-only")


def test_a_hostile_payload_renders_as_text(
    browser: Any, serve: Callable[..., str], outbox: CMSClient
) -> None:
    from selenium.webdriver.common.by import By

    hostile = outbox.track_lead(
        HOSTILE_NAME, HOSTILE_NAME, click_id="k5", customer_name=HOSTILE_NAME,
        customer_email=HOSTILE_EMAIL,
    )  # fmt: skip
    url = serve()
    for page in ("", "events", f"events/{hostile.event_id}"):
        browser.get(url + page)
        assert browser.execute_script("return window.pwned === undefined"), page
    payload = browser.find_element(By.ID, "payload-json").text
    assert HOSTILE_NAME in payload and "onerror=window.pwned" in payload
    assert browser.find_element(By.ID, "customer").text == HOSTILE_NAME
    assert browser.find_elements(By.CSS_SELECTOR, "main img, main script") == []
    screenshot(browser, "hostile-payload")
