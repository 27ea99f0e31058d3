"""The replica's links consumer: reads <user>-links into this replica's Redis.

The loop is shortener_project.consuming.PositionedConsumer; here is what is particular to the
replica. The position lives in Redis, in the same transaction as the links
(services.links_apply_batch), so:
  * first start (nothing stored): read the whole topic from the beginning;
  * restart, or SIGKILL at any moment: resume exactly after the last batch that reached Redis;
  * Redis wiped or restarted empty: the stored position is gone, so the topic is read again from
    the beginning, although the group's offsets in Kafka are at the end. This is also noticed
    while running: by the position check in every batch, and every second when idle.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import redis as redis_lib
from kafka import KafkaConsumer
from redis import Redis

from redirects import keys, selectors, services
from shortener_project import bus
from shortener_project.consuming import PositionedConsumer, PositionMismatch, Record
from shortener_project.metrics import CONSUMER_CAUGHT_UP, CONSUMER_RECORDS

logger = logging.getLogger(__name__)


class LinksConsumer(PositionedConsumer):
    name = "links consumer"
    store_errors = (redis_lib.RedisError,)

    def __init__(
        self,
        *,
        redis: Redis,
        stop: threading.Event,
        consumer_factory: Callable[[], KafkaConsumer] = bus.links_consumer_make,
        idle_check_seconds: float = 1.0,
    ) -> None:
        super().__init__(topic=bus.links_topic(), stop=stop, consumer_factory=consumer_factory)
        self.redis = redis
        self.idle_check_seconds = idle_check_seconds
        self._last_idle_check = 0.0
        # The topic's end when (re)positioned; reaching it means caught up.
        self.catchup_target: dict[int, int] = {}
        self.catchup_started = 0.0
        self.caught_up = False

    def positions_load(self) -> dict[int, int]:
        return selectors.links_positions_get(redis=self.redis)

    def apply_batch(self, partition: int, records: Sequence[Record], expected: int | None) -> int:
        result = services.links_apply_batch(redis=self.redis, partition=partition,
                                            records=records, expected_position=expected)
        CONSUMER_RECORDS.labels(self.topic, "applied").inc(len(records) - result.skipped)
        CONSUMER_RECORDS.labels(self.topic, "skipped").inc(result.skipped)
        return result.next_offset

    def on_batch_applied(self) -> None:
        self._check_caught_up()

    def on_positioned(self, consumer: KafkaConsumer, stored: dict[int, int]) -> None:
        ends = consumer.end_offsets(self.partitions)
        self.catchup_target = {tp.partition: ends[tp] for tp in self.partitions}
        self.catchup_started = time.monotonic()
        self.caught_up = False
        CONSUMER_CAUGHT_UP.labels(self.topic).set(0)
        # Not ready until caught up again: a load balancer keeps this replica out meanwhile.
        self.redis.delete(keys.links_ready_key())
        self._last_idle_check = time.monotonic()
        self._check_caught_up()

    def on_idle(self) -> None:
        """When nothing arrives, make sure Redis still holds what we think (not wiped)."""
        now = time.monotonic()
        if now - self._last_idle_check < self.idle_check_seconds:
            return
        self._last_idle_check = now
        stored = self.positions_load()
        for partition, expected in self.expected.items():
            if stored.get(partition) != expected:
                raise PositionMismatch(partition, expected, stored.get(partition))
        self._check_caught_up()

    def _check_caught_up(self) -> None:
        if self.caught_up:
            return
        for partition, target in self.catchup_target.items():
            position = self.expected.get(partition)
            if target > 0 and (position is None or position < target):
                return
        self.caught_up = True
        CONSUMER_CAUGHT_UP.labels(self.topic).set(1)
        self.redis.set(keys.links_ready_key(), "1")
        logger.info("caught up with %s (end offsets %s) in %.2fs", self.topic,
                    self.catchup_target, time.monotonic() - self.catchup_started)
