"""Publishing after commit: the master sends a link's current state to the links topic, waits for
Kafka's acknowledgement (acks=all) and marks the link published; the outbox relay
(`manage.py republish_links --pending`) sends what was not acknowledged. Every record is the
link's whole current state with its version (topics/links.py, LinkRecord), so sending one twice,
late or out of order changes nothing on a replica.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from datetime import timedelta

from django.db import connection, transaction
from django.utils import timezone
from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.producer.future import RecordMetadata

from links import selectors
from links.models import Link
from runtime.metrics import LINKS_PUBLISHED
from topics.links import (
    link_record_encode,
    links_topic,
    producer_get,
    producer_reset,
    publish_wait_seconds,
)

logger = logging.getLogger(__name__)


class LinkPublishError(Exception):
    """Kafka did not acknowledge a link in time; the link stays marked unpublished."""


def link_record_of(link: Link) -> tuple[bytes, bytes]:
    """The (key, value) of the link's current state, schema 2 (topics/)."""
    return link_record_encode(
        tinyurl=link.tinyurl,
        version=link.state_version,
        longurl=link.longurl,
        created_at=link.created_at,
        disabled=link.disabled_at is not None,
        expires_at=link.expires_at,
        password_hash=link.password_hash,
    )


def _send(link: Link) -> tuple[KafkaProducer, Future]:
    """Send the link's current state as a record (a takedown too: "disabled", never a
    tombstone). Returns the producer used and the record's future. Raises KafkaError if Kafka
    cannot be reached or the topic's metadata is not found within the publish timeout."""
    producer = producer_get()
    topic = links_topic()
    return producer, _send_on(producer, topic, _one_partition(producer, topic), link)


def _one_partition(producer: KafkaProducer, topic: str) -> int | None:
    """0 if `topic` has exactly one partition (the links topic has one: topics/links.py), so
    that send() can be told the partition; None (the producer's partitioner chooses, by the
    key's hash) otherwise. The default partitioner hashes every key in pure Python (murmur2)
    and reads the topic's partitions twice, a few µs a record for an answer that can only be
    0. Raises KafkaError as send() would (the topic's metadata not found in time)."""
    return 0 if producer.partitions_for(topic) == {0} else None


def _send_on(producer: KafkaProducer, topic: str, partition: int | None,
             link: Link) -> Future:
    key, value = link_record_of(link)
    return producer.send(topic, key=key, value=value, partition=partition)


def _delivery_wait(producer: KafkaProducer, future: Future, *, timeout: float) -> RecordMetadata:
    """Wait up to `timeout` seconds for a record's acknowledgement; returns it (kafka-python's
    RecordMetadata: the partition and offset Kafka gave the record).

    Raises KafkaError if it did not come. If the producer itself failed the record (its
    delivery timeout, or an error it does not retry), the producer is discarded: one whose
    records expired during an outage does not always recover when Kafka comes back
    (kafka-python 3.0.12, idempotent producer; seen in the namespace fault tests, scenario 3).
    If only this wait ran out, the record is still in flight and the producer is kept: closing
    it would fail every other request's records in flight with it.
    """
    if future.is_done and future.exception is None:
        return future.value  # what get() returns, without its timer (a bulk's 10,000 waits)
    try:
        return future.get(timeout=timeout)
    except KafkaError:
        if future.is_done:
            producer_reset(producer)
        raise


def link_publish(*, link: Link) -> None:
    """Send the link's current state, wait for the acknowledgement, mark it published.

    Waits at most the producer's delivery timeout (SHORTENER_PUBLISH_TIMEOUT) plus a second
    (publish_wait_seconds); on a fresh producer, reaching Kafka and then the topic's
    metadata come first, each bounded by the same timeout. Raises LinkPublishError if Kafka did
    not acknowledge: the link then stays marked unpublished and the outbox relay sends it. The
    mark is set only if the version sent is still the link's current one.
    """
    error = links_publish_each([link])[0]
    if error is not None:
        raise error


def _links_mark_published(sent: list[tuple[int, int, int, int]]) -> None:
    """Mark links published: (pk, state_version that was sent, partition, offset of the
    acknowledged record) tuples. The partition and offset are kept with the mark for the links
    audit (Link.published_offset).

    Committed on its own: the mark must only ever follow the acknowledgement, never precede it.
    A link whose state changed since (another version) stays unpublished for the outbox. A
    link already marked keeps its published_at, and takes the newest acknowledged offset: after
    the topic is recreated and every link sent again (republish_links), the offsets must be
    the new topic's, not the old one's.
    """
    if not sent:
        return
    # Each column as one array literal ('{1,2,3}'): psycopg2 adapts a Python list element by
    # element (0.7 µs an integer, measured), the join takes a tenth of that.
    pks, versions, partitions, offsets = (
        "{" + ",".join(map(str, column)) + "}" for column in zip(*sent))
    with transaction.atomic(), connection.cursor() as cursor:
        # The mark need not wait for its own fsync: should PostgreSQL crash and lose it, the
        # outbox re-sends the link, which is harmless (replicas ignore a version they have).
        # That takes a disk flush off every /create; the link's row was committed durably.
        # One round trip for the statements (the ORM would send them apart), one UPDATE for
        # the whole chunk (unnest pairs the arrays row by row). The rows are locked first in
        # the order of their ids: two batches that both sent some of the same links (one made
        # them, the other found them still unmarked) would otherwise lock them in the orders
        # their UPDATE plans visit them, and could deadlock (tests/links/test_create_many.py,
        # the concurrent batches: 3 runs in 4 failed so).
        # The UPDATE changes no indexed column (links.models.Link.Meta), so in a page with room
        # it is HOT: no index entry. The links it marked leave the relay's worklist in the same
        # statement (and so the same commit: a crash loses both or neither); a link whose
        # version changed since it was sent is not marked and stays in the worklist.
        cursor.execute(
            "SET LOCAL synchronous_commit = off; "
            "SELECT count(*) FROM (SELECT FROM links_link WHERE id = ANY(%s::bigint[]) "
            "ORDER BY id FOR NO KEY UPDATE) AS locked; "
            "WITH marked AS ("
            "UPDATE links_link AS l SET published_at = COALESCE(l.published_at, %s), "
            "published_partition = s.partition, published_offset = s.record_offset "
            "FROM unnest(%s::bigint[], %s::bigint[], %s::int[], %s::bigint[]) "
            "AS s(id, version, partition, record_offset) "
            "WHERE l.id = s.id AND l.state_version = s.version RETURNING l.id) "
            "DELETE FROM links_pendinglink AS p USING marked WHERE p.link_id = marked.id",
            [pks, timezone.now(), pks, versions, partitions, offsets],
        )


