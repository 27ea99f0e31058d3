"""Bounded growth on the master: what `manage.py prune` does (hourly, deploy/systemd's
shortener-prune.timer). Each step is idempotent and safe to run at any time, alongside
consume_clicks; docs/storage.md gives the sizes it keeps bounded.

1. Click buckets (ClickBucket). The admin charts a link per hour over the last CHART_HOURS and
   per day over the last CHART_DAYS, and its CSV gives every day. The hourly rows of every day
   that lies wholly before the hourly chart's window are summed into one row per (link, node) at
   that day's 00:00 UTC (buckets_roll_up). Every reader of rows that old sums them per day, so
   the charts and the CSV show the same numbers before and after. Daily rows are kept for ever
   by default, because the CSV shows every day; SHORTENER_CLICKS_DAYS_KEEP (>= CHART_DAYS) drops
   older ones (buckets_drop_old). Link.clicks never depends on buckets.

2. Counters of ended incarnations (ClickCounter). A counter is (link, incarnation); a Redis life
   adds one per link clicked in it, for ever. An incarnation has ENDED when
     a. no status in the replicas topic names it as its replica's current incarnation (each
        replica's status names the incarnation its Redis counts in now: two hosts on one Redis
        both name it; a renamed node's old status names it until that node is gone, step 3),
     b. none of its counters rose for SHORTENER_INCARNATION_QUIET_SECONDS: after a Redis
        restart the replica's reporter sends what it still held of the earlier incarnation
        within one flush, then deletes those keys (redirects/reporter.py, ACK_SCRIPT); the quiet
        time covers a reporter or Kafka being away that long;
     c. consume_clicks has applied the clicks topic up to where it ended when the statuses
        were read: a backlog (consume_clicks down or behind) is applied before, never refused.
   Its counters are then folded (incarnations_fold): the incarnation is recorded in
   EndedIncarnation first, under the clicks topic's position row locks, so consume_clicks (which
   holds its partition's row lock for each batch) refuses every later report of it, a replay or
   a reporter's retry alike: one row per incarnation keeps the fold from counting a click twice.
   Then every counter's key `<incarnation>:<tinyurl>` gets a tombstone on the clicks topic
   (on a topic still compacted, compaction removes the key; the topic now keeps records for a
   time instead, topics/clicks.py, where a tombstone is a record the master skips and retention
   deletes: it is kept for topics not yet changed by `kafka_topics`), and only once Kafka
   acknowledged them all are the counters summed into
   FoldedClicks per (link, node label) and deleted, in one transaction. Link.clicks and the
   per-replica breakdown (ClickCounter + FoldedClicks by node) are unchanged by a fold. What a
   fold cannot undo: a report of an ended incarnation that arrives later still carrying clicks
   the master never saw (a replica away longer than both times above, with its Redis kept) is
   refused, logged and counted (shortener_clicks_refused_ended_total); a replica whose status
   names an ended incarnation is logged as an ERROR at every prune.

3. Replicas gone (the replicas topic). A replica whose newest status is older than
   SHORTENER_REPLICA_GONE_SECONDS (by the broker's clock) gets a tombstone for its key; the
   admin's page stops showing it at once (links/replicas.py), and compaction removes the key.
   A replica that comes back publishes a status after the tombstone and is shown again.

4. The replicas' position samples (ReplicaProgress), which time each link's propagation:
   thinned to one a minute past SHORTENER_PROPAGATION_FINE_SECONDS, and each replica's newest
   only past SHORTENER_REPLICA_GONE_SECONDS (links/propagation.py, samples_prune).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone as django_timezone
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from links import buckets, propagation, replicas
from links.models import ConsumerPosition, EndedIncarnation
from topics.clicks import click_report_key, clicks_topic
from topics.clients import consumer_close
from topics.links import producer_get
from topics.replicas import ReplicaStatus, replicas_reader_make, replicas_topic

logger = logging.getLogger(__name__)

# Tombstones sent before waiting for their acknowledgements.
TOMBSTONE_CHUNK = 10_000


# --- 2. counters of ended incarnations --------------------------------------------------------


# Incarnations with counters, not named as current, none of whose counters rose since
# %(quiet_before)s, and not ended yet. A sequential scan of the counters: they have no index on
# incarnation alone, on purpose (one more index entry per new counter in consume_clicks' hot
# path, for a query run once an hour).
_ENDED_SQL = """
SELECT c.incarnation FROM links_clickcounter c
WHERE NOT (c.incarnation = ANY(%(current)s::varchar[]))
  AND NOT EXISTS (SELECT 1 FROM links_endedincarnation e WHERE e.incarnation = c.incarnation)
