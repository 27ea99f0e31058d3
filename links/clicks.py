"""Aggregating click reports on the master: the batch apply and the consume_clicks loop.

A counter is one link in one incarnation (one life) of one replica's Redis; its reports carry
its absolute count (shortener_project/messages.py). Each batch of one partition is applied in
ONE PostgreSQL transaction that
  1. locks the partition's position row and checks it is where this consumer expects,
  2. raises each (link, incarnation) counter to the largest count reported (never lowers), and
     labels it with the node whose report raised it,
  3. adds the increases to the links' totals,
  4. moves the position past the batch, with the counts of applied and skipped reports.
A crash at any point leaves all or none of it. Replaying the topic from offset 0 re-applies
reports whose counts are already reached: max() leaves every total unchanged. Since the node is
not part of the identity, reports of one counter from two nodes (a node id that changed, two
hosts sharing one Redis) are counted once.

The clicks topic is compacted (the newest report of every counter is the counter's value), so a
master that was down for any length of time still finds every counter's latest count. If the
stored position has nevertheless fallen out of the topic's retained range (records deleted, the
topic recreated), the consumer says so as an ERROR with the number of records skipped and counts
them in shortener_consumer_records_lost_total, then reads on from the start of what is left.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from django.db import DatabaseError, connection, transaction
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import OffsetOutOfRangeError

from links.models import ConsumerPosition
from shortener_project import bus
from shortener_project.consuming import PositionedConsumer, PositionMismatch, Record
from shortener_project.messages import MessageError, click_report_decode
from shortener_project.metrics import (
    CONSUMER_OUT_OF_RANGE,
    CONSUMER_RECORDS,
    CONSUMER_RECORDS_LOST,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClicksBatchResult:
    applied: int  # reports that were valid and for a known link
    raised: int  # counters that went up (the rest were duplicates or out of date)
    skipped_malformed: int
    skipped_unknown: int
    next_offset: int


@dataclass(frozen=True)
class ClicksBatch:
    """One partition's batch of reports, decoded and reduced to one entry per counter."""

    # (tinyurl, incarnation) -> (the largest count reported in the batch, the node reporting it)
    best: dict[tuple[str, str], tuple[int, str]]
    tinyurls: list[str]  # of every valid report, to count those for unknown links
    malformed: int
    next_offset: int  # the offset after the batch's last record


def clicks_batch_decode(*, records: Sequence[Record]) -> ClicksBatch:
    """Decode one partition's records (in offset order) and keep the largest count per counter.

    records: kafka-python ConsumerRecords or anything with topic, partition, offset, key and
    value. Malformed reports are logged with their offset and counted, never raised.
    Raises ValueError for an empty batch.
    """
    if not records:
        raise ValueError("empty batch")
    # Deduplicated before SQL: a backlog holds many reports of a hot link's counter.
    best: dict[tuple[str, str], tuple[int, str]] = {}
    tinyurls: list[str] = []
    malformed = 0
    for rec in records:
        try:
            report = click_report_decode(rec.key, rec.value)
        except MessageError as exc:
            malformed += 1
            logger.warning("skipping malformed click report topic=%s partition=%s offset=%s: %s",
                           rec.topic, rec.partition, rec.offset, exc)
            continue
        tinyurl = report["tinyurl"]
        tinyurls.append(tinyurl)
        counter = (tinyurl, report["incarnation"])
        count = report["count"]
        held = best.get(counter)
        # >=: of equal counts, the later report's node is the label.
        if held is None or count >= held[0]:
            best[counter] = (count, report["node"])
    return ClicksBatch(best=best, tinyurls=tinyurls, malformed=malformed,
                       next_offset=records[-1].offset + 1)