def links_publish_each(links: Sequence[Link]) -> list[LinkPublishError | None]:
    """Send the current states of `links` all at once, wait for every acknowledgement, and mark
    the acknowledged links published in one statement: the publishing half of a batch of
    creates (links.services.links_create_many), one Kafka batch and one UPDATE for all.

    Returns one entry per link, in order: None if Kafka acknowledged it (its published_at is
    set on the object too), else the LinkPublishError it met; such a link stays marked
    unpublished for the outbox relay. Waits at most publish_wait_seconds() in all, after the
    last record is handed to the producer.
    """
    sent: list[tuple[Link, int, KafkaProducer, Future] | LinkPublishError] = []
    topic = links_topic()
    # The producer and the topic's partitions are looked up once for the batch.
    producer: KafkaProducer | None = None
    partition: int | None = None
    unsendable: LinkPublishError | None = None
    for link in links:
        if unsendable is not None:
            sent.append(unsendable)
            continue
        try:
            if producer is None:
                producer = producer_get()
                partition = _one_partition(producer, topic)
            sent.append((link, link.state_version, producer,
                         _send_on(producer, topic, partition, link)))
        except KafkaError as exc:
            # Raised before the record is queued: the producer could not be made, or the
            # topic's metadata did not come, each after waiting the publish timeout. Kafka's
            # state, not the record's: the rest of the batch shares the answer instead of
            # waiting the same again, each in turn (a burst during an outage: its 503s
            # together, tests/links/test_kafka_silent.py).
            logger.warning("link %s could not be sent, nor the %d after it: %r", link.tinyurl,
                           len(links) - len(sent) - 1, exc)
            unsendable = LinkPublishError(str(exc) or type(exc).__name__)
            sent.append(unsendable)
    # One deadline for all: every record is in flight from here, each bounded by the
    # producer's delivery timeout, so a Kafka that hangs costs the batch one wait, not one each.
    deadline = time.monotonic() + publish_wait_seconds()
    results: list[LinkPublishError | None] = []
    acked: list[tuple[int, int, int, int]] = []
    acked_links: list[Link] = []
    for entry in sent:
        if isinstance(entry, LinkPublishError):
            results.append(entry)
            continue
        link, version, producer, future = entry
        try:
            metadata = _delivery_wait(producer, future,
                                      timeout=max(0.0, deadline - time.monotonic()))
        except KafkaError as exc:
            logger.warning("link %s (version %s) not acknowledged by Kafka: %r", link.tinyurl,
                           version, exc)
            results.append(LinkPublishError(str(exc) or type(exc).__name__))
            continue
        acked.append((link.id, version, metadata.partition, metadata.offset))  # id: see services
        acked_links.append(link)
        results.append(None)
    _links_mark_published(acked)
    now = timezone.now()
    for link in acked_links:
        link.published_at = link.published_at or now
    LINKS_PUBLISHED.labels("acked").inc(len(acked))
    LINKS_PUBLISHED.labels("failed").inc(len(results) - len(acked))
    return results


def links_publish(*, links: Iterable[Link], batch: int = 2000) -> tuple[int, int]:
    """Send many links' current states, `batch` at a time in flight (links_publish_each); mark
    the acknowledged ones published. Returns (sent, failed). A link counts as sent once Kafka
    acknowledged it; it is marked published only if the version sent is still current (see
    _links_mark_published)."""
    sent = failed = 0
    iterator = iter(links)
    while chunk := list(itertools.islice(iterator, batch)):
        results = links_publish_each(chunk)
        errors = sum(1 for r in results if r is not None)
        sent, failed = sent + len(results) - errors, failed + errors
    return sent, failed


def links_publish_pending(*, min_age: timedelta = timedelta(seconds=0)) -> tuple[int, int]:
    """The outbox relay: send every link that Kafka has not acknowledged yet.

    `min_age` leaves alone links whose /create is probably still waiting for its own ack;
    sending them too would only make a harmless duplicate.
    """
    created_before = timezone.now() - min_age if min_age else None
    return links_publish(links=selectors.links_unpublished(created_before=created_before))