GROUP BY c.incarnation HAVING max(c.updated_at) < %(quiet_before)s
ORDER BY c.incarnation
"""

_FOLD_SQL = """
WITH gone AS (
    DELETE FROM links_clickcounter WHERE incarnation = %(incarnation)s
    RETURNING link_id, node, count, bots
),
folded AS (
    INSERT INTO links_foldedclicks (link_id, node, clicks, bots)
    SELECT link_id, node, SUM(count), SUM(bots) FROM gone GROUP BY link_id, node
    ON CONFLICT (link_id, node) DO UPDATE
        SET clicks = links_foldedclicks.clicks + EXCLUDED.clicks,
            bots = links_foldedclicks.bots + EXCLUDED.bots
    RETURNING 1
)
SELECT count(*), COALESCE(SUM(count), 0) FROM gone
"""


def incarnations_current(statuses: dict[str, tuple[ReplicaStatus, datetime]]) -> set[str]:
    """The incarnations that the replicas' statuses name as current (any node, gone or not)."""
    return {status.incarnation for status, _ in statuses.values() if status.incarnation}


class ClicksBehind(Exception):
    """consume_clicks has not applied the clicks topic up to the offsets required."""


def incarnations_end(*, current: Iterable[str], now: datetime | None = None,
                     quiet_seconds: float | None = None,
                     applied_to: dict[int, int] | None = None) -> list[str]:
    """Record as ended (EndedIncarnation) every incarnation that has counters, is not in
    `current` and none of whose counters rose for `quiet_seconds` (default
    SHORTENER_INCARNATION_QUIET_SECONDS); returns them, sorted.

    applied_to: partition -> offset that consume_clicks' stored position must have reached (the
    clicks topic's end when the prune began): a report sent before then is applied before its
    incarnation can end, so a backlog (consume_clicks down or behind) never has its clicks
    refused. Raises ClicksBehind (nothing recorded) if a position is short of it.

    Under the row locks of every clicks-topic position, the same lock each consume_clicks batch
    takes on its partition: no batch is in flight while the condition is checked and the rows
    written, and every later batch sees them and refuses the incarnation's reports. Folding
    follows (incarnations_fold). Raises DatabaseError."""
    now = now or django_timezone.now()
    quiet = settings.SHORTENER_INCARNATION_QUIET_SECONDS if quiet_seconds is None else quiet_seconds
    params = {"current": "{" + ",".join(f'"{i}"' for i in sorted(current)) + "}",
              "quiet_before": now - timedelta(seconds=quiet)}
    with transaction.atomic():
        positions = dict(ConsumerPosition.objects.select_for_update()
                         .filter(topic=clicks_topic())
                         .values_list("partition", "next_offset"))
        behind = {p: (positions.get(p, 0), end) for p, end in (applied_to or {}).items()
                  if positions.get(p, 0) < end}
        if behind:
            raise ClicksBehind(f"consume_clicks has not applied {clicks_topic()} up to "
                               f"where it ended when the prune began (partition: (position, "
                               f"end)): {behind}; no incarnation ends until it has")
        with connection.cursor() as cursor:
            cursor.execute(_ENDED_SQL, params)
            ended = [row[0] for row in cursor.fetchall()]
        EndedIncarnation.objects.bulk_create(
            [EndedIncarnation(incarnation=i) for i in ended], ignore_conflicts=True)
    if ended:
        logger.info("incarnation(s) ended (no status names them, counters quiet since %s): %s",
                    params["quiet_before"].isoformat(), ", ".join(ended))
    return ended


def clicks_topic_ends(*, reader_factory: Callable[[], KafkaConsumer] = replicas_reader_make
                      ) -> dict[int, int]:
    """partition -> end offset of the clicks topic now, through a group-less reader. Raises
    KafkaError."""
    reader = reader_factory()
    try:
        partitions = reader.partitions_for_topic(clicks_topic()) or set()
        tps = [TopicPartition(clicks_topic(), p) for p in sorted(partitions)]
        return {tp.partition: end for tp, end in reader.end_offsets(tps).items()} if tps else {}
    finally:
        consumer_close(reader)


