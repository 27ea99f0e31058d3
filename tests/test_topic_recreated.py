"""Positions that know their topic (topics/loop.py): the links and clicks topics
deleted and created again under a running replica (consume_links and its web server), a running
consume_clicks and a running outbox relay (republish_links --pending --follow, with its links
audit). Records of the new topic, at offsets below the old positions, are served and counted;
the replica is not ready from the moment it drops the old topic's links until it has caught up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import pytest
from django.conf import settings
from kafka.errors import KafkaError

import testkit as support
from links.models import ConsumerPosition, Link
from testkit import (
    ROOT,
    free_port,
    link_produce,
    sample,
    scrape,
    tinyurl_new,
    wait_until,
)
from tests.links.test_clicks import NOW
from topics.clicks import click_report_encode, clicks_topic
from topics.clients import admin_client
from topics.links import links_topic, producer_get
from topics.provisioning import topics_ensure


class Outbox:
    """The master's `republish_links --pending --follow` (relay and links audit), on the test
    database."""

    def __init__(self, data_dir) -> None:
        self.log = data_dir / f"outbox-{uuid.uuid4().hex[:6]}.log"
        self.metrics_port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "republish_links", "--pending", "--follow",
             "--interval", "0.5", "--metrics-port", str(self.metrics_port)],
            cwd=ROOT, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
            env={**os.environ, "SHORTENER_ROLE": "master",
                 "SHORTENER_USER": settings.SHORTENER_USER,
                 "DATABASE_URL": support.test_database_url("test_outbox")})

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        support.Replica._stop(self.proc, signal.SIGTERM, timeout=30)


@pytest.fixture
def outbox(transactional_db, test_data_dir):
    process = Outbox(test_data_dir)
    yield process
    process.close()
    wait_until(lambda: _sessions("test_outbox") == 0, timeout=10, what="the outbox' sessions")


def _sessions(application_name: str) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                       "AND datname = current_database()", [application_name])
        return cursor.fetchone()[0]


def topics_recreate(*names: str) -> None:
    """Delete the topics and create them again with the project's settings (manage.py
    kafka_topics' way), as an operator would."""
    admin = admin_client()
    try:
        admin.delete_topics(list(names))
        wait_until(lambda: not set(names) & set(admin.list_topics()), timeout=30,
                   what="the topics deleted")
    finally:
        admin.close()

    def created() -> bool:
        try:
            topics_ensure()
        except KafkaError:
            return False  # still being deleted on the broker
        return True

    wait_until(created, timeout=30, interval=0.5, what="the topics created again")


def topic_id(topic: str) -> str:
    """The topic's id (KIP-516) as the broker's metadata gives it to kafka-python."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS)
    try:
        consumer.partitions_for_topic(topic)
        return str(consumer._cluster.topic_id(topic))
    finally:
        consumer.close()


def ready_events(pubsub) -> list[str]:
    """The keyspace events of the replica's ready mark received so far: "set" or "del"."""
    events = []
    while (message := pubsub.get_message(timeout=0.01)) is not None:
        # "expire": each heartbeat renews the mark's life (services.HEARTBEAT_SCRIPT).
        if message["type"] == "message" and message["data"] in (b"set", b"del"):
            events.append(message["data"].decode())
    return events


def test_topics_recreated_under_a_running_cluster(replica_factory, make_links, clicks_consumer,
                                                  outbox):
    replica = replica_factory(start=False)
    # Redis tells the test of every change of the ready mark, in order (keyspace events).
    replica.redis.config_set("notify-keyspace-events", "Kg$")
    pubsub = replica.redis.pubsub()
    pubsub.subscribe(f"__keyspace@0__:{settings.SHORTENER_USER}:links:ready")
    replica.start_consumer()
    replica.start_web()

    links = make_links(20)
    forged = tinyurl_new()  # a link of the old topic only, at version 5
    link_produce(forged, 5, "https://example.com/old-topic")
    wait_until(lambda: replica.has_all(links) and replica.target(forged), timeout=60,
               what="the links on the replica")
    wait_until(lambda: replica.readyz()[0] == 200, timeout=30, what="the replica ready")
    old_position = replica.position()
    a, b = (Link.objects.get(tinyurl=t) for t in list(links)[:2])
    producer = producer_get()
    for link, incarnation, count in [(a, "old", 3), (a, "old", 4), (a, "old", 5)]:
        key, value = click_report_encode(tinyurl=link.tinyurl, node="n", incarnation=incarnation,
                                         count=count, reported_at=NOW)
        producer.send(clicks_topic(), key=key, value=value).get(timeout=10)
    wait_until(lambda: Link.objects.get(pk=a.pk).clicks == 5, timeout=30, what="the old clicks")
    old_links_id = topic_id(links_topic())
    wait_until(lambda: ConsumerPosition.objects.filter(
        topic=links_topic(), topic_id=old_links_id).exists(), timeout=30,
        what="the audit's position on the old topic")
    ready_events(pubsub)  # what happened before the recreation

    topics_recreate(links_topic(), clicks_topic())
    new_links_id = topic_id(links_topic())
    assert new_links_id != old_links_id
    # The new topics' first records: offset 0, below every old position.
    assert link_produce(forged, 1, "https://example.com/new-topic") < old_position
    key, value = click_report_encode(tinyurl=b.tinyurl, node="n", incarnation="new", count=4,
                                     reported_at=NOW)
    assert producer.send(clicks_topic(), key=key, value=value).get(timeout=10).offset == 0

    # The replica serves the new topic's state (a lower version than it held from the old
    # topic), and the master's links again: the audit had every link sent again.
    wait_until(lambda: replica.target(forged) == "https://example.com/new-topic", timeout=60,
               what="the new topic's record on the replica")
    wait_until(lambda: replica.has_all(links), timeout=60, what="the links sent again")
    response = replica.get(forged)
    assert (response.status_code, response.headers["location"]) == (
        302, "https://example.com/new-topic")
    wait_until(lambda: replica.readyz()[0] == 200, timeout=30, what="the replica ready again")
    # Not ready from the drop until caught up: the mark was deleted, and set again only after.
    events = ready_events(pubsub)
    assert "del" in events and events[events.index("del"):][-1] == "set", events
    consumer_output = replica.consumer_output()
    assert "is not the one this replica read" in consumer_output
    assert consumer_output.index("dropped") < consumer_output.rindex("caught up with")
    assert sample(scrape(f"http://127.0.0.1:{replica.consumer_metrics_port}/metrics"),
                  "shortener_consumer_topic_recreated_total", topic=links_topic()) >= 1

    # consume_clicks counts the new topic's report and says what happened.
    wait_until(lambda: Link.objects.get(pk=b.pk).clicks == 4, timeout=60,
               what="the new clicks topic's report")
    assert Link.objects.get(pk=a.pk).clicks == 5
    assert "ERROR" in clicks_consumer.output()
    assert "was deleted and created again" in clicks_consumer.output()
    assert sample(scrape(f"http://127.0.0.1:{clicks_consumer.metrics_port}/metrics"),
                  "shortener_consumer_topic_recreated_total", topic=clicks_topic()) >= 1

    # The audit resynchronised: its position is in the new topic, with the new topic's id.
    output = outbox.output()
    assert "links audit: the topic" in output and "was deleted and created again" in output
    assert "marked for the outbox relay to send again" in output
    wait_until(lambda: ConsumerPosition.objects.filter(
        topic=links_topic(), topic_id=new_links_id,
        next_offset=support.topic_end(links_topic())).exists(), timeout=60,
        what="the audit on the new topic")
    assert sample(scrape(f"http://127.0.0.1:{outbox.metrics_port}/metrics"),
                  "shortener_consumer_topic_recreated_total", topic=links_topic()) >= 1
    pubsub.close()


