"""Every replica's state on the master: the <user>-replicas topic, read when the page is shown.

Each replica's report_clicks publishes its status there every few seconds (redirects/status.py),
keyed by node on a compacted topic, so the topic holds about one record per replica plus at most
ten minutes of newer ones (shortener_project/bus.py). The admin's replicas page reads all of it
from the start on every view, within SHORTENER_REPLICAS_READ_SECONDS, rather than having a
consumer fold it into PostgreSQL: nothing more to run, deploy or keep in step, and the page
shows what Kafka holds at that moment. A replica not heard from for
SHORTENER_REPLICA_MISSING_SECONDS, by the broker's clock, is shown missing; one not heard from
for SHORTENER_REPLICA_GONE_SECONDS is gone: not shown, and `manage.py prune` writes a tombstone
for its key (links/pruning.py), after which the reader drops what precedes it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from django.conf import settings
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from links import selectors
from shortener_project import bus
from shortener_project.messages import MessageError, ReplicaStatus, replica_status_decode

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplicaState:
    """One replica as the admin shows it."""

    node: str
    status: ReplicaStatus
    last_seen: datetime  # the broker's time of its newest status (LogAppendTime)
    seen_seconds_ago: float
    missing: bool  # not heard from for SHORTENER_REPLICA_MISSING_SECONDS
    clicks_recent: int  # clicks charted for its node label since `clicks_since`

    @property
    def lag(self) -> int | None:
        """Links-topic records the replica has not applied yet (None: unknown)."""
        position, end = self.status["links_position"], self.status["links_end"]
        if end is None:
            return None
        return max(0, end - (position or 0))

    @property
    def state(self) -> str:
        if self.missing:
            return "missing"
        return "ready" if self.status["ready"] else "not ready"


@dataclass(frozen=True)
class ReplicasView:
    replicas: list[ReplicaState]
    clicks_since: datetime
    error: str | None  # why the statuses could not be read (then `replicas` is empty)


def replica_statuses_read(
    *, timeout: float, reader_factory: Callable[[], KafkaConsumer] = bus.replicas_reader_make
) -> dict[str, tuple[ReplicaStatus, datetime]]:
    """The newest status of every node in the replicas topic, with its broker timestamp.

    Reads from the start of every partition to the end offsets taken when it began. Raises
    KafkaError if Kafka does not answer, TimeoutError if the end is not reached in `timeout`
    seconds. Malformed records are logged (with their offset) and skipped; a tombstone (null
    value) removes its node.
    """
    deadline = time.monotonic() + timeout
    consumer = reader_factory()
    try:
        partitions = consumer.partitions_for_topic(bus.replicas_topic())
        if not partitions:
            return {}
        tps = [TopicPartition(bus.replicas_topic(), p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        newest: dict[str, tuple[ReplicaStatus, datetime]] = {}
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the replicas topic was not read within {timeout}s")
            for records in consumer.poll(timeout_ms=int(min(left, 0.5) * 1000)).values():
                for rec in records:
                    if rec.value is None and rec.key is not None:
                        # A tombstone (links/pruning.py): the replica is gone; compaction
                        # removes its key, and until then the tombstone hides what precedes it.
                        newest.pop(rec.key.decode(errors="replace"), None)
                        continue
                    try:
                        status = replica_status_decode(rec.key, rec.value)
                    except MessageError as exc:
                        logger.warning("skipping malformed replica status topic=%s partition=%s "
                                       "offset=%s: %s", rec.topic, rec.partition, rec.offset, exc)
                        continue
                    seen = datetime.fromtimestamp(rec.timestamp / 1000, tz=timezone.utc)
                    newest[status["node"]] = (status, seen)
        return newest
    finally:
        consumer.close()


def replicas_view(*, now: datetime | None = None, reader_factory: Callable[[], KafkaConsumer]
                  = bus.replicas_reader_make) -> ReplicasView:
    """Every replica that published a status (sorted by node), for the admin's page."""
    now = now or datetime.now(timezone.utc)
    clicks_since = selectors.hour_start(now) - selectors.HOUR
    try:
        statuses = replica_statuses_read(timeout=settings.SHORTENER_REPLICAS_READ_SECONDS,
                                         reader_factory=reader_factory)
    except (KafkaError, TimeoutError) as exc:
        logger.warning("replica statuses could not be read: %r", exc)
        return ReplicasView(replicas=[], clicks_since=clicks_since,
                            error=f"Kafka did not answer: {exc!r}")
    clicks = selectors.clicks_by_node_since(since=clicks_since)
    replicas = []
    for node, (status, seen) in sorted(statuses.items()):
        ago = max(0.0, (now - seen).total_seconds())
        if ago > settings.SHORTENER_REPLICA_GONE_SECONDS:
            continue  # gone: `manage.py prune` tombstones it (links/pruning.py)
        replicas.append(ReplicaState(
            node=node, status=status, last_seen=seen, seen_seconds_ago=ago,
            missing=ago > settings.SHORTENER_REPLICA_MISSING_SECONDS,
            clicks_recent=clicks.get(node, 0)))
    return ReplicasView(replicas=replicas, clicks_since=clicks_since, error=None)
