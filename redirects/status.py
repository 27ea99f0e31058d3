"""The replica's status for the master's admin: published by report_clicks every few seconds,
and soon after consume_links applied links records (bounded: see StatusPublisher._wait_for_next).

A status (topics.replicas.ReplicaStatus) says what an operator asks of a replica:
is it ready and if not why, how far it is behind the links topic, which counter incarnation it
counts in and how many redirects it served, and which code it runs. It goes to the
<user>-replicas topic keyed by node (topics: compacted, at most once); the
admin's replicas page reads it (links/replicas.py). The replica serves nothing new for it.
"""

from __future__ import annotations

import functools
import logging
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone

import redis as redis_lib
from django.conf import settings
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from redis import Redis

from redirects import keys, selectors
from runtime.supervision import SupervisedThread
from topics.clients import consumer_close, producer_close
from topics.links import links_topic
from topics.replicas import (
    links_end_reader_make,
    replica_status_encode,
    replicas_topic,
    status_producer_make,
)

logger = logging.getLogger(__name__)


@functools.cache
def code_version() -> str:
    """The code this process runs: SHORTENER_VERSION if set, else the checkout's git commit
    (12 hex digits, "-dirty" with uncommitted changes), else "unknown"."""
    if settings.SHORTENER_VERSION:
        return settings.SHORTENER_VERSION
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12", "--exclude", "*"],
            cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def replica_readiness(*, redis: Redis) -> tuple[bool, str]:
    """(ready, why not): the same answer as the replica's /readyz (redirects/views.py), with
    its notes (e.g. Kafka unreachable) appended to the reason."""
    try:
        state = selectors.readiness_get(redis=redis,
                                        stale_seconds=settings.SHORTENER_READY_STALE_SECONDS)
    except redis_lib.RedisError as exc:
        return False, f"Redis unavailable: {exc}"
    return state.ready, "; ".join([*([state.reason] if state.reason else []), *state.notes])


