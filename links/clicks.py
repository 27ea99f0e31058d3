"""Aggregating click reports on the master: the batch apply and the consume_clicks loop.

Each batch of one partition is applied in ONE PostgreSQL transaction that
  1. locks the partition's position row and checks it is where this consumer expects,
  2. raises each (link, node, incarnation) counter to the largest count reported (never lowers),
  3. adds the increases to the links' totals, and each report's share of them to the hourly
     bucket of its `reported_at` (the admin's charts; _buckets_add),
  4. moves the position past the batch, with the counts of applied and skipped reports.
A crash at any point leaves all or none of it. Replaying the topic from offset 0 re-applies
reports whose counts are already reached: max() leaves every total, and every bucket, unchanged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from django.db import DatabaseError, connection, transaction
from kafka import KafkaConsumer

from links.models import ConsumerPosition
from shortener_project import bus
from shortener_project.consuming import PositionedConsumer, PositionMismatch, Record
from shortener_project.metrics import CONSUMER_RECORDS
from shortener_project.messages import ClickReport, MessageError, click_report_decode

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClicksBatchResult:
    applied: int  # reports that were valid and for a known link
    raised: int  # counters that went up (the rest were duplicates or out of date)
    skipped_malformed: int
    skipped_unknown: int
    next_offset: int


def clicks_apply_batch(
    *, topic: str, partition: int, records: Sequence[Record], expected_position: int | None
) -> ClicksBatchResult:
    """Apply one partition's batch of click reports; see the module's docstring."""
    if not records:
        raise ValueError("empty batch")
    reports = []
    malformed = 0
    for rec in records:
        try:
            reports.append(click_report_decode(rec.key, rec.value))
        except MessageError as exc:
            malformed += 1
            logger.warning("skipping malformed click report topic=%s partition=%s offset=%s: %s",
                           rec.topic, rec.partition, rec.offset, exc)
    next_offset = records[-1].offset + 1

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

        best: dict[tuple[str, str, str], int] = {}
        for r in reports:
            k = (r["tinyurl"], r["node"], r["incarnation"])
            best[k] = max(best.get(k, 0), r["count"])
        if reports:
            # Before the counters rise: it reads the counts they had before this batch.
            _buckets_add(reports)
        raised, unknown_tinyurls = _counters_raise(best) if best else (0, set())
        unknown = [r["tinyurl"] for r in reports if r["tinyurl"] in unknown_tinyurls]
        if unknown:
            # One line per batch: a replica pointed at the wrong master could send thousands.
            logger.warning("skipping %d click report(s) for unknown tinyurls topic=%s "
                           "partition=%s, e.g. %s", len(unknown), topic, partition,
                           ", ".join(sorted(unknown_tinyurls)[:5]))

        position.next_offset = next_offset
        position.applied += len(reports) - len(unknown)
        position.skipped_malformed += malformed
        position.skipped_unknown += len(unknown)
        position.save()
    return ClicksBatchResult(applied=len(reports) - len(unknown), raised=raised,
                             skipped_malformed=malformed, skipped_unknown=len(unknown),
                             next_offset=next_offset)


# One statement, one round trip: find each report's link, upsert every counter to
# max(stored, reported), add each link's increase to its total, and name the tinyurls that
# match no link. All parts of a WITH statement see the same snapshot, so `old` holds the counts
# from before the upsert. The batch travels as four arrays (unnest), not thousands of
# parameters: building and parsing those was a tenth of the consumer's time in the profile.
# The ORM cannot say "ON CONFLICT ... WHERE stored < new RETURNING", hence SQL.
_RAISE_SQL = """
WITH input(tinyurl, node, incarnation, count) AS (
    SELECT * FROM unnest(%s::varchar[], %s::varchar[], %s::varchar[], %s::bigint[])
),
known AS (
    SELECT l.id AS link_id, i.node, i.incarnation, i.count
    FROM input i JOIN links_link l ON l.tinyurl = i.tinyurl
),
old AS (
    SELECT c.link_id, c.node, c.incarnation, c.count
    FROM links_clickcounter c
    JOIN known k ON c.link_id = k.link_id AND c.node = k.node AND c.incarnation = k.incarnation
),
up AS (
    INSERT INTO links_clickcounter (link_id, node, incarnation, count, updated_at)
    SELECT link_id, node, incarnation, count, now() FROM known
    ON CONFLICT (link_id, node, incarnation) DO UPDATE
        SET count = EXCLUDED.count, updated_at = EXCLUDED.updated_at
        WHERE links_clickcounter.count < EXCLUDED.count
    RETURNING link_id, node, incarnation, count
),
delta AS (
    SELECT up.link_id, SUM(up.count - COALESCE(old.count, 0)) AS d
    FROM up LEFT JOIN old
      ON old.link_id = up.link_id AND old.node = up.node AND old.incarnation = up.incarnation
    GROUP BY up.link_id
),
totals AS (
    UPDATE links_link l SET clicks = l.clicks + delta.d FROM delta WHERE l.id = delta.link_id
    RETURNING 1
)
SELECT (SELECT count(*) FROM up),
       (SELECT array_agg(DISTINCT i.tinyurl) FROM input i
        WHERE NOT EXISTS (SELECT 1 FROM links_link l WHERE l.tinyurl = i.tinyurl))
