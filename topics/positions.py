"""Positions that know their topic: what the positioned loop (topics/loop.py) asks of the store
that holds its positions (PositionStore), and how a position is found not to fit (the store moved:
PositionMismatch; the topic is another one: TopicRecreated).

The stores: links/positions.py (the master's PostgreSQL, ConsumerPosition rows) and
redirects/consumer.py (a replica's Redis, beside its links).
"""

from __future__ import annotations

import uuid
from typing import Protocol

from kafka import KafkaConsumer

_NO_TOPIC_ID = uuid.UUID(int=0)


def topic_id_get(consumer: KafkaConsumer, topic: str) -> str | None:
    """The topic's id (a UUID, as text) in the consumer's cluster metadata; None if unknown.

    Kafka gives every topic an id when it is created (KIP-516, Kafka 2.8), so a topic deleted
    and created again under the same name has another id. kafka-python 3.0.12 keeps it from
    MetadataResponse v10+ (ClusterMetadata.topic_id); a broker that does not send it (older
    than 2.8), or a topic missing from the metadata, gives None (all-zero ids count as none).
    """
    # KafkaConsumer offers no public accessor for its ClusterMetadata; _cluster is the one the
    # consumer itself refreshes (on errors, and every metadata_max_age_ms).
    cluster = getattr(consumer, "_cluster", None)
    found = cluster.topic_id(topic) if cluster is not None else None
    if found is None or found == _NO_TOPIC_ID:
        return None
    return str(found)


class PositionMismatch(Exception):
    """The store's position is not the one this consumer expected: the store was wiped or
    restarted empty, or another consumer writes to it. Re-seek from what is stored."""

    def __init__(self, partition: int, expected: int | None, stored: int | None) -> None:
        super().__init__(f"partition {partition}: expected position {expected}, store has {stored}")
        self.partition = partition
        self.expected = expected
        self.stored = stored


class TopicRecreated(Exception):
    """The topic is not the one the stored positions belong to (deleted and created again, or
    truncated): what the store derived from it must go, and the topic be read from the start."""


class PositionStore(Protocol):
    """Where a loop's positions live (links/positions.py: PostgreSQL; redirects/consumer.py:
    Redis), with the topic id stored beside them."""

    # Errors meaning "the store is unavailable": retried with back-off, then repositioned.
    store_errors: tuple[type[Exception], ...]
    # Errors meaning "the records' content is at fault" (topics.batching.CONTENT_ERRORS and the
    # store's own refusals of a value): the batch is split until the records at fault are found.
    content_errors: tuple[type[Exception], ...]
    # Whether the store can go on past records deleted unread (reported as lost); if not, a
    # stored position before a partition's start counts as a recreated topic.
    records_lost_tolerated: bool

    def positions_load(self) -> dict[int, int]:
        """partition -> stored position (the offset of the next record to apply)."""
        ...

    def topic_id_load(self) -> str | None:
        """The topic id stored beside the positions (None: none stored)."""
        ...

    def content_error_reason(self, exc: Exception) -> str:
        """A short, fixed label for shortener_records_rejected_total's `reason`."""
        ...

    def recreated_log(self, *, name: str, topic: str, reason: str) -> None:
        """Say (once, when noticed) that the topic was recreated and what the store drops."""
        ...

    def topic_recreated(self) -> None:
        """Drop what the store holds of the old topic (positions, derived state). Called in the
        loop's error handling: store errors are retried."""
        ...

    def store_error_after(self) -> None:
        """After a store error, before waiting to retry (e.g. drop a broken connection)."""
        ...
