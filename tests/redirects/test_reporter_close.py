"""report_clicks' Kafka clients are closed when it stops, even while Kafka holds a send: no
kafka-python thread of the click reporter's producers, nor of the status publisher's producer
and links-end reader, outlives ClickReporter.run() or StatusPublisher.run(). In process, so
that threading.enumerate() sees the clients' threads; a real Redis and the real broker."""

from __future__ import annotations

import threading
import uuid

from django.conf import settings
from django.test import override_settings

from redirects import keys
from redirects.counting import click_call
from redirects.reporter import ClickReporter
from redirects.status import StatusPublisher
from testkit import own_prefix, redis_links_ready, tinyurl_new, wait_until
from topics.clicks import clicks_topic
from topics.provisioning import topics_ensure


def kafka_threads(client_id: str) -> list[str]:
    """The live kafka-python 3.0.12 threads of the clients whose client_id starts with
    `client_id`: a producer's sender, `<client_id>-network-thread` (kafka/producer/sender.py),
    and a consumer's IO loop, `kafka-io-<client_id>` (kafka/net/selector.py)."""
    return sorted(t.name for t in threading.enumerate()
                  if t.is_alive() and client_id in t.name
                  and (t.name.endswith("-network-thread") or t.name.startswith("kafka-io-")))


def clicks(redis, tinyurl: str, times: int) -> None:
    for _ in range(times):
        assert click_call(redis=redis, tinyurl=tinyurl) == f"https://example.com/{tinyurl}"


def stopped(run_thread: threading.Thread, stop: threading.Event) -> None:
    stop.set()
    run_thread.join(timeout=30)
    assert not run_thread.is_alive(), "run() did not return after the stop"


def test_a_reporter_stopped_while_kafka_holds_its_reports_leaves_no_producer_thread(
    replica_factory,
):
    # A prefix of its own: its clicks topic is deleted under the running reporter.
    with own_prefix("h") as (user, admin):
        topics_ensure()
        redis = replica_factory(start=False).redis
        tinyurl = tinyurl_new()
        redis.set(keys.link_key(tinyurl), f"1||https://example.com/{tinyurl}")
        redis_links_ready(redis)
        clicks(redis, tinyurl, 100)  # a hundred: due at once
        stop = threading.Event()
        reporter = ClickReporter(redis=redis, stop=stop, node="held", flush_seconds=3600,
                                 shutdown_seconds=1.0)
        run_thread = threading.Thread(target=reporter.run, name="reporter", daemon=True)
        run_thread.start()
        try:
            wait_until(lambda: reporter.sent == 1, timeout=30, what="the first report")
            # The topic deleted: the producer still has its metadata, so the next report is
            # taken at once and then held, retried on UNKNOWN_TOPIC_OR_PARTITION until the
            # delivery timeout (30 s), unacknowledged.
            admin.delete_topics([clicks_topic()])
            wait_until(lambda: clicks_topic() not in admin.list_topics(), timeout=30,
                       what="the topic deleted")
            clicks(redis, tinyurl, 100)
            wait_until(lambda: redis.smembers(keys.clicks_inflight_key()), timeout=30,
                       what="the second report in flight")
        finally:
            stopped(run_thread, stop)
        assert reporter.sent == 1  # the second was held by Kafka, never acknowledged
        assert kafka_threads(f"{user}-clicks-") == []


def test_a_status_publisher_stopped_while_its_sends_wait_for_kafka_leaves_no_client_thread(
    replica_factory,
):
    # A prefix with no topics: every status send waits for metadata that never names the
    # replicas topic (max_block_ms, 5 s) and fails; the links-end reader finds no partitions.
    user = f"{settings.SHORTENER_USER}s{uuid.uuid4().hex[:6]}"
    with override_settings(SHORTENER_USER=user):
        redis = replica_factory(start=False).redis
        stop = threading.Event()
        publisher = StatusPublisher(redis=redis, stop=stop, node="held", interval=0.1)
        run_thread = threading.Thread(target=publisher.run, name="publisher", daemon=True)
        run_thread.start()
        try:
            wait_until(lambda: any(name.endswith("-network-thread")
                                   for name in kafka_threads(f"{user}-status-")),
                       timeout=30, what="a status producer running")
        finally:
            stopped(run_thread, stop)
        assert publisher.sent == 0
        assert kafka_threads(f"{user}-status-") == []