def clicks_applied_wait(ends: dict[int, int], *, timeout: float) -> dict[int, int]:
    """Wait up to `timeout` seconds for consume_clicks' stored positions to reach `ends`
    (partition -> offset); returns `ends`. Raises ClicksBehind when they do not."""
    deadline = time.monotonic() + timeout
    while True:
        positions = dict(ConsumerPosition.objects.filter(topic=clicks_topic())
                         .values_list("partition", "next_offset"))
        behind = {p: (positions.get(p, 0), e) for p, e in ends.items() if positions.get(p, 0) < e}
        if not behind:
            return ends
        if time.monotonic() >= deadline:
            raise ClicksBehind(f"consume_clicks is behind on {clicks_topic()} (partition: "
                               f"(position, end)): {behind}; no incarnation ends this run")
        time.sleep(0.5)


@dataclass
class FoldResult:
    incarnations: list[str] = field(default_factory=list)
    counters: int = 0
    clicks: int = 0
    tombstones: int = 0


def _tombstones_send(producer: KafkaProducer, incarnation: str) -> int:
    """A tombstone on the clicks topic for every counter of `incarnation` still held; waits for
    every acknowledgement. Raises KafkaError if one fails (nothing is folded then)."""
    sent = 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT l.tinyurl FROM links_clickcounter c JOIN links_link l "
                       "ON l.id = c.link_id WHERE c.incarnation = %s", [incarnation])
        while rows := cursor.fetchmany(TOMBSTONE_CHUNK):
            futures = [producer.send(clicks_topic(), value=None,
                                     key=click_report_key(incarnation=incarnation, tinyurl=t))
                       for (t,) in rows]
            producer.flush()
            for future in futures:
                future.get(timeout=settings.SHORTENER_PUBLISH_TIMEOUT + 5)
            sent += len(futures)
    return sent


def incarnations_fold(*, producer_factory: Callable[[], KafkaProducer] = producer_get
                      ) -> FoldResult:
    """Fold every ended incarnation not folded yet (EndedIncarnation.folded_at NULL): tombstone
    its counters' keys on the clicks topic, then, once all are acknowledged, sum its counters
    into FoldedClicks per (link, node) and delete them, in one transaction with the
    incarnation's folded_at. A failure leaves the incarnation pending (still refused by
    consume_clicks, its counters still counted) for the next run. Raises KafkaError,
    DatabaseError."""
    result = FoldResult()
    pending = list(EndedIncarnation.objects.filter(folded_at__isnull=True)
                   .order_by("incarnation").values_list("incarnation", flat=True))
    if not pending:
        return result
    producer = producer_factory()
    for incarnation in pending:
        tombstones = _tombstones_send(producer, incarnation)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(_FOLD_SQL, {"incarnation": incarnation})
            counters, clicks = cursor.fetchone()
            EndedIncarnation.objects.filter(incarnation=incarnation).update(
                folded_at=django_timezone.now(), counters=counters, clicks=clicks)
        logger.info("folded incarnation %s: %d counter(s), %d click(s); %d tombstone(s) on %s",
                    incarnation, counters, clicks, tombstones, clicks_topic())
        result.incarnations.append(incarnation)
        result.counters += counters
        result.clicks += clicks
        result.tombstones += tombstones
    return result


# --- 3. replicas gone -------------------------------------------------------------------------


def replicas_gone(statuses: dict[str, tuple[ReplicaStatus, datetime]], *, now: datetime,
                  gone_seconds: float | None = None) -> list[str]:
    """The nodes whose newest status is older than `gone_seconds` (default
    SHORTENER_REPLICA_GONE_SECONDS) at `now`, sorted."""
    gone = settings.SHORTENER_REPLICA_GONE_SECONDS if gone_seconds is None else gone_seconds
    return sorted(node for node, (_, seen) in statuses.items()
                  if (now - seen).total_seconds() > gone)


