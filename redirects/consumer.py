"""The replica's links consumer: reads <user>-links into this replica's Redis.

The loop follows the design brief §5 (Sentry's Arroyo, Zulip's queue workers): the signal
handler only sets a stop flag; the loop polls, hands each partition's batch to
services.links_apply_batch (a plain function that tests call directly), commits, and closes the
Kafka consumer in `finally`.

Where the position lives. The consumer assigns itself every partition and seeks to the
position stored in Redis, not to its group's committed offset. Redis holds the position in the
same transaction as the links, so:
  * first start (nothing stored): read the whole topic from the beginning;
  * restart, or SIGKILL at any moment: resume exactly after the last batch that reached Redis;
  * Redis wiped or restarted empty: the stored position is gone, so the topic is read again from
    the beginning, although the group's offsets in Kafka are at the end. This is also noticed
    while running (the position check in every batch, and a check every second when idle).
The group offset is still committed after each batch, for monitoring only (lag tooling).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis as redis_lib
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from redis import Redis

from redirects import selectors, services
from shortener_project import bus

logger = logging.getLogger(__name__)


class LinksConsumer:
    def __init__(
        self,
        *,
        redis: Redis,
        stop: threading.Event,
        consumer_factory: Callable[[], KafkaConsumer] = bus.links_consumer_make,
        idle_check_seconds: float = 1.0,
        poll_timeout_ms: int = 500,
    ) -> None:
        self.redis = redis
        self.stop = stop
        self.consumer_factory = consumer_factory
        self.idle_check_seconds = idle_check_seconds
        self.poll_timeout_ms = poll_timeout_ms
        self.topic = bus.links_topic()
        self.partitions: list[TopicPartition] = []
        # partition -> the position this consumer believes Redis holds (None: nothing stored)
        self.expected: dict[int, int | None] = {}
        # The topic's end when (re)positioned; reaching it means caught up.
        self.catchup_target: dict[int, int] = {}
        self.catchup_started = 0.0
        self.caught_up = False

    # --- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        consumer: KafkaConsumer | None = None
        backoff = 0.5
        try:
            while not self.stop.is_set():
                try:
                    if consumer is None:
                        consumer = self.consumer_factory()
                        if not self._assign(consumer):
                            continue  # stopped while waiting for the topic
                        self._seek_from_redis(consumer)
                    self._poll_once(consumer)
                    backoff = 0.5
                except services.PositionMismatch as exc:
                    logger.warning(
                        "Redis position differs from ours (%s): Redis was wiped or restarted "
                        "empty; re-reading from its stored position (start of topic if none)",
                        exc,
                    )
                    if consumer is not None:
                        self._seek_from_redis(consumer)
                except redis_lib.RedisError as exc:
                    # Redis is down or restarting. Once it is back, its content may differ
                    # from before (restarted empty), so re-seek from what it then stores.
                    logger.error("Redis unavailable: %r; retrying in %.1fs", exc, backoff)
                    if self.stop.wait(backoff):
                        break
                    backoff = min(backoff * 2, 10.0)
                    if consumer is not None:
                        try:
                            self._seek_from_redis(consumer)
                        except redis_lib.RedisError:
                            pass
                except KafkaError as exc:
                    logger.error("Kafka error: %r; retrying in %.1fs", exc, backoff)
                    if self.stop.wait(backoff):
                        break
                    backoff = min(backoff * 2, 10.0)
        finally:
            if consumer is not None:
                # autocommit=False: the group offset is only ever committed after a batch is in
                # Redis (and is informational anyway).
                consumer.close(autocommit=False)
            logger.info("links consumer stopped")

    def _assign(self, consumer: KafkaConsumer) -> bool:
        """Assign every partition of the links topic, waiting for the topic to exist."""
        waited = False
        while not self.stop.is_set():
            partitions = consumer.partitions_for_topic(self.topic)
            if partitions:
                self.partitions = [TopicPartition(self.topic, p) for p in sorted(partitions)]
                consumer.assign(self.partitions)
                return True
            if not waited:
                logger.warning("topic %s does not exist yet; waiting for the master to create it",
                               self.topic)
                waited = True
            self.stop.wait(1.0)
        return False

    def _seek_from_redis(self, consumer: KafkaConsumer) -> None:
        stored = selectors.links_positions_get(redis=self.redis)
        self.expected = {}
        for tp in self.partitions:
            if tp.partition in stored:
                consumer.seek(tp, stored[tp.partition])
                self.expected[tp.partition] = stored[tp.partition]
            else:
                consumer.seek_to_beginning(tp)
                self.expected[tp.partition] = None
        ends = consumer.end_offsets(self.partitions)
        self.catchup_target = {tp.partition: ends[tp] for tp in self.partitions}
        self.catchup_started = time.monotonic()
        self.caught_up = False
        logger.info(
            "positioned on %s: stored positions %s, topic ends %s",
            self.topic, stored or "none (reading from the start)", self.catchup_target,
        )
        self._check_caught_up()
        self._last_idle_check = time.monotonic()

    def _poll_once(self, consumer: KafkaConsumer) -> None:
        batches = consumer.poll(timeout_ms=self.poll_timeout_ms)
        if not batches:
            self._idle_check()
            return
        commits = {}
        for tp, records in batches.items():
            result = services.links_apply_batch(
                redis=self.redis,
                partition=tp.partition,
                records=records,
                expected_position=self.expected.get(tp.partition),
            )
            self.expected[tp.partition] = result.next_offset
            commits[tp] = OffsetAndMetadata(result.next_offset, "", -1)
            logger.debug(
                "partition %s: applied %d, removed %d, skipped %d, position %d",
                tp.partition, result.applied, result.removed, result.skipped, result.next_offset,
            )
        try:
            consumer.commit(commits)
        except KafkaError as exc:  # informational only; the truth is in Redis
            logger.debug("group offset commit failed: %r", exc)
        self._check_caught_up()

    def _idle_check(self) -> None:
        """When nothing arrives, make sure Redis still holds what we think (not wiped)."""
        now = time.monotonic()
        if now - self._last_idle_check < self.idle_check_seconds:
            return
        self._last_idle_check = now
        stored = selectors.links_positions_get(redis=self.redis)
        for partition, expected in self.expected.items():
            if stored.get(partition) != expected:
                raise services.PositionMismatch(partition, expected, stored.get(partition))
        self._check_caught_up()

    def _check_caught_up(self) -> None:
        if self.caught_up:
            return
        for partition, target in self.catchup_target.items():
            position = self.expected.get(partition)
            if target > 0 and (position is None or position < target):
                return
        self.caught_up = True
        logger.info(
            "caught up with %s (end offsets %s) in %.2fs",
            self.topic, self.catchup_target, time.monotonic() - self.catchup_started,
        )
