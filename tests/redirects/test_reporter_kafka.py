"""report_clicks when Kafka cannot take its reports: the broker away (nothing listens, or a
listener that never answers), the clicks topic missing or deleted. It keeps running, keeps the
counts in Redis, reports them once Kafka can take them (each counter's count once under the
master's max()), never counts a negative number of reports, and SIGTERM stops it within 10 s in
every state. Real processes: the replica's redis-server, web and report_clicks; real Kafka."""

from __future__ import annotations

import signal
import socket

import pytest

from redirects import keys
from testkit import (
    free_port,
    master_counts,
    own_prefix,
    sample,
    scrape,
    tinyurl_new,
    wait_until,
)
from topics.clicks import clicks_topic
from topics.provisioning import topics_ensure

pytestmark = pytest.mark.timeout(300)

REPORTS = "shortener_click_reports_total"


def store(replica, tinyurl: str) -> None:
    replica.links_ready()  # as consume_links leaves it once caught up
    replica.redis.set(keys.link_key(tinyurl), f"1||https://example.com/{tinyurl}")


def reports(replica, outcome: str) -> float:
    return sample(scrape(f"http://127.0.0.1:{replica.reporter_metrics_port}/metrics"), REPORTS,
                  outcome=outcome)


def start(replica, **kwargs) -> None:
    """Start the reporter and wait for its loop (its SIGTERM handler is installed by then)."""
    runs = replica.reporter_log.read_text().count("click reporter running") \
        if replica.reporter is not None else 0
    replica.start_reporter(**kwargs)
    wait_until(lambda: replica.reporter_log.read_text().count("click reporter running") > runs,
               timeout=20, what="the reporter's loop")


def failing(replica) -> None:
    """Wait until the running reporter has failed to report at least once more."""
    before = reports(replica, "failed")
    wait_until(lambda: reports(replica, "failed") > before, timeout=60, interval=0.5,
               what="a failed report")
    assert replica.reporter.poll() is None, "the reporter died"


def stopped_within_10s(replica) -> str:
    """SIGTERM, then the process must have exited (status 0) within 10 s; returns its log."""
    assert replica.stop_reporter(signal.SIGTERM, timeout=10) == 0
    log = replica.reporter_log.read_text()
    # Never a negative count of sent reports (prometheus_client refuses one with ValueError).
    assert "ValueError" not in log
    return log


def kept(replica, tinyurl: str, count: int) -> None:
    """The counter and its mark are in Redis, for the next run to report."""
    member = keys.clicks_member(incarnation=replica.incarnation(), tinyurl=tinyurl).encode()
    assert replica.clicks_count(tinyurl) == count
    assert member in replica.redis.smembers(keys.clicks_dirty_key())
    assert replica.redis.smembers(keys.clicks_inflight_key()) == set()


@pytest.mark.parametrize("broker", ["nothing listens", "a listener that never answers"])
def test_with_the_broker_away_counts_stay_and_sigterm_stops_within_10s(replica_factory, broker):
    replica = replica_factory(start=False)
    replica.start_web()
    tinyurl = tinyurl_new()
    store(replica, tinyurl)
    replica.click(tinyurl, 130)  # a hundred due at once, thirty more for the flush
    silent = socket.socket()
    try:
        silent.bind(("127.0.0.1", 0))
        if broker == "nothing listens":
            address = f"127.0.0.1:{free_port()}"
        else:
            silent.listen(64)  # connections complete in the kernel; nothing is ever read
            address = f"127.0.0.1:{silent.getsockname()[1]}"
        start(replica, flush_seconds=1, KAFKA_BOOTSTRAP_SERVERS=address)
        failing(replica)
        failing(replica)  # and again: it keeps running
        assert reports(replica, "sent") == 0
        log = stopped_within_10s(replica)
    finally:
        silent.close()
    assert "click reporter stopped: 0 reports sent" in log
    kept(replica, tinyurl, 130)
    # Kafka reachable: the kept counts are reported, each counter's count once.
    start(replica)
    stopped_within_10s(replica)
    assert master_counts(tinyurl) == {f"{replica.incarnation()}:{tinyurl}": 130}


def test_with_its_topic_missing_then_deleted_it_keeps_the_counts_and_reports_them_once_it_exists(
    replica_factory,
):
    # A prefix of its own: its clicks topic does not exist until this test creates it.
    with own_prefix("m") as (user, admin):
        replica = replica_factory(start=False)
        replica.start_web()
        tinyurl = tinyurl_new()
        store(replica, tinyurl)
        counter = None

        # 1. The topic is missing: every send waits for metadata that never names it.
        replica.click(tinyurl, 120)
        start(replica, flush_seconds=1)
        failing(replica)
        assert reports(replica, "sent") == 0
        assert replica.clicks_count(tinyurl) == 120
        counter = f"{replica.incarnation()}:{tinyurl}"

        # 2. The topic is created: the counts it kept are reported.
        topics_ensure()
        wait_until(lambda: master_counts(tinyurl) == {counter: 120}, timeout=60,
                   interval=0.5, what="the kept count, reported")
        replica.click(tinyurl, 10)
        wait_until(lambda: master_counts(tinyurl) == {counter: 130}, timeout=30,
                   interval=0.5, what="the next flush")

        # 3. The topic is deleted under the running reporter: it keeps running and keeps
        # the counts; SIGTERM in that state.
        admin.delete_topics([clicks_topic()])
        wait_until(lambda: clicks_topic() not in admin.list_topics(), timeout=30,
                   what="the topic deleted")
        replica.click(tinyurl, 15)
        failing(replica)
        stopped_within_10s(replica)
        kept(replica, tinyurl, 145)

        # 4. Created again: the next run reports what was kept, and SIGTERM in the normal
        # state is as quick.
        topics_ensure()
        start(replica)
        stopped_within_10s(replica)
        assert master_counts(tinyurl) == {counter: 145}
