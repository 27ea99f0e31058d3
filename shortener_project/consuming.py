"""What both consumers share: a loop that keeps its topic position in its own store.

consume_links (replica, position in Redis) and consume_clicks (master, position in PostgreSQL)
follow one pattern, after the design brief §5 and "storing offsets outside Kafka" in the
KafkaConsumer documentation:
  * the signal handler only sets `stop`; the loop checks it between batches;
  * the consumer assigns itself every partition (no group rebalancing: it must read them all)
    and seeks to the positions held by its store, or to the beginning where none is held;
  * each partition's batch goes to `apply_batch`, which writes the data and the new position in
    one transaction, refusing (PositionMismatch) if the store's position is not the expected one;
  * the group offset is committed afterwards for monitoring only (lag tooling);
  * the store or Kafka being down is logged and retried with back-off, never fatal;
  * `finally` closes the Kafka consumer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from shortener_project.metrics import (
    CONSUMER_BATCH_SECONDS,
    CONSUMER_LAG,
    CONSUMER_RETRIES,
)

logger = logging.getLogger(__name__)


class Record(Protocol):
    """What an apply needs of a Kafka record (kafka-python's ConsumerRecord has it)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class PositionMismatch(Exception):
    """The store's position is not the one this consumer expected: the store was wiped or
    restarted empty, or another consumer writes to it. Re-seek from what is stored."""

    def __init__(self, partition: int, expected: int | None, stored: int | None) -> None:
        super().__init__(f"partition {partition}: expected position {expected}, store has {stored}")
        self.partition = partition
        self.expected = expected
        self.stored = stored


class PositionedConsumer:
    """Subclasses say how positions are read, how a batch is applied and which errors mean
    "the store is unavailable"."""

    name = "consumer"
    store_errors: tuple[type[Exception], ...] = ()
    # Longest wait between retries while Kafka or the store is unavailable.
    backoff_max_seconds = 10.0

    def __init__(
        self,
        *,
        topic: str,
        stop: threading.Event,
        consumer_factory: Callable[[], KafkaConsumer],
        poll_timeout_ms: int = 500,
    ) -> None:
        self.topic = topic
        self.stop = stop
        self.consumer_factory = consumer_factory
        self.poll_timeout_ms = poll_timeout_ms
        self.partitions: list[TopicPartition] = []
        # partition -> the position this consumer believes its store holds (None: nothing)
        self.expected: dict[int, int | None] = {}

    # --- for subclasses -----------------------------------------------------------------

    def positions_load(self) -> dict[int, int]:
        raise NotImplementedError

    def apply_batch(self, partition: int, records: Sequence[Record],
                    expected: int | None) -> int:
        """Apply and return the partition's new position; raise PositionMismatch if stale."""
        raise NotImplementedError

    def on_positioned(self, consumer: KafkaConsumer, stored: dict[int, int]) -> None:
        """Called after every (re)positioning."""

    def on_batch_applied(self) -> None:
        """Called after each batch, once `expected` holds its new position."""

    def on_idle(self) -> None:
        """Called when a poll brought nothing."""

    def on_store_error(self) -> None:
        """Called after a store error, before waiting to retry."""

    def on_round(self) -> None:
        """Called at the start of every round of the loop: each poll (<= poll_timeout_ms), and
        each retry after an error. Its store errors are handled like the loop's."""

    def on_kafka_error(self, exc: Exception) -> None:
        """Called after a Kafka error, before waiting to retry."""

    # --- the loop -----------------------------------------------------------------------

    def run(self) -> None:
        consumer: KafkaConsumer | None = None
        backoff = 0.5
        try:
            while not self.stop.is_set():
                try:
                    self.on_round()
                    if consumer is None:
                        consumer = self.consumer_factory()
                        if not self._assign(consumer):
                            continue  # stopped while waiting for the topic
                        self.reposition(consumer)
                    self._poll_once(consumer)
                    backoff = 0.5
                except PositionMismatch as exc:
                    CONSUMER_RETRIES.labels(self.topic, "position").inc()
                    logger.warning("%s: the store's position differs from ours (%s): it was "
                                   "wiped or restarted empty; re-reading from its stored "
                                   "position (the start of the topic if none)", self.name, exc)
                    if consumer is not None:
                        self.reposition(consumer)
                except KafkaError as exc:
                    CONSUMER_RETRIES.labels(self.topic, "kafka").inc()
                    logger.error("%s: Kafka error: %r; retrying in %.1fs", self.name, exc, backoff)
                    try:
                        self.on_kafka_error(exc)
                    except self.store_errors as store_exc:
                        logger.error("%s: store unavailable: %r", self.name, store_exc)
                    if self.stop.wait(backoff):
                        break
                    backoff = min(backoff * 2, self.backoff_max_seconds)
                except self.store_errors as exc:
                    # Once the store is back its content may differ (restarted empty), and the
                    # failed batch was not written: re-seek from what the store then holds.
                    CONSUMER_RETRIES.labels(self.topic, "store").inc()
                    logger.error("%s: store unavailable: %r; retrying in %.1fs",
                                 self.name, exc, backoff)
                    self.on_store_error()
                    if self.stop.wait(backoff):
                        break
                    backoff = min(backoff * 2, self.backoff_max_seconds)
                    if consumer is not None:
                        try:
                            self.reposition(consumer)
                        except self.store_errors:
                            pass
        finally:
            if consumer is not None:
                # autocommit=False: the group offset is only ever committed after a batch is
                # in the store (and is informational anyway).
                consumer.close(autocommit=False)
            logger.info("%s stopped", self.name)

    def _assign(self, consumer: KafkaConsumer) -> bool:
        """Assign every partition of the topic, waiting for the topic to exist."""
        waited = False
        while not self.stop.is_set():
            partitions = consumer.partitions_for_topic(self.topic)
            if partitions:
                self.partitions = [TopicPartition(self.topic, p) for p in sorted(partitions)]
                consumer.assign(self.partitions)
                return True
            if not waited:
                logger.warning("%s: topic %s does not exist yet; waiting for it (the master "
                               "creates it: manage.py kafka_topics)", self.name, self.topic)
                waited = True
            self.stop.wait(1.0)
            self.on_round()  # waiting is a round too (alive, not stuck)
        return False

    def reposition(self, consumer: KafkaConsumer) -> None:
        stored = self.positions_load()
        self.expected = {}
        for tp in self.partitions:
            if tp.partition in stored:
                consumer.seek(tp, stored[tp.partition])
                self.expected[tp.partition] = stored[tp.partition]
            else:
                consumer.seek_to_beginning(tp)
                self.expected[tp.partition] = None
        logger.info("%s: positioned on %s: stored positions %s", self.name, self.topic,
                    stored or "none (reading from the start)")
        self.on_positioned(consumer, stored)

    def _poll_once(self, consumer: KafkaConsumer) -> None:
        batches = consumer.poll(timeout_ms=self.poll_timeout_ms)
        if not batches:
            self._lag_update(consumer)
            self.on_idle()
            return
        commits = {}
        for tp, records in batches.items():
            started = time.monotonic()
            position = self.apply_batch(tp.partition, records, self.expected.get(tp.partition))
            CONSUMER_BATCH_SECONDS.labels(self.topic).observe(time.monotonic() - started)
            self.expected[tp.partition] = position
            self.on_batch_applied()
            commits[tp] = OffsetAndMetadata(position, "", -1)
            logger.debug("%s: partition %s: %d records to position %d in %.1f ms", self.name,
                         tp.partition, len(records), position,
                         (time.monotonic() - started) * 1000)
        # After the batches, so that the lag does not count what was just applied.
        self._lag_update(consumer)
        try:
            consumer.commit(commits)
        except KafkaError as exc:  # informational only; the truth is in the store
            logger.debug("%s: group offset commit failed: %r", self.name, exc)

    def _lag_update(self, consumer: KafkaConsumer) -> None:
        # highwater() is the partition's end as of the last fetch response: no extra request.
        for tp in self.partitions:
            end = consumer.highwater(tp)
            position = self.expected.get(tp.partition) or 0
            if end is not None:
                CONSUMER_LAG.labels(self.topic, str(tp.partition)).set(max(0, end - position))
