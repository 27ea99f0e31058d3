"""/metrics on all three roles, parsed with prometheus_client's own parser; web servers under
gunicorn with two workers (multiprocess mode); the commands on their own ports."""

from __future__ import annotations

import pytest
import requests

from testkit import MasterWeb, sample, scrape, wait_until

HIST = "shortener_request_duration_seconds"


@pytest.fixture
def master_web(transactional_db, test_data_dir):
    web = MasterWeb(test_data_dir, workers=2)
    yield web
    web.close()


def test_master_metrics_count_creates_by_status_across_workers(master_web):
    for i in range(30):  # spread over both workers by the kernel
        assert requests.put(f"{master_web.url}/create", json={"longurl": f"https://m.example/{i}"},
                            timeout=30).status_code == 200
    for _ in range(7):
        assert requests.put(f"{master_web.url}/create", data=b"nope", timeout=30).status_code == 400
    samples = scrape(f"{master_web.url}/metrics")
    assert sample(samples, f"{HIST}_count", endpoint="create", method="PUT", status="200") == 30
    assert sample(samples, f"{HIST}_count", endpoint="create", method="PUT", status="400") == 7
    # Latency: every request is in the +Inf bucket, and the sum is a positive duration.
    assert sample(samples, f"{HIST}_bucket", endpoint="create", method="PUT", status="200",
                  le="+Inf") == 30
    assert 0 < sample(samples, f"{HIST}_sum", endpoint="create", method="PUT", status="200") < 30
    assert sample(samples, "shortener_links_published_total", outcome="acked") == 30


def test_replica_metrics_split_found_and_not_found(master, replica_factory, clicks_consumer):
    replica = replica_factory(start=False, reporter=True)
    replica.start_consumer()
    replica.start_web(workers=2)
    tinyurl = master.create("https://example.com/metrics")
    wait_until(lambda: replica.target(tinyurl) is not None, timeout=20, what="the link")
    for _ in range(120):
        assert replica.get(tinyurl).status_code == 302
    for _ in range(15):
        assert replica.get("Missing").status_code == 404
    samples = scrape(f"{replica.url}/metrics")
    assert sample(samples, f"{HIST}_count", endpoint="redirect", method="GET", status="302") == 120
    assert sample(samples, f"{HIST}_count", endpoint="redirect", method="GET", status="404") == 15

    # consume_links on its own port: records applied, caught up, no lag.
    consumer = f"http://127.0.0.1:{replica.consumer_metrics_port}/metrics"
    links = scrape(consumer)
    topic = f"{replica.env['SHORTENER_USER']}-links"
    assert sample(links, "shortener_consumer_records_total", topic=topic, outcome="applied") >= 1
    assert sample(links, "shortener_consumer_caught_up", topic=topic) == 1
    wait_until(lambda: sample(scrape(consumer), "shortener_consumer_lag", topic=topic,
                              partition="0") == 0, timeout=10, what="lag 0 after the catch-up")

    # report_clicks: the hundred was reported; consume_clicks: it was applied.
    reporter = f"http://127.0.0.1:{replica.reporter_metrics_port}/metrics"
    wait_until(lambda: sample(scrape(reporter), "shortener_click_reports_total",
                              outcome="sent") >= 1, timeout=20, what="a click report")
    clicks = f"http://127.0.0.1:{clicks_consumer.metrics_port}/metrics"
    clicks_topic = f"{replica.env['SHORTENER_USER']}-clicks"
    wait_until(lambda: sample(scrape(clicks), "shortener_consumer_records_total",
                              topic=clicks_topic, outcome="applied") >= 1,
               timeout=20, what="the report applied")