def test_a_replica_restarted_after_the_topic_was_recreated_reads_it_from_the_start(
    replica_factory,
):
    """consume_links is stopped while the topic is recreated and refilled past its old position:
    its stored position is inside the new topic, and only the topic id tells it apart."""
    replica = replica_factory()
    old = {tinyurl_new(): f"https://example.com/before/{i}" for i in range(3)}
    for tinyurl, longurl in old.items():
        link_produce(tinyurl, 1, longurl)
    wait_until(lambda: replica.has_all(old), timeout=60, what="the old topic's links")
    old_position = replica.position()
    assert replica.stop_consumer() == 0

    topics_recreate(links_topic())
    new = {tinyurl_new(): f"https://example.com/after/{i}" for i in range(old_position + 5)}
    for tinyurl, longurl in new.items():
        link_produce(tinyurl, 1, longurl)
    assert support.topic_end(links_topic()) > old_position

    replica.start_consumer()
    wait_until(lambda: replica.has_all(new), timeout=60, what="every record of the new topic")
    assert replica.targets(list(old)) == [None] * len(old)  # the old topic's links are gone
    wait_until(lambda: replica.readyz()[0] == 200, timeout=30, what="ready")
    assert "is not the one this replica read" in replica.consumer_output()


def test_a_replica_whose_position_is_before_the_topics_start_reads_what_is_left(
    replica_factory,
):
    """Records deleted before the replica read them (DeleteRecords, which is what a time
    retention does): what it holds may be out of date, so it drops it and reads what the topic
    still holds. A topic of its own (prefix), so that deleting records touches no other test."""
    from kafka import TopicPartition
    from kafka.admin import NewTopic

    from topics.links import link_record_encode

    prefix = f"{settings.SHORTENER_USER}x{uuid.uuid4().hex[:6]}"
    topic = f"{prefix}-links"
    admin = admin_client()
    admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"cleanup.policy": "delete"})])
    try:
        replica = replica_factory(start=False)
        replica.env["SHORTENER_USER"] = prefix

        def produce(tinyurl: str) -> int:
            key, value = link_record_encode(tinyurl=tinyurl, version=1, disabled=False,
                                            longurl=f"https://example.com/{tinyurl}",
                                            expires_at=None, created_at=NOW)
            return producer_get().send(topic, key=key, value=value).get(timeout=10).offset

        def held(tinyurl: str) -> bool:
            return replica.redis.exists(f"{prefix}:link:{tinyurl}") == 1

        first = [tinyurl_new() for _ in range(3)]
        for tinyurl in first:
            produce(tinyurl)
        replica.start_consumer()
        wait_until(lambda: all(held(t) for t in first), timeout=60, what="the first records")
        assert replica.stop_consumer() == 0
        unread, kept = tinyurl_new(), tinyurl_new()
        produce(unread)
        assert produce(kept) == 4
        admin.delete_records({TopicPartition(topic, 0): 4})  # offsets 0-3 gone, 3 unread

        replica.start_consumer()
        wait_until(lambda: held(kept), timeout=60, what="the record still retained")
        assert not any(held(t) for t in [*first, unread])
        assert ("the stored position 3 of partition 0 is before its first retained offset 4"
                in replica.consumer_output())
    finally:
        admin.delete_topics([topic])
        admin.close()
