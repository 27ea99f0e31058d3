"""The positioned consumer loop: a topic read into a store that keeps its own topic position.

consume_links (replica, position in Redis), consume_clicks and the links audit (master, positions
in PostgreSQL) follow one pattern, after the design brief §5 and the KafkaConsumer documentation:
  * the signal handler only sets `stop`; the loop checks it between batches;
  * the consumer assigns itself every partition (no group rebalancing: it must read them all)
    and seeks to the positions held by its store, or to the beginning where none is held;
  * each partition's batch goes to the batch strategy, whose writes put the data and the new
    position in one transaction, refusing (PositionMismatch) if the store's position is not the
    expected one;
  * a batch that fails because of its records' content (the store's `content_errors`: a value
    the store cannot hold, a field the code cannot use) is split in halves until the record(s)
    at fault are found (topics/batching.py, BatchIsolation); those are rejected (logged once
    with topic, partition, offset and reason, counted in shortener_records_rejected_total) and
    the position moves past them in the write that applies the records after them. A record
    never stops the loop;
  * the store or Kafka being down (`store_errors`, KafkaError) is logged and retried with an
    exponential back-off, from 0.5 s doubling to `backoff_max_seconds`, reset only when a batch
    has committed again (shortener_consumer_backoff_seconds); nothing is skipped meanwhile;
  * positions know their topic: the topic's id (Kafka's metadata, KIP-516) is stored beside
    them, and a store whose id differs from the topic's, a stored position beyond a partition's
    end, records arriving below the stored position (the fetch was reset), or a log truncated
    below the position (KIP-320) mean the topic was deleted and recreated: the store drops what
    it derived from the old topic and the consumer reads the new one from the start
    (shortener_consumer_topic_recreated_total);
  * the group offset is committed afterwards for monitoring only (lag tooling): at most
    every `group_commit_seconds` while batches stream in, and at the first poll that brings
    nothing (so an idle consumer's group offset is its stored position);
  * `finally` closes the Kafka consumer and the strategy.

It is composed, never subclassed, after Sentry Arroyo's StreamProcessor: a position store
(PositionStore: where positions live, what its errors mean, what a recreated topic costs it), a
batch write and a batch strategy (topics/batching.py: how and when batches are written), and an
optional Observer (the replica's readiness watches the rounds). topics/positions.py holds
the store's side: PositionStore, PositionMismatch, TopicRecreated and the topic's id.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError, LogTruncationError, OffsetOutOfRangeError
from kafka.structs import OffsetAndMetadata

from runtime.metrics import (
    CONSUMER_BACKOFF_SECONDS,
    CONSUMER_BATCH_SECONDS,
    CONSUMER_LAG,
    CONSUMER_OUT_OF_RANGE,
    CONSUMER_RECORDS_LOST,
    CONSUMER_RETRIES,
    CONSUMER_TOPIC_RECREATED,
)
from topics.batching import BatchIsolation, BatchWrite, StrategyFactory, Writes
from topics.clients import consumer_close
from topics.positions import PositionMismatch, PositionStore, TopicRecreated, topic_id_get

logger = logging.getLogger(__name__)

class Observer:
    """What the loop tells an onlooker: nothing is done by default (the replica's readiness,
    redirects/consumer.py, is the one that listens). Each call is inside the loop's error
    handling: store errors, KafkaError and PositionMismatch raised here are the loop's own."""

    def on_round(self) -> None:
        """At the start of every round of the loop: each poll (<= poll_timeout_ms), each retry
        after an error, each second spent waiting for the topic to exist."""

    def on_positioned(self, *, consumer: KafkaConsumer, stored: dict[int, int]) -> None:
        """After every (re)positioning; stored: the positions it started from."""

    def on_batch_applied(self) -> None:
        """After each batch, once `Loop.expected` holds its new position."""

    def on_idle(self) -> None:
        """When a poll brought nothing."""

    def on_kafka_error(self, exc: Exception) -> None:
        """After a Kafka error, before waiting to retry."""

    def on_topic_recreated(self) -> None:
        """Before the store drops what it holds of the old topic."""


