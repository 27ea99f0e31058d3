"""The replica's links consumer: reads <user>-links into this replica's Redis.

The loop is topics.loop.Loop, composed here of a position store in Redis (RedisPositionStore),
the batch write, a pipelined strategy (redirects/links_writes.py: a worker process decodes the
batches and has Redis apply them while this one polls Kafka for the next), and the replica's
readiness as its observer (LinksConsumer, which owns the loop). The position lives in Redis, in
the same atomic step as the links (services.APPLY_SCRIPT), so:
  * first start (nothing stored): read the whole topic from the beginning;
  * restart, or SIGKILL at any moment: resume exactly after the last batch that reached Redis;
  * Redis wiped or restarted empty: the stored position is gone, so the topic is read again from
    the beginning, although the group's offsets in Kafka are at the end. This is also noticed
    while running: by the position check in every batch, and every second when idle;
  * link values in an older format (an upgraded replica): wiped, and the topic read again
    (services.links_format_ensure);
  * the links topic deleted and created again (its id differs from the one stored beside the
    position, a stored position is beyond its end or before its start, or records arrive below
    the stored position): the links are dropped and the new topic read from its start, not
    ready until caught up (versions in a new topic may start again below the ones held, so
    nothing held can be trusted).

Readiness (what /readyz reports, redirects/selectors.readiness_get):
  * every round (each poll, <= 0.5 s, and each retry while Kafka is unreachable) writes a
    heartbeat, if the last one is at least `heartbeat_seconds` (0.4 s) old; /readyz is 503 once
    it is older than SHORTENER_READY_STALE_SECONDS, i.e. when this process is stopped, dead or
    stuck;
  * "ready" is granted when the consumer reaches the topic's end offsets as read when it
    positioned itself, and revoked on every positioning and whenever the heartbeat had a gap
    longer than the threshold (a SIGSTOP, a restart after a long stop): what Redis holds may be
    that old, so it catches up again first;
  * Kafka unreachable alone does not revoke it: a running replica keeps serving what it holds,
    and /readyz carries a note (every replica would otherwise leave service at once).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import redis as redis_lib
from django.conf import settings
from kafka import KafkaConsumer
from kafka.errors import KafkaError
from redis import Redis

from redirects import keys, selectors, services
from redirects.incarnation import incarnation_ensure
from redirects.links_writes import LinksWrites
from runtime.metrics import CONSUMER_CAUGHT_UP, CONSUMER_RECORDS
from topics.batching import CONTENT_ERRORS, Record, content_error_label
from topics.links import links_consumer_make, links_topic
from topics.loop import Loop, Observer
from topics.positions import PositionMismatch

logger = logging.getLogger(__name__)

NAME = "links consumer"


class RedisPositionStore:
    """A topics.positions.PositionStore in this replica's Redis, beside the links."""

    store_errors = (redis_lib.RedisError,)
    content_errors = CONTENT_ERRORS
    content_error_reason = staticmethod(content_error_label)
    # Records deleted unread may have changed links this replica holds: it cannot go on from
    # past them, only read what the topic holds from its start again (a recreated topic).
    records_lost_tolerated = False

    def __init__(self, *, redis: Redis) -> None:
        self.redis = redis

    def positions_load(self) -> dict[int, int]:
        services.links_format_ensure(redis=self.redis)
        return selectors.links_positions_get(redis=self.redis)

    def topic_id_load(self) -> str | None:
        return selectors.links_topic_id_get(redis=self.redis)

    def recreated_log(self, *, name: str, topic: str, reason: str) -> None:
        logger.warning("%s: the links topic %s is not the one this replica read (%s): "
                       "dropping every link held and reading the topic from its start; not "
                       "ready until caught up", name, topic, reason)

    def topic_recreated(self) -> None:
        dropped = services.links_drop(redis=self.redis)
        logger.warning("%s: dropped %d links of the old topic", NAME, dropped)

    def store_error_after(self) -> None:
        pass  # redis-py reconnects by itself