def clicks_batch_apply(
    *, topic: str, partition: int, batch: ClicksBatch, expected_position: int | None
) -> ClicksBatchResult:
    """Apply one decoded batch in one transaction; see the module's docstring.

    expected_position: the next offset this consumer believes PostgreSQL holds for the
    partition (None: no row yet). Raises PositionMismatch (nothing applied) if the stored
    position differs, DatabaseError when PostgreSQL fails (nothing applied).
    """
    with transaction.atomic(durable=True):
        # The row lock serialises every writer of this partition's totals: a second
        # consume_clicks started by mistake waits here, then finds the position moved.
        position = (ConsumerPosition.objects.select_for_update()
                    .filter(topic=topic, partition=partition).first())
        stored = position.next_offset if position else None
        if stored != expected_position:
            raise PositionMismatch(partition, expected_position, stored)
        if position is None:
            position = ConsumerPosition(topic=topic, partition=partition, next_offset=0)

        raised, unknown_tinyurls = (_counters_raise(batch.best) if batch.best
                                    else (0, frozenset()))
        unknown = 0
        if unknown_tinyurls:
            unknown = sum(1 for t in batch.tinyurls if t in unknown_tinyurls)
            # One line per batch: a replica pointed at the wrong master could send thousands.
            logger.warning("skipping %d click report(s) for unknown tinyurls topic=%s "
                           "partition=%s, e.g. %s", unknown, topic, partition,
                           ", ".join(sorted(unknown_tinyurls)[:5]))

        applied = len(batch.tinyurls) - unknown
        position.next_offset = batch.next_offset
        position.applied += applied
        position.skipped_malformed += batch.malformed
        position.skipped_unknown += unknown
        position.save()
    return ClicksBatchResult(applied=applied, raised=raised, skipped_malformed=batch.malformed,
                             skipped_unknown=unknown, next_offset=batch.next_offset)


def clicks_apply_batch(
    *, topic: str, partition: int, records: Sequence[Record], expected_position: int | None
) -> ClicksBatchResult:
    """Decode and apply one partition's batch of click reports (clicks_batch_decode, then
    clicks_batch_apply); see the module's docstring. Raises what those raise."""
    return clicks_batch_apply(topic=topic, partition=partition,
                              batch=clicks_batch_decode(records=records),
                              expected_position=expected_position)


# One statement, one round trip:
#   found:  each counter's link, by its tinyurl (NULL: no such link);
#   known:  the counters of known links, with the count each holds now (NULL: a new counter);
#   up:     insert or raise the counters whose reported count is larger (replays stop here:
#           nothing to write), labelled with the reporting node;
#   delta:  each link's increase, from the counters actually raised;
#   totals: added to the links' totals;
# and the tinyurls that match no link. Both lookups are scalar subqueries, so each is one index
# probe per counter whatever the tables' sizes (as joins, the planner hashed the whole links and
# counters tables on every batch). All parts of a WITH statement see one snapshot, and the
# position row lock makes this transaction the only writer of its partition's counters (all
# reports of a counter share its key, hence its partition), so `old` is the value the upsert
# replaces; the upsert's WHERE checks it again. The batch travels as four PostgreSQL array
# literals (text parameters parsed by array_in), not as thousands of parameters or ARRAY[...]
# expressions: planning the statement took 14 ms a batch with those, 0.4 ms with literals.
# The ORM cannot say "ON CONFLICT ... WHERE stored < new RETURNING", hence SQL.
# synchronous_commit is off for this transaction only: its commit returns without waiting for
# the WAL flush ("asynchronous commit" in PostgreSQL's documentation: a crash of the server may
# forget transactions of up to three times wal_writer_delay before it, never half of one).
# What it forgets is the last batches' totals together with their position: consume_clicks
# re-reads those reports from Kafka and max() applies them again, so nothing is lost or doubled.
_RAISE_SQL = """
SET LOCAL synchronous_commit TO off;
WITH input(tinyurl, incarnation, node, count) AS (
    SELECT * FROM unnest(%s::varchar[], %s::varchar[], %s::varchar[], %s::bigint[])
),
found AS (
    SELECT i.*, (SELECT l.id FROM links_link l WHERE l.tinyurl = i.tinyurl) AS link_id
    FROM input i
),
known AS (
    SELECT f.link_id, f.incarnation, f.node, f.count,
           (SELECT c.count FROM links_clickcounter c
            WHERE c.link_id = f.link_id AND c.incarnation = f.incarnation) AS old
    FROM found f WHERE f.link_id IS NOT NULL
),
up AS (
    INSERT INTO links_clickcounter (link_id, incarnation, node, count, updated_at)
    SELECT link_id, incarnation, node, count, now() FROM known
    WHERE old IS NULL OR old < count
    ON CONFLICT (link_id, incarnation) DO UPDATE
        SET count = EXCLUDED.count, node = EXCLUDED.node, updated_at = EXCLUDED.updated_at
        WHERE links_clickcounter.count < EXCLUDED.count
    RETURNING link_id, incarnation
),
delta AS (
    SELECT k.link_id, SUM(k.count - COALESCE(k.old, 0)) AS d
    FROM up JOIN known k ON k.link_id = up.link_id AND k.incarnation = up.incarnation
    GROUP BY k.link_id
),
totals AS (
    UPDATE links_link l SET clicks = l.clicks + delta.d FROM delta WHERE l.id = delta.link_id
    RETURNING 1
)
SELECT (SELECT count(*) FROM up),
       (SELECT array_agg(DISTINCT tinyurl) FROM found WHERE link_id IS NULL)
"""