class Loop:
    """One topic read into one store; see the module's docstring. `run()` until `stop` is set.

    name: what log lines begin with. write: how a batch and its position are written (called by
    the strategy, through the loop's BatchIsolation). strategy: builds the BatchStrategy from
    the isolation and the loop's `committed` (default: Writes, each batch written at once).
    backoff_max_seconds: the cap of the retry back-off.
    """

    # Retries while Kafka or the store is unavailable wait 0.5 s, then twice as long each time,
    # up to backoff_max_seconds; the wait goes back to 0.5 s only once a batch has committed.
    backoff_initial_seconds = 0.5
    # How often the loop asks the broker for fresh metadata, to see a recreated topic's new id
    # even while no fetch fails (kafka-python's own refresh is every 5 minutes by default).
    topic_check_seconds = 5.0
    # The group offset only shows progress, and its commit is a synchronous broker round trip:
    # after every batch, a sixth of a fresh replica's load (py-spy, 1,000,000 links: 3.1 s of
    # 18 s). At most this often while batches stream in, and when a poll brings nothing.
    group_commit_seconds = 1.0

    def __init__(
        self,
        *,
        name: str,
        topic: str,
        stop: threading.Event,
        consumer_factory: Callable[[], KafkaConsumer],
        store: PositionStore,
        write: BatchWrite,
        strategy: StrategyFactory = Writes,
        observer: Observer | None = None,
        backoff_max_seconds: float = 10.0,
        poll_timeout_ms: int = 500,
    ) -> None:
        self.name = name
        self.topic = topic
        self.stop = stop
        self.consumer_factory = consumer_factory
        self.store = store
        self.observer = observer if observer is not None else Observer()
        self.backoff_max_seconds = backoff_max_seconds
        self.poll_timeout_ms = poll_timeout_ms
        self.isolation = BatchIsolation(name=name, topic=topic, write=write,
                                        content_errors=store.content_errors,
                                        content_error_reason=store.content_error_reason)
        self.strategy = strategy(isolation=self.isolation, committed=self.committed)
        self.partitions: list[TopicPartition] = []
        # partition -> the position this consumer believes its store holds (None: nothing)
        self.expected: dict[int, int | None] = {}
        # The topic's id as of the last positioning (None: the broker does not say).
        self.topic_id: str | None = None
        self.backoff = self.backoff_initial_seconds
        self._needs_position = False
        self._recreated: str | None = None  # why the topic counts as recreated, until handled
        self._last_topic_check = time.monotonic()
        # Group offsets of the batches applied since the last commit, and when that was.
        self._uncommitted: dict[TopicPartition, OffsetAndMetadata] = {}
        self._sent: dict[TopicPartition, OffsetAndMetadata] = {}  # committed asynchronously
        self._last_group_commit = time.monotonic()

    # --- back-off -------------------------------------------------------------------------

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

    # --- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        store_errors = self.store.store_errors
        consumer: KafkaConsumer | None = None
        try:
            while not self.stop.is_set():
                try:
                    if self._recreated is not None:
                        self._strategy_join("a batch of the old topic failed")
                        self.observer.on_topic_recreated()
                        self.store.topic_recreated()
                        self._recreated = None
                    self.observer.on_round()
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
                    self.store.recreated_log(name=self.name, topic=self.topic, reason=str(exc))
                    self._recreated = str(exc)
                    # A new Kafka consumer: fresh metadata, the new topic's partitions.
                    if consumer is not None:
                        consumer_close(consumer)
                        consumer = None
                except KafkaError as exc:
                    CONSUMER_RETRIES.labels(self.topic, "kafka").inc()
                    logger.error("%s: Kafka error: %r; retrying in %.1fs", self.name, exc,
                                 self.backoff)
                    try:
                        self.observer.on_kafka_error(exc)
                    except store_errors as store_exc:
                        logger.error("%s: store unavailable: %r", self.name, store_exc)
                    if self._backoff_wait():
                        break
                except store_errors as exc:
                    # Once the store is back its content may differ (restarted empty), and the
                    # failed batch was not written: re-seek from what the store then holds.
                    CONSUMER_RETRIES.labels(self.topic, "store").inc()
                    logger.error("%s: store unavailable: %r; retrying in %.1fs",
                                 self.name, exc, self.backoff)
                    self.store.store_error_after()
                    self._needs_position = True
                    if self._backoff_wait():
                        break
        finally:
            if consumer is not None:
                try:  # the last offsets, waited for: an async commit in flight dies with close()
                    consumer.commit({**self._sent, **self._uncommitted}, timeout_ms=2000)
                except Exception:  # noqa: BLE001, S110 - the group offset only shows progress
                    pass
                consumer_close(consumer)
            logger.info("%s stopped", self.name)
            self.close()

    def close(self) -> None:
        """Finish the batch in hand (a stop finishes it: its data and position commit
        together), then close the strategy. Called once, by run() as it ends."""
        try:
            self.strategy.join()
        except Exception as exc:  # noqa: BLE001 - the stored position says what is applied
            logger.error("%s: the last batch failed while stopping: %r; it is read again at "
                         "the next start", self.name, exc)
        self.strategy.close()

    def _strategy_join(self, what: str) -> None:
        # Positions are about to be read from the store: the batches submitted must have
        # finished (or failed: the stored position then says where to read from) first.
        try:
            self.strategy.join()
        except (PositionMismatch, *self.store.store_errors) as exc:
            logger.warning("%s: %s: %r", self.name, what, exc)

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
            self.observer.on_round()  # waiting is a round too (alive, not stuck)
        return False

    def reposition(self, consumer: KafkaConsumer) -> None:
        """Seek every partition to its stored position (the start where none is stored),
        after checking that the positions belong to this topic: raises TopicRecreated if the
        stored topic id is not the topic's, or a position is beyond its partition's end, or
        before its start where the store does not tolerate lost records."""
        self._needs_position = True
        self._strategy_join("a batch failed before repositioning")
        stored = self.store.positions_load()
        stored_id = self.store.topic_id_load()
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
        # Offsets of batches read before this positioning may belong to another topic of the
        # same name or to a store since wiped: not shown.
        self._uncommitted = {}
        for tp in self.partitions:
            if tp.partition in stored:
                position = stored[tp.partition]
                if position < starts[tp]:
                    self._position_before_start(tp, position, starts[tp])
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
        self.observer.on_positioned(consumer=consumer, stored=stored)

    def _position_before_start(self, tp: TopicPartition, position: int, start: int) -> None:
        """The records [position, start) were deleted before this consumer read them (a
        time-limited topic, DeleteRecords): say so (ERROR, metrics) and read on from `start`;
        or, for a store that cannot carry on without them, raise TopicRecreated."""
        if not self.store.records_lost_tolerated:
            # Records deleted unread may have changed what the store derived (a replica's
            # links): only reading what the topic holds from its start again is sound.
            raise TopicRecreated(f"the stored position {position} of partition {tp.partition} "
                                 f"is before its first retained offset {start}")
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
            # kafka-python 3.0.12's poll() may sleep retry_backoff_ms (100 ms) with no fetch in
            # flight (5-11 times in 1,000,000 links); a poll without a timeout does not.
            batches = (consumer.poll(timeout_ms=0)
                       or consumer.poll(timeout_ms=self.poll_timeout_ms))
        except LogTruncationError as exc:
            # kafka-python validates the fetch position against the leader's epochs (KIP-320)
            # and finds the log ends below it. With acks=all and no unclean leader election
            # (manage.py kafka_topics checks both) no acknowledged record is ever truncated, so
            # this is a topic deleted and created again under the consumer, seen before its
            # new id reaches this process' metadata; retrying would raise it again for ever.
            raise TopicRecreated(f"Kafka found its log truncated below the position ({exc})") \
                from None
        except OffsetOutOfRangeError as exc:
            # The fetch position left the partition's range: records deleted (it lagged past a
            # time-limited topic's retention) or the topic recreated. Re-read, as at start.
            # (Raised only without auto_offset_reset, as consume_clicks runs.)
            logger.debug("%s: fetch out of range: %r", self.name, exc)
            self.reposition(consumer)
            return
        self._topic_check(consumer)
        if not batches:
            self._lag_update(consumer)
            self.strategy.poll()
            self._group_commit(consumer)
            self.observer.on_idle()
            return
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
            position = self.strategy.submit(partition=tp.partition, records=records,
                                            expected=expected, topic_id=self.topic_id)
            CONSUMER_BATCH_SECONDS.labels(self.topic).observe(time.monotonic() - started)
            self.expected[tp.partition] = position
            self.observer.on_batch_applied()
            self._uncommitted[tp] = OffsetAndMetadata(position, "", -1)
            logger.debug("%s: partition %s: %d records to position %d in %.1f ms", self.name,
                         tp.partition, len(records), position,
                         (time.monotonic() - started) * 1000)
        # After the batches, so that the lag does not count what was just applied.
        self._lag_update(consumer)
        if time.monotonic() - self._last_group_commit >= self.group_commit_seconds:
            self._group_commit(consumer)

    def _group_commit(self, consumer: KafkaConsumer) -> None:
        """Commit the group offsets of the batches applied since the last commit, if any."""
        if not self._uncommitted:
            return
        commits, self._uncommitted = self._uncommitted, {}
        self._sent.update(commits)
        self._last_group_commit = time.monotonic()
        # Asynchronous: commit() blocks up to 30 s when Kafka went away (netns scenario 7).
        try:
            consumer.commit_async(commits, callback=self._group_committed)
        except KafkaError as exc:  # informational only; the truth is in the store
            logger.debug("%s: group offset commit failed: %r", self.name, exc)

    def _group_committed(self, offsets: dict, response: object) -> None:  # in a later poll
        if isinstance(response, Exception):
            logger.debug("%s: group offset commit failed: %r", self.name, response)

    def _lag_update(self, consumer: KafkaConsumer) -> None:
        # highwater() is the partition's end as of the last fetch response: no extra request.
        for tp in self.partitions:
            end = consumer.highwater(tp)
            position = self.expected.get(tp.partition) or 0
            if end is not None:
                CONSUMER_LAG.labels(self.topic, str(tp.partition)).set(max(0, end - position))