class LinksConsumer(Observer):
    """consume_links: owns the loop (`loop`, topics.loop.Loop) and watches it as its Observer,
    for the replica's readiness (see the module's docstring). Run it with `run()`."""

    # With Kafka unreachable, making a consumer fails after bus' bootstrap timeout (3 s); with
    # this back-off the heartbeat still beats at least every ~8 s, well inside the 15 s default
    # of SHORTENER_READY_STALE_SECONDS.
    backoff_max_seconds = 5.0
    # While batches stream in, a round takes a few milliseconds, and a heartbeat every round
    # waited each time for the batch in Redis (LinksWrites), undoing the overlap of the two.
    # Idle rounds are 0.5 s apart (the poll's timeout), so they all still beat; the stale
    # threshold is seconds.
    heartbeat_seconds = 0.4

    def __init__(
        self,
        *,
        redis: Redis,
        stop: threading.Event,
        consumer_factory: Callable[[], KafkaConsumer] = links_consumer_make,
        idle_check_seconds: float = 1.0,
        kafka_check_seconds: float = 5.0,
        stale_seconds: float | None = None,
    ) -> None:
        self.topic = links_topic()
        self.redis = redis
        self.idle_check_seconds = idle_check_seconds
        self.kafka_check_seconds = kafka_check_seconds
        self.stale_seconds = (settings.SHORTENER_READY_STALE_SECONDS if stale_seconds is None
                              else stale_seconds)
        self._last_idle_check = 0.0
        self._last_kafka_check = time.monotonic()
        self._last_heartbeat = -math.inf  # the first round beats
        self._consumer: KafkaConsumer | None = None
        # The topic's end when (re)positioned or resumed; reaching it means caught up.
        self.catchup_target: dict[int, int] = {}
        self.catchup_started = 0.0
        self.caught_up = False
        self._retarget = False  # the heartbeat had a gap: read the end offsets again
        self._kafka_down_since: int | None = None  # ms, while Kafka is unreachable
        # Whether <user>:links:kafka_error may be set (an earlier run may have left it).
        self._kafka_error_shown = True
        self.loop = Loop(name=NAME, topic=self.topic, stop=stop,
                         consumer_factory=consumer_factory, store=RedisPositionStore(redis=redis),
                         write=self._batch_write, observer=self,
                         strategy=functools.partial(LinksWrites, redis=redis, stop=stop,
                                                    applied=self._batch_counted),
                         backoff_max_seconds=self.backoff_max_seconds)

    def run(self) -> None:
        self.loop.run()

    # --- batches --------------------------------------------------------------------------

    def _batch_write(self, *, partition: int, records: Sequence[Record], expected: int | None,
                     rejected: Mapping[int, str], topic_id: str | None) -> int:
        result = services.links_apply_batch(redis=self.redis, partition=partition,
                                            records=records, expected_position=expected,
                                            topic_id=topic_id, rejected=rejected.keys())
        self._batch_counted(result)
        return result.next_offset

    def _batch_counted(self, result: services.BatchResult) -> None:
        """A batch is applied (by _batch_write, or by LinksWrites once its reply is read)."""
        CONSUMER_RECORDS.labels(self.topic, "applied").inc(result.applied + result.disabled)
        CONSUMER_RECORDS.labels(self.topic, "stale").inc(result.stale)
        CONSUMER_RECORDS.labels(self.topic, "ignored").inc(result.ignored)
        # "skipped" is what the clicks consumer calls a record it cannot apply, too.
        CONSUMER_RECORDS.labels(self.topic, "skipped").inc(result.rejected)
        self._kafka_reachable()

    def on_batch_applied(self) -> None:
        self._check_caught_up()

    # --- a recreated topic (RedisPositionStore drops the links next) ---------------------

    def on_topic_recreated(self) -> None:
        self.caught_up = False
        CONSUMER_CAUGHT_UP.labels(self.topic).set(0)
        self._consumer = None

    # --- readiness ----------------------------------------------------------------------

    def on_round(self) -> None:
        now = time.monotonic()
        if now - self._last_heartbeat >= self.heartbeat_seconds:
            self._heartbeat()
        if self._retarget and self._consumer is not None:
            self._catchup_retarget(self._consumer)

    def _beat(self) -> bool:
        """One heartbeat; True after a gap past the threshold (stopped, stalled or restarted
        that long, or Redis lost the heartbeat): the ready mark is gone, so catch up with the
        topic as it is now."""
        self._last_heartbeat = time.monotonic()
        if not services.links_heartbeat(redis=self.redis, stale_seconds=self.stale_seconds):
            return False
        self.caught_up = False
        CONSUMER_CAUGHT_UP.labels(self.topic).set(0)
        self._retarget = self._consumer is not None  # else positioning will do it
        return True

    def _heartbeat(self) -> None:
        if not self._beat() and self.caught_up and self.redis.exists(keys.links_restarted_key()):
            # Redis restarted (redirects/incarnation.py, INCARNATION_SCRIPT): the replica answers
            # 503 until this check. Positions as ours: it holds all we applied, ready again at
            # once (no Kafka needed). Others (a backup restored, an empty Redis): PositionMismatch,
            # and the loop reads again from the stored positions, ready once caught up. Never
            # cleared before it is caught up: a consumer that is reading again (from the start
            # after a wipe, from a backup's positions) has applied less than was served, and
            # the links it holds may be older than those answered before (found by the chaos
            # run, seed 2: an older target served while a wiped replica reloaded).
            logger.warning("%s: Redis restarted; checking that it holds what was applied", NAME)
            self._join_then_ready()

    def on_positioned(self, *, consumer: KafkaConsumer, stored: dict[int, int]) -> None:
        self._consumer = consumer
        # The incarnation check here too, not only at the web's next connection: a Redis new,
        # wiped or restarted gets its restarted mark before this reading grants the ready mark
        # (which removes it), so the web's own check later finds this server life known and
        # does not take a replica just caught up out of service again.
        incarnation_ensure(redis=self.redis)
        # Not ready until caught up again: a load balancer keeps this replica out meanwhile.
        services.links_ready_set(redis=self.redis, ready=False)
        self._catchup_retarget(consumer)
        self._last_idle_check = time.monotonic()

    def _catchup_retarget(self, consumer: KafkaConsumer) -> None:
        self.caught_up = False
        CONSUMER_CAUGHT_UP.labels(self.topic).set(0)
        self._retarget = True
        partitions = self.loop.partitions
        ends = consumer.end_offsets(partitions, timeout_ms=self._kafka_timeout_ms())
        self._retarget = False
        self.catchup_target = {tp.partition: ends[tp] for tp in partitions}
        self.catchup_started = time.monotonic()
        self._kafka_reachable()
        self._check_caught_up()

    def on_idle(self) -> None:
        """When nothing arrives, make sure Redis still holds what we think (not wiped), and
        every few seconds that Kafka answers (an idle poll says nothing either way)."""
        now = time.monotonic()
        if now - self._last_idle_check >= self.idle_check_seconds:
            self._last_idle_check = now
            stored = selectors.links_positions_get(redis=self.redis)
            for partition, expected in self.loop.expected.items():
                if stored.get(partition) != expected:
                    raise PositionMismatch(partition, expected, stored.get(partition))
            self._check_caught_up()
        if self._consumer is not None and now - self._last_kafka_check >= self.kafka_check_seconds:
            self._last_kafka_check = now
            try:
                self._consumer.end_offsets(self.loop.partitions,
                                           timeout_ms=self._kafka_timeout_ms())
            except KafkaError as exc:
                self.on_kafka_error(exc)
                return
            self._kafka_reachable()

    def on_kafka_error(self, exc: Exception) -> None:
        if self._kafka_down_since is None:
            self._kafka_down_since = int(time.time() * 1000)
            logger.error("%s: Kafka unreachable (%r): serving the links held; /readyz says so",
                         NAME, exc)
        self._kafka_error_shown = True
        services.links_kafka_error_set(redis=self.redis, error=repr(exc),
                                       since_ms=self._kafka_down_since)

    def _kafka_reachable(self) -> None:
        if self._kafka_error_shown:
            services.links_kafka_error_set(redis=self.redis, error=None)
            self._kafka_error_shown = False
        if self._kafka_down_since is not None:
            logger.info("%s: Kafka reachable again", NAME)
            self._kafka_down_since = None

    def _kafka_timeout_ms(self) -> int:
        # Short enough that a round (and its heartbeat) is never held up for long by Kafka.
        return 2_000

    def _join_then_ready(self) -> bool:
        """Set the ready mark once the batches in flight are applied; False if that wait was
        longer than the stale threshold (then the mark stays off: catch up again).

        The last batches may still be in the worker or in Redis (LinksWrites): ready only once
        they are applied, and the positions given are the ones Redis holds. While this waits
        (a stalled worker: the watchdog allows it a minute) no round beats, and links
        published meanwhile lie past the target just reached: a beat right after the wait
        finds the gap (HEARTBEAT_SCRIPT) and sends the consumer to the topic's end as it is
        now. Found by a tester: the mark set after such a stall, with a heartbeat 11 s old,
        gave 404s for a link made during it."""
        self.loop.strategy.join()
        if self._beat():
            logger.warning("%s: applying the last batches took longer than %g s; catching up "
                           "again with the topic's end as it is now", NAME, self.stale_seconds)
            return False
        services.links_ready_set(redis=self.redis, ready=True, positions=self.loop.expected)
        return True

    def _check_caught_up(self) -> None:
        if self.caught_up or self._retarget or not self.catchup_target:
            return
        for partition, target in self.catchup_target.items():
            position = self.loop.expected.get(partition)
            if target > 0 and (position is None or position < target):
                return
        if not self._join_then_ready():
            return
        self.caught_up = True
        CONSUMER_CAUGHT_UP.labels(self.topic).set(1)
        logger.info("caught up with %s (end offsets %s) in %.2fs", self.topic,
                    self.catchup_target, time.monotonic() - self.catchup_started)