"""


def _counters_raise(best: dict[tuple[str, str, str], int]) -> tuple[int, set[str]]:
    """Apply the largest count per (tinyurl, node, incarnation); returns the number of
    counters raised and the tinyurls that match no link."""
    columns = list(zip(*((t, n, i, c) for (t, n, i), c in best.items())))
    with connection.cursor() as cursor:
        cursor.execute(_RAISE_SQL, [list(col) for col in columns])
        raised, unknown = cursor.fetchone()
    return raised, set(unknown or ())


# --- clicks over time: hourly buckets ---------------------------------------------------------
# Its own statement, run in the batch's transaction just before _RAISE_SQL (which it does not
# depend on), so that the counts it reads from links_clickcounter are those before the batch.
# Each report's share is what it raises its counter by, over the stored count and over the
# reports of the same counter earlier in the batch (offset order: WITH ORDINALITY):
#   share = max(count, before) - before,  before = max(stored, earlier counts in the batch).
# The shares of a counter add up to (its new count - its stored count), exactly the increase
# that _RAISE_SQL adds to the link's total, so buckets and totals always agree; a duplicate or
# a replayed report has share 0 and touches no bucket. Each share lands in the hour of its own
# report, also when one batch spans hours (a master catching up after an outage).
# The link and the stored count are scalar subqueries: one index probe per row, whatever the
# tables' sizes (a join lets the planner hash the whole links and counters tables per batch).
# The counter's identity is in the counter probe and the window's partition: (link, node,
# incarnation) here; where counters are identified by (link, incarnation) alone, drop `node`
# from both (it stays the bucket's label), and from the run key in _buckets_add.
_BUCKETS_SQL = """
WITH input(tinyurl, node, incarnation, count, hour, ord) AS (
    SELECT * FROM unnest(%s::varchar[], %s::varchar[], %s::varchar[], %s::bigint[],
                         %s::timestamptz[]) WITH ORDINALITY
),
known AS (
    SELECT (SELECT l.id FROM links_link l WHERE l.tinyurl = i.tinyurl) AS link_id,
           i.node, i.incarnation, i.count, i.hour, i.ord
    FROM input i
),
reached AS (
    SELECT k.link_id, k.node, k.hour, k.count,
           GREATEST(COALESCE((SELECT c.count FROM links_clickcounter c
                              WHERE c.link_id = k.link_id AND c.node = k.node
                                AND c.incarnation = k.incarnation), 0),
                    COALESCE(MAX(k.count) OVER (
                        PARTITION BY k.link_id, k.node, k.incarnation ORDER BY k.ord
                        ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)) AS before
    FROM known k
    WHERE k.link_id IS NOT NULL
)
INSERT INTO links_clickbucket (link_id, node, hour, clicks)
SELECT link_id, node, hour, SUM(count - before) FROM reached
WHERE count > before
GROUP BY link_id, node, hour
ON CONFLICT (link_id, hour, node) DO UPDATE
    SET clicks = links_clickbucket.clicks + EXCLUDED.clicks
"""


def report_hour(reported_at: object, *, now: datetime) -> datetime:
    """The start (UTC) of the hour a report's clicks are charted in.

    reported_at: the report's ISO 8601 time (the replica's clock; UTC assumed if it has no
    offset). A time after `now` (the master's clock), or one that cannot be read, counts as
    `now`: a replica whose clock runs ahead must not fill hours that have not come yet, and a
    report whose count is valid must not lose its clicks from the chart over its timestamp.
    """
    when = now
    if isinstance(reported_at, str):
        try:
            parsed = datetime.fromisoformat(reported_at)
        except ValueError:
            parsed = None
        if parsed is not None:
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            when = min(parsed, now)
    return when.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def _buckets_add(reports: Sequence[ClickReport]) -> None:
    """Add each report's share of its counter's increase to its hour's bucket (_BUCKETS_SQL).

    reports: the batch's decoded reports in offset order. Must run inside the batch's
    transaction, before the counters are raised. Reports of unknown tinyurls are ignored here.
    Consecutive reports of one counter in one hour are sent as one, with their largest count:
    their shares add up to exactly that (a backlog holds many reports of a hot counter).
    """
    now = datetime.now(timezone.utc)
    rows: list[list] = []  # [tinyurl, node, incarnation, count, hour], in offset order
    last: dict[tuple[str, str, str], list] = {}  # counter -> its latest row
    for r in reports:
        counter = (r["tinyurl"], r["node"], r["incarnation"])
        hour = report_hour(r.get("reported_at"), now=now)
        row = last.get(counter)
        if row is not None and row[4] == hour:
            row[3] = max(row[3], r["count"])
            continue
        row = [r["tinyurl"], r["node"], r["incarnation"], r["count"], hour]
        rows.append(row)
        last[counter] = row
    with connection.cursor() as cursor:
        cursor.execute(_BUCKETS_SQL, [list(column) for column in zip(*rows)])


class ClicksConsumer(PositionedConsumer):
    """consume_clicks' loop (shortener_project.consuming): positions in PostgreSQL."""

    name = "clicks consumer"
    store_errors = (DatabaseError,)

    def __init__(
        self,
        *,
        stop: threading.Event,
        consumer_factory: Callable[[], KafkaConsumer] = bus.clicks_consumer_make,
    ) -> None:
        super().__init__(topic=bus.clicks_topic(), stop=stop, consumer_factory=consumer_factory)

    def positions_load(self) -> dict[int, int]:
        return dict(ConsumerPosition.objects.filter(topic=self.topic)
                    .values_list("partition", "next_offset"))

    def apply_batch(self, partition: int, records: Sequence[Record], expected: int | None) -> int:
        result = clicks_apply_batch(topic=self.topic, partition=partition, records=records,
                                    expected_position=expected)
        CONSUMER_RECORDS.labels(self.topic, "applied").inc(result.applied)
        CONSUMER_RECORDS.labels(self.topic, "skipped").inc(result.skipped_malformed)
        CONSUMER_RECORDS.labels(self.topic, "unknown").inc(result.skipped_unknown)
        return result.next_offset

    def on_store_error(self) -> None:
        # Drop the broken connection; Django opens a new one on the next query.
        connection.close()
