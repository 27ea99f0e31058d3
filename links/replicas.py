"""Every replica's state on the master: the <user>-replicas topic, read when the page is shown.

Each replica's report_clicks publishes its status there every few seconds (redirects/status.py),
keyed by node on a compacted topic, so the topic holds about one record per replica plus at most
ten minutes of newer ones (topics/). The admin's replicas page reads all of it
from the start on every view, within SHORTENER_REPLICAS_READ_SECONDS, rather than having a
consumer fold it into PostgreSQL: nothing more to run, deploy or keep in step, and the page
shows what Kafka holds at that moment. A replica not heard from for
SHORTENER_REPLICA_MISSING_SECONDS, by the broker's clock, is shown missing; one not heard from
for SHORTENER_REPLICA_GONE_SECONDS is gone: not shown, and `manage.py prune` writes a tombstone
for its key (links/pruning.py), after which the reader drops what precedes it. A record that
is no status this code can show is skipped (logged and counted once per process) and the page
says how many there are.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

from django.conf import settings
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from links import selectors
from runtime.metrics import records_rejected_report
from topics.batching import Record
from topics.clients import consumer_close
from topics.records import MessageError, Rejected
from topics.replicas import (
    ReplicaStatus,
    replica_status_decode,
    replicas_reader_make,
    replicas_topic,
)

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
        position, end = self.status.links_position, self.status.links_end
        if end is None:
            return None
        return max(0, end - (position or 0))

    @property
    def state(self) -> str:
        if self.missing:
            return "missing"
        return "ready" if self.status.ready else "not ready"


@dataclass(frozen=True)
class ReplicasView:
    replicas: list[ReplicaState]
    clicks_since: datetime
    error: str | None  # why the statuses could not be read (then `replicas` is empty)
    rejected: int = 0  # records of the topic that are no status this code can show (skipped)


class StatusRecord(Record, Protocol):
    timestamp: int  # ms since the epoch: the broker's LogAppendTime on the replicas topic


@dataclass(frozen=True)
class Statuses:
    """What the replicas topic holds: each node's newest status with its broker timestamp, and
    the records that could not be shown (MessageError), in offset order."""

    newest: dict[str, tuple[ReplicaStatus, datetime]]
    rejected: list[Rejected]


def replica_statuses_read(
    *, timeout: float, reader_factory: Callable[[], KafkaConsumer] = replicas_reader_make
) -> Statuses:
    """The newest status of every node in the replicas topic, with its broker timestamp.

    Reads from the start of every partition to the end offsets taken when it began. A tombstone
    (null value) removes its node: the replica is gone. A record that replica_status_decode
    rejects is skipped and listed in `rejected`. Raises KafkaError if Kafka does not answer,
    TimeoutError if the end is not reached in `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    consumer = reader_factory()
    newest: dict[str, tuple[ReplicaStatus, datetime]] = {}
    rejected: list[Rejected] = []
    try:
        partitions = consumer.partitions_for_topic(replicas_topic())
        if not partitions:
            return Statuses(newest=newest, rejected=rejected)
        tps = [TopicPartition(replicas_topic(), p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the replicas topic was not read within {timeout}s")
            for records in consumer.poll(timeout_ms=int(min(left, 0.5) * 1000)).values():
                for rec in records:
                    statuses_fold(newest=newest, rejected=rejected, record=rec)
        return Statuses(newest=newest, rejected=rejected)
    finally:
        consumer_close(consumer)


def statuses_fold(*, newest: dict[str, tuple[ReplicaStatus, datetime]],
                  rejected: list[Rejected], record: StatusRecord) -> None:
    """Fold one replicas-topic record (a kafka-python ConsumerRecord: key, value, and timestamp
    in ms since the epoch, the broker's LogAppendTime) into `newest` (node -> newest status,
    broker time), or append it to `rejected`. Raises nothing because of the record's content."""
    try:
        status = replica_status_decode(record.key, record.value)
    except MessageError as exc:
        rejected.append(Rejected.of(record, exc))
        return
    if status is None:  # a tombstone: its key is a node (checked), which is gone
        newest.pop(record.key.decode(), None)
        return
    try:
        seen = datetime.fromtimestamp(record.timestamp / 1000, tz=timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        # The broker sets it (LogAppendTime); a client-set CreateTime could be anything.
        rejected.append(Rejected(topic=record.topic, partition=record.partition,
                                 offset=record.offset, reason="range",
                                 error=f"record timestamp {record.timestamp!r} is not a time"))
        return
    newest[status.node] = (status, seen)


# Each view reads the whole topic again: a bad record is logged and counted the first time this
# process reads it, not on every view (a bounded memory of (topic, partition, offset)).
_REPORTED_MAX = 10_000
_reported: dict[tuple[str, int, int], None] = {}


def _rejected_report(rejected: list[Rejected]) -> None:
    new = []
    for r in rejected:
        where = (r.topic, r.partition, r.offset)
        if where not in _reported:
            _reported[where] = None
            new.append(r)
    while len(_reported) > _REPORTED_MAX:
        del _reported[next(iter(_reported))]
    records_rejected_report(new, log=logger)


def replicas_view(*, now: datetime | None = None, reader_factory: Callable[[], KafkaConsumer]
                  = replicas_reader_make) -> ReplicasView:
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
    _rejected_report(statuses.rejected)
    clicks = selectors.clicks_by_node_since(since=clicks_since)
    replicas = []
    for node, (status, seen) in sorted(statuses.newest.items()):
        ago = max(0.0, (now - seen).total_seconds())
        if ago > settings.SHORTENER_REPLICA_GONE_SECONDS:
            continue  # gone: `manage.py prune` tombstones it (links/pruning.py)
        replicas.append(ReplicaState(
            node=node, status=status, last_seen=seen, seen_seconds_ago=ago,
            missing=ago > settings.SHORTENER_REPLICA_MISSING_SECONDS,
            clicks_recent=clicks.get(node, 0)))
    return ReplicasView(replicas=replicas, clicks_since=clicks_since, error=None,
                        rejected=len(statuses.rejected))
