"""What every positioned consumer shares: a loop that keeps its topic position in its own store.

consume_links (replica, position in Redis), consume_clicks and the links audit (master, positions
in PostgreSQL) follow one pattern, after the design brief §5 and "storing offsets outside Kafka"
in the KafkaConsumer documentation:
  * the signal handler only sets `stop`; the loop checks it between batches;
  * the consumer assigns itself every partition (no group rebalancing: it must read them all)
    and seeks to the positions held by its store, or to the beginning where none is held;
  * each partition's batch goes to `apply_batch`, which writes the data and the new position in
    one transaction, refusing (PositionMismatch) if the store's position is not the expected one;
  * a batch that fails because of its records' content (`content_errors`: a value the store
    cannot hold, a field the code cannot use) is split in halves until the record(s) at fault
    are found (`batch_isolate`); those are rejected (logged once with topic, partition, offset
    and reason, counted in shortener_records_rejected_total) and the position moves past them in
    the write that applies the records after them. A record never stops the loop;
  * the store or Kafka being down (`store_errors`, KafkaError) is logged and retried with an
    exponential back-off, from 0.5 s doubling to `backoff_max_seconds`, reset only when a batch
    has committed again (shortener_consumer_backoff_seconds); nothing is skipped meanwhile;
  * positions know their topic: the topic's id (Kafka's metadata, KIP-516) is stored beside
    them, and a store whose id differs from the topic's, a stored position beyond a partition's
    end, or records arriving below the stored position (the fetch was reset) mean the topic was
    deleted and recreated: `on_topic_recreated` drops what the store derived from the old topic
    and the consumer reads the new one from the start (shortener_consumer_topic_recreated_total);
  * the group offset is committed afterwards for monitoring only (lag tooling);
  * `finally` closes the Kafka consumer.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError, LogTruncationError
from kafka.structs import OffsetAndMetadata

from runtime.metrics import (
    CONSUMER_BACKOFF_SECONDS,
    CONSUMER_BATCH_SECONDS,
    CONSUMER_LAG,
    CONSUMER_OUT_OF_RANGE,
    CONSUMER_RECORDS_LOST,
    CONSUMER_RETRIES,
    CONSUMER_TOPIC_RECREATED,
    RECORDS_REJECTED,
)

logger = logging.getLogger(__name__)

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


class TopicRecreated(Exception):
    """The topic is not the one the stored positions belong to (deleted and created again, or
    truncated): what the store derived from it must go, and the topic be read from the start."""


class PositionedConsumer:
    """Subclasses say how positions are read, how a batch is written, which errors mean "the
    store is unavailable" and which mean "the records' content is at fault"."""

    name = "consumer"
    store_errors: tuple[type[Exception], ...] = ()
    # What Python raises when data does not fit the code that handles it: a missing key
    # (KeyError), a value out of range (OverflowError, ValueError), a wrong type (TypeError),
    # text that is not UTF-8 (UnicodeError, a ValueError). Raised by a write for one batch,
    # they are the records' fault, not the store's: the batch is split until they are found.
    # Subclasses add their store's own (PostgreSQL's DataError: links/positions.py).
    content_errors: tuple[type[Exception], ...] = (ValueError, TypeError, LookupError,
                                                   ArithmeticError)
    # Retries while Kafka or the store is unavailable wait 0.5 s, then twice as long each time,
    # up to this cap; the wait goes back to 0.5 s only once a batch has committed again.
    backoff_initial_seconds = 0.5
    backoff_max_seconds = 10.0
    # How often the loop asks the broker for fresh metadata, to see a recreated topic's new id
    # even while no fetch fails (kafka-python's own refresh is every 5 minutes by default).
    topic_check_seconds = 5.0
    # True if apply_batch returns before its write has committed (the caller then calls
    # committed() itself once it has).
    pipelined = False

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
        # The topic's id as of the last positioning (None: the broker does not say).
        self.topic_id: str | None = None
        self.backoff = self.backoff_initial_seconds
        self._needs_position = False
        self._recreated: str | None = None  # why the topic counts as recreated, until handled
        self._last_topic_check = time.monotonic()

    # --- for subclasses -----------------------------------------------------------------

    def positions_load(self) -> dict[int, int]:
        raise NotImplementedError

    def topic_id_load(self) -> str | None:
        """The topic id stored beside the positions (None: none stored)."""
        return None

    def batch_write(self, partition: int, records: Sequence[Record], expected: int | None,
                    rejected: Mapping[int, str]) -> int:
        """Write one batch and its new position in one atomic step; return the position.

        rejected: offset -> reason of records in `records` to step over (counted in the store
        as rejected, not applied). Raise PositionMismatch (nothing written) if the store's
        position is not `expected`, a store error if the store fails, a content error if the
        records' content is refused.
        """
        raise NotImplementedError

    def apply_batch(self, partition: int, records: Sequence[Record],
                    expected: int | None) -> int:
        """Apply and return the partition's new position; raise PositionMismatch if stale."""
        return self.batch_isolate(partition, records, expected)

    def content_error_reason(self, exc: Exception) -> str:
        """A short, fixed label for shortener_records_rejected_total's `reason`."""
        return type(exc).__name__

    def on_topic_recreated(self) -> None:
        """Drop what the store holds of the old topic (positions, and for a replica its
        links). Called inside the loop's error handling: store errors are retried."""

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

    def recreated_log(self, reason: str) -> None:
        logger.error("%s: the topic %s was deleted and created again (%s): dropping the "
                     "positions held for the old topic and reading the new one from the start",
                     self.name, self.topic, reason)

    # --- rejecting what the store refuses ----------------------------------------------

    def batch_isolate(self, partition: int, records: Sequence[Record], expected: int | None,
                      *, failed: Exception | None = None) -> int:
        """Write `records` (batch_write); if the write fails on a content error, split the
        batch in halves, in offset order, until the records at fault are single: each is
        rejected and stepped over in the write of the records after it (or alone, if it is the
        last). Returns the new position, the offset after the batch's last record.

        failed: the content error a write of the whole batch already raised (it is not tried
        again). Store errors and PositionMismatch propagate (the batch is read again from the
        stored position: parts written before stay written, each with its own position).
        """
        position = expected
        parts: list[Sequence[Record]] = [records]
        pending: list[Record] = []  # isolated, to be stepped over by the next write
        reasons: dict[int, tuple[str, str]] = {}  # offset -> (label, the error's text)
        while parts:
            part = parts.pop(0)
            if failed is None:
                try:
                    position = self.batch_write(
                        partition, [*pending, *part], position,
                        {r.offset: reasons[r.offset][0] for r in pending})
                except self.content_errors as exc:
                    failed = exc
                else:
                    self._rejected_report(pending, reasons)
                    pending = []
                    continue
            if len(part) == 1:
                pending.append(part[0])
                reasons[part[0].offset] = (self.content_error_reason(failed), repr(failed))
            else:
                if part is records:
                    logger.warning("%s: a batch of %d record(s) of %s[%d] from offset %d was "
                                   "refused for its content (%r): finding the record(s) at "
                                   "fault", self.name, len(records), self.topic, partition,
                                   records[0].offset, failed)
                middle = len(part) // 2
                parts[:0] = [part[:middle], part[middle:]]
            failed = None
        if pending:
            position = self.batch_write(partition, pending, position,
                                        {r.offset: reasons[r.offset][0] for r in pending})
            self._rejected_report(pending, reasons)
        assert position is not None
        return position

    def _rejected_report(self, records: Sequence[Record],
                         reasons: Mapping[int, tuple[str, str]]) -> None:
        # After the write that stepped over them: logged and counted once.
        for rec in records:
            label, text = reasons[rec.offset]
            RECORDS_REJECTED.labels(self.topic, label).inc()
            logger.error("%s: rejected record topic=%s partition=%s offset=%s: the store "
                         "refused its content: %s", self.name, rec.topic, rec.partition,
                         rec.offset, text)

    # --- the loop -----------------------------------------------------------------------

    def committed(self) -> None:
        """A batch has really committed: the store works, so the next failure starts the
        back-off from its beginning again."""
        if self.backoff != self.backoff_initial_seconds:
            self.backoff = self.backoff_initial_seconds
            CONSUMER_BACKOFF_SECONDS.labels(self.topic).set(0)

    def _backoff_wait(self) -> bool:
        """Wait before a retry; True if stopped meanwhile."""
        CONSUMER_BACKOFF_SECONDS.labels(self.topic).set(self.backoff)
        stopped = self.stop.wait(self.backoff)
        self.backoff = min(self.backoff * 2, self.backoff_max_seconds)
        return stopped

    def run(self) -> None:
        consumer: KafkaConsumer | None = None
        try:
            while not self.stop.is_set():
                try:
                    if self._recreated is not None:
                        self.on_topic_recreated()
                        self._recreated = None
                    self.on_round()
                    if consumer is None:
                        consumer = self.consumer_factory()
                        if not self._assign(consumer):
                            continue  # stopped while waiting for the topic
                        self._needs_position = True
                    if self._needs_position:
                        self.reposition(consumer)
                    self._poll_once(consumer)
                except PositionMismatch as exc:
                    CONSUMER_RETRIES.labels(self.topic, "position").inc()
                    logger.warning("%s: the store's position differs from ours (%s): it was "
                                   "wiped or restarted empty; re-reading from its stored "
                                   "position (the start of the topic if none)", self.name, exc)
                    self._needs_position = True
                except TopicRecreated as exc:
                    CONSUMER_TOPIC_RECREATED.labels(self.topic).inc()
                    self.recreated_log(str(exc))
                    self._recreated = str(exc)
                    # A new Kafka consumer: fresh metadata, the new topic's partitions.
                    if consumer is not None:
                        self._consumer_close(consumer)
                        consumer = None
                except KafkaError as exc:
                    CONSUMER_RETRIES.labels(self.topic, "kafka").inc()
                    logger.error("%s: Kafka error: %r; retrying in %.1fs", self.name, exc,
                                 self.backoff)
                    try:
                        self.on_kafka_error(exc)
                    except self.store_errors as store_exc:
                        logger.error("%s: store unavailable: %r", self.name, store_exc)
                    if self._backoff_wait():
                        break
                except self.store_errors as exc:
                    # Once the store is back its content may differ (restarted empty), and the
                    # failed batch was not written: re-seek from what the store then holds.
                    CONSUMER_RETRIES.labels(self.topic, "store").inc()
                    logger.error("%s: store unavailable: %r; retrying in %.1fs",
                                 self.name, exc, self.backoff)
                    self.on_store_error()
                    self._needs_position = True
                    if self._backoff_wait():
                        break
        finally:
            if consumer is not None:
                self._consumer_close(consumer)
            logger.info("%s stopped", self.name)

    @staticmethod
    def _consumer_close(consumer: KafkaConsumer) -> None:
        # autocommit=False: the group offset is only ever committed after a batch is in the
        # store (and is informational anyway).
        try:
            consumer.close(autocommit=False)
        except Exception:  # noqa: BLE001 - closing a broken consumer must not raise
            logger.exception("closing the Kafka consumer failed")

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
        """Seek every partition to its stored position (the start where none is stored),
        after checking that the positions belong to this topic: raises TopicRecreated if the
        stored topic id is not the topic's, or a position is beyond its partition's end. A
        position before the partition's start (records deleted unread) is
        position_before_start's to handle."""
        self._needs_position = True
        stored = self.positions_load()
        stored_id = self.topic_id_load()
        self.topic_id = topic_id_get(consumer, self.topic)
        if stored_id is not None and self.topic_id is not None and stored_id != self.topic_id:
            raise TopicRecreated(f"its id is {self.topic_id}; the stored positions belong to "
                                 f"the topic with id {stored_id}")
        held = [tp for tp in self.partitions if tp.partition in stored]
        starts = consumer.beginning_offsets(held) if held else {}
        ends = consumer.end_offsets(held) if held else {}
        for tp in held:
            if stored[tp.partition] > ends[tp]:
                CONSUMER_OUT_OF_RANGE.labels(self.topic).inc()
                raise TopicRecreated(
                    f"the stored position {stored[tp.partition]} of partition {tp.partition} "
                    f"is beyond its end {ends[tp]}; whatever the topic held from that offset "
                    f"on is lost")
        self.expected = {}
        for tp in self.partitions:
            if tp.partition in stored:
                position = stored[tp.partition]
                if position < starts[tp]:
                    self.position_before_start(tp, position, starts[tp])
                    consumer.seek(tp, starts[tp])
                else:
                    consumer.seek(tp, position)
                # The stored position stays what it is until the next batch commits past it.
                self.expected[tp.partition] = position
            else:
                consumer.seek_to_beginning(tp)
                self.expected[tp.partition] = None
        logger.info("%s: positioned on %s (topic id %s): stored positions %s", self.name,
                    self.topic, self.topic_id or "unknown",
                    stored or "none (reading from the start)")
        self._needs_position = False
        self.on_positioned(consumer, stored)

    def position_before_start(self, tp: TopicPartition, position: int, start: int) -> None:
        """The records [position, start) were deleted before this consumer read them (a
        time-limited topic, DeleteRecords): say so (ERROR, metrics) and read on from `start`.
        Subclasses that cannot carry on without them raise TopicRecreated instead."""
        lost = start - position
        CONSUMER_OUT_OF_RANGE.labels(self.topic).inc()
        CONSUMER_RECORDS_LOST.labels(self.topic).inc(lost)
        logger.error("%s: stored position %d of %s[%d] is before the partition's first "
                     "retained offset %d: %d record(s) were deleted unread and are LOST "
                     "(the topic is meant to be compacted, not time-limited: see "
                     "manage.py kafka_topics); reading on from offset %d", self.name,
                     position, tp.topic, tp.partition, start, lost, start)

    def _topic_check(self, consumer: KafkaConsumer) -> None:
        """Raise TopicRecreated if the topic's id in the consumer's metadata changed."""
        now = time.monotonic()
        if now - self._last_topic_check >= self.topic_check_seconds:
            self._last_topic_check = now
            # Fetched by the next poll; a deleted topic's failing fetches also ask for it.
            consumer._cluster.request_update()  # see topic_id_get for why _cluster
        current = topic_id_get(consumer, self.topic)
        if current is None:
            return
        if self.topic_id is None:
            self.topic_id = current  # the broker did not say at positioning; now it does
        elif current != self.topic_id:
            raise TopicRecreated(f"its id changed from {self.topic_id} to {current}")

    def _poll_once(self, consumer: KafkaConsumer) -> None:
        try:
            batches = consumer.poll(timeout_ms=self.poll_timeout_ms)
        except LogTruncationError as exc:
            # kafka-python validates the fetch position against the leader's epochs (KIP-320)
            # and finds the log ends below it. With acks=all and no unclean leader election
            # (manage.py kafka_topics checks both) no acknowledged record is ever truncated, so
            # this is a topic deleted and created again under the consumer, seen before its
            # new id reaches this process' metadata; retrying would raise it again for ever.
            raise TopicRecreated(f"Kafka found its log truncated below the position ({exc})") \
                from None
        self._topic_check(consumer)
        if not batches:
            self._lag_update(consumer)
            self.on_idle()
            return
        commits = {}
        for tp, records in batches.items():
            expected = self.expected.get(tp.partition)
            if expected is not None and records[0].offset < expected:
                # Offsets only grow in a partition (compaction leaves gaps, never moves one
                # back): records below the stored position come from another topic of the
                # same name, read from its start after the fetch position fell out of range.
                raise TopicRecreated(f"partition {tp.partition} delivered offset "
                                     f"{records[0].offset}, below the stored position "
                                     f"{expected}")
            started = time.monotonic()
            position = self.apply_batch(tp.partition, records, expected)
            CONSUMER_BATCH_SECONDS.labels(self.topic).observe(time.monotonic() - started)
            self.expected[tp.partition] = position
            if not self.pipelined:
                self.committed()
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
