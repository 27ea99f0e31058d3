"""How long the master waits for Kafka, and what it does with its producer, on a real broker.

A topic deleted under a producer that already knows it makes a real delivery that never
succeeds: the broker answers "unknown topic" to every attempt, the producer retries until its
delivery timeout, and (allow_auto_create_topics=False, and the broker's own setting) nothing
creates the topic again. Recreating it lets a record still in flight through."""

from __future__ import annotations

import time
import uuid

import pytest
from django.conf import settings
from django.test import override_settings
from kafka.admin import NewTopic
from kafka.errors import KafkaError, KafkaTimeoutError

from links import publishing
from links.models import Link
from links.selectors import longurl_digest
from testkit import link_records, wait_until
from topics import links as links_module
from topics.clicks import clicks_producer_make
from topics.clients import admin_client
from topics.links import (
    links_topic,
    producer_get,
    producer_reset,
)


def topics() -> set[str]:
    admin = admin_client()
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def topic_create(name: str) -> None:
    admin = admin_client()
    try:
        admin.create_topics([NewTopic(name, 1, 1, topic_configs={"cleanup.policy": "compact"})],
                            wait_for_metadata=True)
    finally:
        admin.close()


def topic_delete(name: str) -> None:
    admin = admin_client()
    try:
        admin.delete_topics([name])
    finally:
        admin.close()
    wait_until(lambda: name not in topics(), timeout=30, what=f"{name} deleted")


@pytest.fixture
def vanished_links_topic():
    """A links topic of its own that the process's producer knows, then deleted under it.
    Yields a function that sets the publish timeout and makes that producer."""
    prefix = f"{settings.SHORTENER_USER}p{uuid.uuid4().hex[:6]}"
    overrides = override_settings(SHORTENER_USER=prefix)
    overrides.enable()
    producer_reset()
    topic_create(links_topic())

    def producer_with(timeout: float):
        with override_settings(SHORTENER_PUBLISH_TIMEOUT=timeout):
            producer = producer_get()
        producer.partitions_for(links_topic())  # the topic's metadata is now known
        topic_delete(links_topic())
        return producer

    try:
        yield producer_with
    finally:
        producer_reset()
        if links_topic() in topics():
            topic_delete(links_topic())
        overrides.disable()


def test_producers_never_create_topics(transactional_db):
    missing = f"{settings.SHORTENER_USER}-no-such-topic"
    producer_reset()
    clicks = clicks_producer_make()
    try:
        with override_settings(SHORTENER_PUBLISH_TIMEOUT=1.0):
            links = producer_get()
        for producer in (links, clicks):
            assert producer.config["allow_auto_create_topics"] is False
        with pytest.raises(KafkaTimeoutError):
            links.send(missing, key=b"abcDEF1", value=b"{}")
        assert missing not in topics()
    finally:
        clicks.close(timeout=1)
        producer_reset()


def test_create_waits_for_the_delivery_timeout_then_answers_503(
        transactional_db, client, vanished_links_topic):
    """One bound: the producer's delivery timeout (SHORTENER_PUBLISH_TIMEOUT). /create neither
    gives up before the producer does nor waits much beyond it."""
    producer = vanished_links_topic(2.0)
    started = time.monotonic()
    response = client.put("/create", data={"longurl": "https://example.com/no-ack"},
                          content_type="application/json")
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    # Not before the producer's delivery timeout. Not much beyond it either, shown without a
    # clock: the producer discarded below means the producer itself failed the record; had
    # /create's own wait (publish_wait_seconds, a second longer) run out first, the record
    # would still be in flight and the producer kept. (An upper bound on `elapsed` would fail
    # on a loaded machine, where the producer's thread expires the batch late.)
    assert 2.0 <= elapsed, elapsed
    assert Link.objects.get(longurl="https://example.com/no-ack").published_at is None
    # A real delivery failure: that producer is discarded (closed, its thread ended), and the
    # next request makes a new one.
    assert links_module._producer is None
    assert producer._closed and not producer._sender.is_alive()


def test_a_wait_that_ends_first_keeps_the_producer_and_its_records_in_flight(
        transactional_db, vanished_links_topic):
    """Only the producer's own failure discards it. A caller whose wait ends earlier gets an
    error, but the shared producer and every record it holds carry on: here a record still in
    flight is delivered once the topic is back."""
    producer = vanished_links_topic(20.0)
    link = Link.objects.create(tinyurl="inFlig1", longurl="https://example.com/in-flight",
                               longurl_sha256=longurl_digest("https://example.com/in-flight"))
    _, future = publishing._send(link)
    with pytest.raises(KafkaError):
        publishing._delivery_wait(producer, future, timeout=0.5)
    assert not future.is_done
    assert links_module._producer is producer
    topic_create(links_topic())
    future.get(timeout=25)
    assert link_records(links_topic(), link.tinyurl)[-1].version == 1