class StatusPublisher:
    """Publishes this replica's status every `interval` seconds until `stop` is set.

    Never raises out of run(): Redis or Kafka being away makes the status say so ("unknown"
    fields, not ready), or makes one status be dropped (at most once; see topics/replicas.py).
    Its producer and its links-end reader are closed (topics/clients.py) when a send or a read
    fails and when run() ends, whatever Kafka holds: none of their threads outlives it.
    """

    def __init__(
        self,
        *,
        redis: Redis,
        stop: threading.Event,
        node: str,
        interval: float,
        min_gap: float = 0.1,
        poll: float = 0.05,
        producer_factory: Callable[[], KafkaProducer] = status_producer_make,
        reader_factory: Callable[[], KafkaConsumer] = links_end_reader_make,
    ) -> None:
        self.redis = redis
        self.stop = stop
        self.node = node
        self.interval = interval
        self.min_gap = min_gap
        self.poll = poll
        self.last_positions: dict[int, int] | None = None
        self.producer_factory = producer_factory
        self.reader_factory = reader_factory
        self.producer: KafkaProducer | None = None
        self.reader: KafkaConsumer | None = None
        self.sent = 0
        self.failed = 0

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.publish_once()
                self._wait_for_next()
        finally:
            try:
                self._close_producer()
                self._close_reader()
            finally:
                logger.info("status publisher stopped: %d sent, %d failed", self.sent,
                            self.failed)

    def _wait_for_next(self) -> None:
        """Until the next status is due: `interval` seconds, or sooner once consume_links has
        applied records since the last status (its positions in Redis moved), but never sooner
        than `min_gap` after the last one.

        Why: the master's create-and-wait (links/propagation_wait.py) answers when every ready
        replica's status says it applied the link's record; at one status every 5 s a wait
        would take 2.5 s on average. consume_links runs in another process, so this thread
        looks at the positions it stores (one HGETALL every `poll` seconds, a few µs of Redis)
        rather than being told; `min_gap` bounds the statuses a busy replica sends (10 a
        second at its default) whatever the rate of links."""
        due = time.monotonic() + self.interval
        earliest = time.monotonic() + self.min_gap
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= due:
                return
            if now >= earliest and self._positions_moved():
                return
            self.stop.wait(min(self.poll, due - now) if self.poll > 0 else due - now)

    def _positions_moved(self) -> bool:
        """Whether consume_links' stored positions differ from those of the last status."""
        if self.poll <= 0:
            return False
        try:
            return selectors.links_positions_get(redis=self.redis) != self.last_positions
        except (redis_lib.RedisError, ValueError):
            return False  # the regular status reports what is wrong

    def collect(self) -> dict:
        """This replica's status fields now (see ReplicaStatus)."""
        ready, reason = replica_readiness(redis=self.redis)
        try:
            positions = selectors.links_positions_get(redis=self.redis)
            raw = self.redis.get(keys.clicks_incarnation_key())
            incarnation = raw.decode() if raw else None
            served = (self.redis.hget(keys.clicks_served_key(), incarnation)
                      if incarnation else None)
            position = sum(positions.values()) if positions else None
            redirects = int(served or 0)
        except redis_lib.RedisError:
            positions = position = incarnation = redirects = None
        self.last_positions = positions
        return {
            "node": self.node,
            "links_position": position,
            "links_positions": positions or None,
            "links_end": self._links_end(),
            "ready": ready,
            "reason": reason,
            "incarnation": incarnation,
            "redirects": redirects,
            "version": code_version(),
            "reported_at": datetime.now(timezone.utc),
        }

    def _links_end(self) -> int | None:
        """The links topic's end offset (summed over partitions), or None if Kafka is away."""
        try:
            if self.reader is None:
                self.reader = self.reader_factory()
            partitions = self.reader.partitions_for_topic(links_topic())
            if not partitions:
                return None
            tps = [TopicPartition(links_topic(), p) for p in partitions]
            return sum(self.reader.end_offsets(tps).values())
        except KafkaError as exc:
            logger.warning("links topic's end offset unknown for the status: %r", exc)
            self._close_reader()
            return None

    def _close_producer(self) -> None:
        """Forget the producer and close it (a second to send what it holds, then force-closed:
        a status is at most once). Never raises."""
        producer, self.producer = self.producer, None
        if producer is not None:
            producer_close(producer, 1.0, name="status producer")

    def _close_reader(self) -> None:
        """Forget the links-end reader and close it. Never raises."""
        reader, self.reader = self.reader, None
        if reader is not None:
            consumer_close(reader, name="status reader")

    def publish_once(self) -> bool:
        """Collect and send one status, waiting (bounded) for the ack; True if acknowledged."""
        try:
            key, value = replica_status_encode(**self.collect())
            if self.producer is None:
                self.producer = self.producer_factory()
            self.producer.send(replicas_topic(), key=key, value=value).get(
                timeout=max(self.interval, 5.0))
        except KafkaError as exc:
            self.failed += 1
            logger.warning("replica status not sent (the next follows in %.0fs): %r",
                           self.interval, exc)
            # A producer whose send failed is not reused (as for click reports: kafka-python
            # 3.0.12 does not always recover one after an outage).
            self._close_producer()
            return False
        self.sent += 1
        return True


def status_thread_start(*, redis: Redis, stop: threading.Event) -> SupervisedThread:
    """Start this replica's StatusPublisher in a supervised daemon thread (report_clicks): if
    it dies, it is logged (CRITICAL), counted (shortener_thread_deaths_total{thread=
    "replica-status"}) and started again with a fresh publisher after a back-off, while the
    click reports go on (runtime/supervision.py)."""

    def publish() -> None:
        StatusPublisher(redis=redis, stop=stop, node=settings.SHORTENER_NODE_ID,
                        interval=settings.SHORTENER_STATUS_SECONDS,
                        min_gap=settings.SHORTENER_STATUS_MIN_SECONDS,
                        poll=settings.SHORTENER_STATUS_POLL_SECONDS).run()

    return SupervisedThread(name="replica-status", target=publish, stop=stop, restart=True,
                            daemon=True).start()


