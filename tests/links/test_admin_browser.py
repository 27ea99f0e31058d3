"""The admin as an operator sees it, in a real browser: headless Chromium through selenium.

Links made through PUT /create, clicked on two replicas (real processes), reported, applied by
consume_clicks; then a person logs in and looks at the links list, a link's page with its
charts, and the replicas page. The screenshots in docs/ (README's admin section) come from here
(SHORTENER_SCREENSHOTS_UPDATE=1; see DOCS).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from links.models import Link
from testkit import ROOT, wait_until
from topics.clicks import click_report_encode, clicks_topic
from topics.links import producer_get

# The screenshots go to docs/ only when asked (SHORTENER_SCREENSHOTS_UPDATE=1, to refresh the
# README's pictures); otherwise to this run's test data, so that a test run leaves the checkout
# as it found it.
DOCS = ROOT / "docs"
PASSWORD = "a-long-test-password-1"


@pytest.fixture
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("chromium and chromedriver are missing: stack/install.sh installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1600,1000", "--lang=en-US"):
        options.add_argument(arg)
    # Debian's chromedriver, matching Debian's chromium: selenium must not look for another.
    browser = webdriver.Chrome(options=options, service=Service(driver))
    browser.implicitly_wait(0)
    yield browser
    browser.quit()


def screenshot(browser, name: str, height: int | None = None) -> Path:
    """The whole page (or its first `height` pixels) as <name> (see DOCS for where)."""
    full = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1600, min(height or full, 4000))
    if os.environ.get("SHORTENER_SCREENSHOTS_UPDATE") == "1":
        folder = DOCS
    else:
        folder = Path(os.environ.get("SHORTENER_TEST_DATA") or tempfile.gettempdir()) / "screens"
        folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    browser.save_screenshot(str(path))
    return path


def history(nodes: list[str], tinyurl: str) -> tuple[list[tuple[bytes, bytes]], int]:
    """Reports of earlier lives of the two replicas' counters over the past week, so the charts
    have a shape (through the real apply path), and the clicks they add up to."""
    now = timezone.now()
    messages, total = [], 0
    for n, node in enumerate(nodes):
        count = 0
        for hours_ago in range(7 * 24 - 1, 0, -3):
            count += (hours_ago * 7 + n * 13) % 40 + (25 if (hours_ago // 24) % 2 else 5)
            messages.append(click_report_encode(
                tinyurl=tinyurl, node=node, incarnation=f"{1700000000000000 + n}", count=count,
                reported_at=now - timedelta(hours=hours_ago)))
        total += count
    return messages, total


@pytest.mark.slow
def test_an_operator_sees_links_clicks_over_time_and_replicas(
    browser, live_server, master, replica_factory, clicks_consumer, django_user_model
):
    django_user_model.objects.create_superuser("operator", "operator@example.com", PASSWORD)
    busy = master.create("https://example.com/launch/announcement")
    quiet = master.create("https://example.com/docs/getting-started")
    one = replica_factory()
    two = replica_factory()
    for replica in (one, two):
        replica.start_reporter(flush_seconds=1)
    wait_until(lambda: one.target(busy) and two.target(busy), timeout=30, what="the links")
    one.click(busy, 30)
    two.click(busy, 12)
    one.click(quiet, 4)
    messages, past = history([one.name, two.name], busy)
    producer = producer_get()
    for key, value in messages:
        producer.send(clicks_topic(), key=key, value=value)
    producer.flush()
    wait_until(lambda: Link.objects.get(tinyurl=quiet).clicks == 4, timeout=30,
               what="the quiet link's clicks")
    wait_until(lambda: Link.objects.get(tinyurl=busy).clicks == 42 + past, timeout=30,
               what="the busy link's clicks")
    wait = WebDriverWait(browser, 20)

    # Log in, as a person would.
    browser.get(f"{live_server.url}/admin/")
    assert "/admin/login/" in browser.current_url
    browser.find_element(By.NAME, "username").send_keys("operator")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait.until(lambda b: "Site administration" in b.title)
    assert "Replicas" in browser.find_element(By.ID, "content-main").text

    # The links list, busiest in the last 24 hours first.
    browser.get(f"{live_server.url}/admin/links/link/?o=-5")
    rows = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#result_list tbody tr"))
    text = [row.text for row in rows]
    assert busy in text[0] and "https://example.com/launch/announcement" in text[0]
    assert quiet in text[1] and " 4 " in f" {text[1]} "
    header = browser.find_element(By.CSS_SELECTOR, "#result_list thead").text
    assert "CLICKS, LAST 24 H" in header.upper()
    screenshot(browser, "admin-links.png", height=520)

    # The busy link's page: both charts drawn, with the clicks in them, by replica.
    browser.find_element(By.LINK_TEXT, busy).click()
    wait.until(lambda b: b.find_element(By.ID, "clicks-daily").get_attribute("data-drawn"))
    hourly = browser.find_element(By.ID, "clicks-hourly")
    daily = browser.find_element(By.ID, "clicks-daily")
    total = Link.objects.get(tinyurl=busy).clicks
    assert int(hourly.get_attribute("data-points")) == total  # all within the last 7 days
    assert int(daily.get_attribute("data-points")) == total
    legend = browser.execute_script(
        "return Chart.getChart('clicks-hourly').data.datasets.map(d => d.label)")
    assert sorted(legend) == sorted([one.name, two.name])
    assert hourly.size["height"] > 100 and hourly.size["width"] > 400
    page = browser.find_element(By.ID, "content-main").text
    assert "Clicks over time" in page and f"{one.name}: " in page
    assert browser.find_element(By.ID, "clicks-csv").get_attribute("href").endswith("clicks.csv")
    screenshot(browser, "admin-link.png", height=1500)

    # The replicas page: both replicas, ready.
    browser.set_window_size(1600, 1000)
    browser.get(f"{live_server.url}/admin/links/replica/")

    def shown(b) -> dict[str, tuple[str, str]]:
        """node -> (state, redirects served) as the page shows them."""
        rows = b.find_elements(By.CSS_SELECTOR, "#replicas tbody tr")
        return {row.get_attribute("data-node"): (row.get_attribute("data-state"),
                                                 row.find_element(By.CLASS_NAME, "redirects").text)
                for row in rows if row.get_attribute("data-node") in (one.name, two.name)}

    def both_ready_with_their_redirects(b) -> bool:
        # Statuses come every few seconds: the next ones count the redirects just served.
        if shown(b) == {one.name: ("ready", "34"), two.name: ("ready", "12")}:
            return True
        b.refresh()
        return False

    WebDriverWait(browser, 30, poll_frequency=1).until(both_ready_with_their_redirects)
    assert "ready" in browser.find_element(By.ID, "replicas").text
    screenshot(browser, "admin-replicas.png", height=460)