def replicas_tombstone(nodes: list[str], *, producer: KafkaProducer) -> None:
    """A tombstone for each node's key on the replicas topic; waits for the acknowledgements.
    Raises KafkaError."""
    futures = [producer.send(replicas_topic(), key=node.encode(), value=None)
               for node in nodes]
    producer.flush()
    for future in futures:
        future.get(timeout=settings.SHORTENER_PUBLISH_TIMEOUT + 5)
    if nodes:
        logger.info("replica(s) gone for over %.0fs, tombstoned on %s: %s",
                    settings.SHORTENER_REPLICA_GONE_SECONDS, replicas_topic(),
                    ", ".join(nodes))


# --- all of it --------------------------------------------------------------------------------


@dataclass
class PruneReport:
    bucket_rows_rolled: int = 0
    bucket_rows_dropped: int = 0
    samples_dropped: int = 0  # replicas' position samples thinned (links/propagation.py)
    incarnations_ended: list[str] = field(default_factory=list)
    fold: FoldResult = field(default_factory=FoldResult)
    replicas_gone: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # steps that failed, with why


def prune(*, now: datetime | None = None,
          producer_factory: Callable[[], KafkaProducer] = producer_get,
          reader_factory: Callable[[], KafkaConsumer] = replicas_reader_make,
          catch_up_seconds: float = 60.0,
          still_leading: Callable[[], bool] = lambda: True) -> PruneReport:
    """Every step of the module's docstring, in order; a step that fails is logged and listed
    in the report's `errors`, and the others still run. Incarnations are ended and replicas
    tombstoned only when the replicas topic could be read whole (what it says decides both);
    the statuses are read before any tombstone is written, so an incarnation is ended at the
    earliest one prune after the last node naming it was tombstoned. Incarnations are ended
    only once consume_clicks has applied the clicks topic up to its end as it was when the
    statuses were read (waiting up to `catch_up_seconds`), so no report already sent is
    refused. `still_leading`: whether this run still holds prune's lock (runtime/leadership.py);
    once it does not, the remaining steps are skipped (listed in `errors`), so that a run which
    lost its lock does not go on beside the one that took it."""
    now = now or django_timezone.now()
    report = PruneReport()

    def step(name: str, action: Callable[[], object]) -> object:
        if not still_leading():
            report.errors.append(f"{name}: skipped, this run lost prune's lock")
            return None
        try:
            return action()
        except Exception as exc:  # noqa: BLE001 - one step's failure must not stop the others
            logger.error("prune: %s failed: %r", name, exc)
            report.errors.append(f"{name}: {exc!r}")
            return None

    report.bucket_rows_rolled = step("bucket roll-up",
                                     lambda: buckets.buckets_roll_up(now=now)) or 0
    report.bucket_rows_dropped = step("bucket retention",
                                      lambda: buckets.buckets_drop_old(now=now)) or 0
    report.samples_dropped = step("propagation samples",
                                  lambda: propagation.samples_prune(now=now)) or 0
    read = step("reading the replicas topic", lambda: replicas.replica_statuses_read(
        timeout=max(settings.SHORTENER_REPLICAS_READ_SECONDS, 10.0),
        reader_factory=reader_factory))
    statuses = read.newest if read is not None else None
    ends = step("reading the clicks topic's end", lambda: clicks_topic_ends(
        reader_factory=reader_factory))
    if statuses is not None and ends is not None:
        current = incarnations_current(statuses)
        for ended in EndedIncarnation.objects.filter(incarnation__in=current):
            nodes = sorted(n for n, (s, _) in statuses.items()
                           if s.incarnation == ended.incarnation)
            logger.error("replica(s) %s count in incarnation %s, which ended (folded) at %s: "
                         "their reports of it are refused. Restart their Redis to start a new "
                         "incarnation.", ", ".join(nodes), ended.incarnation,
                         ended.ended_at.isoformat())
        report.incarnations_ended = step("ending incarnations", lambda: incarnations_end(
            current=current, now=now,
            applied_to=clicks_applied_wait(ends, timeout=catch_up_seconds))) or []
    report.fold = step("folding ended incarnations",
                       lambda: incarnations_fold(producer_factory=producer_factory)) or FoldResult()
    if statuses is not None:
        gone = replicas_gone(statuses, now=now)
        if gone:
            failures = len(report.errors)
            step("tombstoning gone replicas",
                 lambda: replicas_tombstone(gone, producer=producer_factory()))
            report.replicas_gone = gone if len(report.errors) == failures else []
    return report