def _array_literal(values: Sequence[object]) -> str:
    # Safe without quoting: tinyurls and incarnations are [A-Za-z0-9], nodes [A-Za-z0-9._-],
    # counts integers (the decoder checked them): none holds a separator, quote or brace.
    return "{" + ",".join(map(str, values)) + "}"


def _counters_raise(best: dict[tuple[str, str], tuple[int, str]]) -> tuple[int, frozenset[str]]:
    """Apply the largest count per (tinyurl, incarnation) with its node label; returns the
    number of counters raised and the tinyurls that match no link."""
    tinyurls = [t for t, _ in best]
    incarnations = [i for _, i in best]
    counts = [c for c, _ in best.values()]
    nodes = [n for _, n in best.values()]
    with connection.cursor() as cursor:
        cursor.execute(_RAISE_SQL, [_array_literal(tinyurls), _array_literal(incarnations),
                                    _array_literal(nodes), _array_literal(counts)])
        raised, unknown = cursor.fetchone()
    return raised, frozenset(unknown or ())


class ClicksConsumer(PositionedConsumer):
    """consume_clicks' loop (shortener_project.consuming): positions in PostgreSQL, and a
    position outside the topic's retained range reported as a loss, never passed over silently.

    Pipelined: while PostgreSQL applies one batch (in a worker thread, on its own connection;
    psycopg2 releases the GIL while it waits), the main thread polls and decodes the next one, so
    the Python and the PostgreSQL halves of the work run on two cores at once. Batches are still
    applied one at a time and in order, each in its own transaction checked against the stored
    position. A batch's failure surfaces when the next batch (or an idle poll, a repositioning,
    the stop) waits for it, and is handled as before: the loop re-reads from the position that
    PostgreSQL holds, which the failed transaction did not move. The group offset (monitoring
    only) may therefore run one batch ahead of PostgreSQL.
    """

    name = "clicks consumer"
    store_errors = (DatabaseError,)

    def __init__(
        self,
        *,
        stop: threading.Event,
        consumer_factory: Callable[[], KafkaConsumer] = bus.clicks_consumer_make,
    ) -> None:
        super().__init__(topic=bus.clicks_topic(), stop=stop, consumer_factory=consumer_factory)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clicks-apply")
        self._inflight: Future[ClicksBatchResult] | None = None

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.close()

    def close(self) -> None:
        """Finish the batch in flight (a stop finishes the batch in hand: its totals and its
        position commit together), then release the worker thread and its connection."""
        try:
            self._inflight_wait()
        except Exception as exc:  # noqa: BLE001 - the stored position says what is applied
            logger.error("%s: the last batch failed while stopping: %r; it is read again at "
                         "the next start", self.name, exc)
        # The worker's own connection (Django's are per thread), closed in its thread.
        self._worker.submit(lambda: connection.close()).result()
        self._worker.shutdown()

    def positions_load(self) -> dict[int, int]:
        return dict(ConsumerPosition.objects.filter(topic=self.topic)
                    .values_list("partition", "next_offset"))

    def apply_batch(self, partition: int, records: Sequence[Record], expected: int | None) -> int:
        # Decoding runs while the previous batch's transaction is in PostgreSQL.
        batch = clicks_batch_decode(records=records)
        self._inflight_wait()
        self._inflight = self._worker.submit(self._apply, partition, batch, expected)
        return batch.next_offset

    def _apply(self, partition: int, batch: ClicksBatch, expected: int | None) -> ClicksBatchResult:
        """In the worker thread."""
        try:
            result = clicks_batch_apply(topic=self.topic, partition=partition, batch=batch,
                                        expected_position=expected)
        except DatabaseError:
            # Drop this thread's broken connection; Django opens a new one on the next query.
            connection.close()
            raise
        CONSUMER_RECORDS.labels(self.topic, "applied").inc(result.applied)
        CONSUMER_RECORDS.labels(self.topic, "skipped").inc(result.skipped_malformed)
        CONSUMER_RECORDS.labels(self.topic, "unknown").inc(result.skipped_unknown)
        return result

    def _inflight_wait(self) -> None:
        """Wait for the batch in PostgreSQL; raise what it raised."""
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            inflight.result()

    def on_idle(self) -> None:
        self._inflight_wait()

    def reposition(self, consumer: KafkaConsumer) -> None:
        # Positions are read from PostgreSQL: let the batch in flight finish (or fail) first.
        try:
            self._inflight_wait()
        except (PositionMismatch, *self.store_errors) as exc:
            logger.warning("%s: a batch failed before repositioning: %r", self.name, exc)
        super().reposition(consumer)

    def on_store_error(self) -> None:
        # Drop the main thread's connection too (positions are read on it); Django opens a new
        # one on the next query.
        connection.close()

    def on_positioned(self, consumer: KafkaConsumer, stored: dict[int, int]) -> None:
        """Check every stored position against the partition's retained range before reading.

        The consumer is made with auto_offset_reset="none" (shortener_project/bus.py), so
        kafka-python never moves a position by itself; this is where an out-of-range one is
        reported (ERROR, metrics) and moved to the start of what the partition still holds.
        """
        held = [tp for tp in self.partitions if tp.partition in stored]
        if not held:
            return
        starts = consumer.beginning_offsets(held)
        ends = consumer.end_offsets(held)
        for tp in held:
            self._position_check(consumer, tp, stored[tp.partition], starts[tp], ends[tp])

    def _position_check(self, consumer: KafkaConsumer, tp: TopicPartition, position: int,
                        start: int, end: int) -> None:
        if start <= position <= end:
            return
        CONSUMER_OUT_OF_RANGE.labels(self.topic).inc()
        if position < start:
            # The records [position, start) were deleted before this consumer read them.
            lost = start - position
            CONSUMER_RECORDS_LOST.labels(self.topic).inc(lost)
            logger.error("%s: stored position %d of %s[%d] is before the partition's first "
                         "retained offset %d: %d record(s) were deleted unread and are LOST "
                         "(the topic is meant to be compacted, not time-limited: see "
                         "manage.py kafka_topics); reading on from offset %d", self.name,
                         position, tp.topic, tp.partition, start, lost, start)
        else:
            # The partition ends before our position: the topic was deleted and recreated (or
            # truncated). What it held after our position is gone, and how much is unknown.
            logger.error("%s: stored position %d of %s[%d] is beyond the partition's end %d: "
                         "the topic was recreated or truncated, and whatever it held from "
                         "offset %d on is LOST (how many records is unknown); reading the "
                         "partition from its start, offset %d", self.name, position, tp.topic,
                         tp.partition, end, position, start)
        # The stored position stays what it is until the next batch commits past it, so the
        # expected position is unchanged: only where Kafka reads from moves.
        consumer.seek(tp, start)

    def _poll_once(self, consumer: KafkaConsumer) -> None:
        try:
            super()._poll_once(consumer)
        except OffsetOutOfRangeError as exc:
            # Records were deleted under a running consumer (it lagged more than the retention
            # of a time-limited topic). Re-read the stored positions and check them as at start.
            logger.debug("%s: fetch out of range: %r", self.name, exc)
            self.reposition(consumer)
