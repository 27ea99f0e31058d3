"""Aggregating click reports on the master: the batch apply (consume_clicks' loop, which calls it,
is links/clicks_consumer.py).

A counter is one link in one incarnation (one life) of one replica's Redis; its reports carry
its absolute count (topics/clicks.py: a report batch's triples, schema 4, or pairs, schema 3,
or single reports, schema 2, folded alike). Each batch of one partition's records is applied in ONE PostgreSQL
transaction that
  1. locks the partition's position row and checks it is where this consumer expects,
  2. raises each (link, incarnation) counter to the largest count reported (never lowers), and
     labels it with the node whose report raised it; and its bots (how many of those clicks were
     a bot's: schema 4, redirects/bots.py; none in schemas 2 and 3) to the largest reported,
  3. adds the increases to the links' totals (all clicks, and bot clicks: human clicks are the
     difference), and each increase to the hourly bucket
     (ClickBucket: link, node, hour) of the report that raised the counter: when a counter rises
     from a to b, the b - a clicks land in the hour of the report's `reported_at` (report_hour),
     split across the hours of the reports that raised it when a batch spans hours,
  4. moves the position past the batch, with the counts of applied and skipped reports.
A crash at any point leaves all or none of it. Replaying the topic from offset 0 re-applies
reports whose counts are already reached: max() leaves every total and every bucket unchanged.
A report of an incarnation that ended (its counters folded by `manage.py prune`,
links/pruning.py) is refused, replayed or not: see links/clicks_sql.py. Since the node is not
part of the identity, reports of one counter from two nodes (a node id that changed, two hosts
sharing one Redis) are counted once; the node is the label of the counter and of its buckets.

The clicks topic keeps records for 7 days and the replicas re-report every counter they hold at
least every 3 days (topics/clicks.py, redirects/sweep.py), so a master that was down for any
length of time still finds every live counter's count. If the stored position has fallen before
the topic's retained range (records deleted), the consumer says so as an ERROR with the number
of records skipped and counts them in shortener_consumer_records_lost_total, then reads on from
the start of what is left. If the topic was deleted and created again (another topic id, or a
position beyond its end), it says so as an ERROR, counts it in
shortener_consumer_topic_recreated_total and reads the new topic from its
start (topics/loop.py); max() makes re-reading harmless.

Reports valid one by one can still be refused together: three counters of one link near the
largest count make a total beyond PostgreSQL's bigint. Such a batch is split until the report at
fault is found, which is rejected (shortener_records_rejected_total{reason=
"numeric_value_out_of_range"}) while the others are applied; nothing is retried forever.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from django.db import IntegrityError, connection, transaction

from links import linkids
from links.buckets import report_hour
# The statement, kept beside its reasons; bench/ swaps _APPLY_SQL here for its baselines.
from links.clicks_sql import _APPLY_SQL, _BUCKETS_CTE, _COUNTERS_SQL  # noqa: F401
from links.positions import position_lock
from runtime.metrics import CLICKS_REFUSED_ENDED, records_rejected_report
from topics.batching import Record
from topics.clicks import CLICK_BATCH_BOTS_SCHEMA, CLICK_BATCH_SCHEMA, clicks_record_decode
from topics.records import MessageError, Rejected

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClicksBatchResult:
    applied: int  # records valid and for a known link (a batch naming any known link: one)
    raised: int  # counters that went up (the rest were duplicates or out of date)
    skipped_malformed: int
    skipped_unknown: int
    next_offset: int
    refused_ended: int = 0  # counters of ended (folded) incarnations, not applied


@dataclass(frozen=True)
class ClicksBatch:
    """One partition's batch of reports, decoded and reduced to one entry per counter, plus what
    the hourly buckets need of the reports that raised a counter before its last one.

    The buckets need each report's increase over the running maximum of its counter, in offset
    order; only reports that raise that maximum have one. Consecutive raising reports of one
    counter with the same hour and node form a run, whose increases add up to (its last count -
    the maximum before it), so a run is all the statement needs. The counter's entry carries its
    LAST run (in the common case, one report per counter per batch, its only one); `earlier`
    carries the others, which only counters reported from several hours or nodes have.
    """

    # (tinyurl, incarnation) -> [largest count in the batch, label node (the node of the
    # latest report with that count), last run's hour (index into `hours`, from 1), last run's
    # node, the largest count before the last run (0 if none), the counter's ordinal (from 1),
    # the largest bots in the batch (0 from schemas 2 and 3, which carry none)]
    counters: dict[tuple[str, str], list]
    # The earlier runs: (counter ordinal, node, hour index, largest count before it, its end)
    earlier: list[tuple[int, str, int, int, int]]
    hours: list[datetime]  # the distinct hours of the batch (UTC, truncated)
    # Per valid record, its tinyurls (one for a report, each pair's for a batch): to count the
    # records for unknown links (the position and the metrics count records, a batch as one).
    tinyurls: list[tuple[str, ...]]
    malformed: int  # len(rejected)
    next_offset: int  # the offset after the batch's last record
    # The reports that could not be used, logged and counted when the batch is applied.
    rejected: list[Rejected] = field(default_factory=list)
    tombstones: int = 0  # null values: ended counters' keys, ignored


def clicks_batch_decode(*, records: Sequence[Record], now: datetime | None = None) -> ClicksBatch:
    """Decode one partition's records (in offset order): the largest count per counter, and the
    runs of raising reports per counter and hour (ClicksBatch).

    records: kafka-python ConsumerRecords or anything with topic, partition, offset, key and
    value. now: the master's time for report_hour (default: the current time). A report that
    click_report_decode rejects is kept in `rejected` (logged and counted by clicks_batch_apply
    once its transaction commits, so a retried batch reports it once); a tombstone is ignored.
    Nothing a record holds makes this raise; ValueError for an empty batch.
    """
    if not records:
        raise ValueError("empty batch")
    if now is None:
        now = datetime.now(timezone.utc)
    # Deduplicated before SQL: a backlog holds many reports of a hot link's counter.
    counters: dict[tuple[str, str], list] = {}
    earlier: list[tuple[int, str, int, int, int]] = []
    relabelled: list[list] = []  # counters whose label moved to a node that raised nothing
    hours: list[datetime] = []
    hour_index: dict[datetime, int] = {}
    # A replica stamps every report of one flush with the same time: one bucketing per flush.
    hour_of_time: dict[datetime, int] = {}
    tinyurls: list[tuple[str, ...]] = []
    rejected: list[Rejected] = []
    tombstones = 0
    for rec in records:
        try:
            report = clicks_record_decode(rec.key, rec.value)
        except MessageError as exc:
            rejected.append(Rejected.of(rec, exc))  # logged and counted once it is applied
            continue
        if report is None:  # a tombstone of a folded counter (links/pruning.py): nothing to apply
            tombstones += 1
            continue
        at = report.reported_at
        hour = hour_of_time.get(at)
        if hour is None:
            when = report_hour(at, now=now)
            hour = hour_index.get(when)
            if hour is None:
                hours.append(when)
                hour = hour_index[when] = len(hours)
            hour_of_time[at] = hour
        incarnation, node = report.incarnation, report.node
        # A batch (schema 4 or 3) is its triples or pairs, each exactly a schema-2 report with
        # the batch's node, incarnation and time (and its bots), in the order they are listed:
        # the same fold, counter by counter. The bots are folded by max() of their own: both
        # values only grow, so the largest of each is the counter's latest (and a milestone's
        # lower bound never lowers them).
        schema = report.schema
        if schema == CLICK_BATCH_BOTS_SCHEMA:
            triples = report.counts
            tinyurls.append(tuple([t for t, _, _ in triples]))
        elif schema == CLICK_BATCH_SCHEMA:
            triples = [(t, n, 0) for t, n in report.counts]
            tinyurls.append(tuple([t for t, _ in report.counts]))
        else:
            triples = ((report.tinyurl, report.count, 0),)
            tinyurls.append((report.tinyurl,))
        for tinyurl, count, bots in triples:
            counter = (tinyurl, incarnation)
            held = counters.get(counter)
            if held is None:
                counters[counter] = [count, node, hour, node, 0, len(counters) + 1, bots]
                continue
            if bots > held[6]:
                held[6] = bots
            if count > held[0]:
                if held[2] != hour or held[3] != node:
                    # A new run: the previous one ends at the count reached so far.
                    earlier.append((held[5], held[3], held[2], held[4], held[0]))
                    held[2], held[3], held[4] = hour, node, held[0]
                held[0], held[1] = count, node
            elif count == held[0] and node != held[1]:
                # Of equal counts, the later report's node is the counter's label (it raised
                # nothing, so the clicks stay with the node whose report raised them).
                held[1] = node
                relabelled.append(held)
    for held in relabelled:
        if held[1] != held[3]:
            # The statement takes the counter's last run under its label's node; when those
            # differ the run goes with the earlier ones and the counter's own share is empty.
            earlier.append((held[5], held[3], held[2], held[4], held[0]))
            held[3], held[4] = held[1], held[0]
    return ClicksBatch(counters=counters, earlier=earlier, hours=hours, tinyurls=tinyurls,
                       malformed=len(rejected), next_offset=records[-1].offset + 1,
                       rejected=rejected, tombstones=tombstones)


def clicks_batch_apply(
    *, topic: str, partition: int, batch: ClicksBatch, expected_position: int | None,
    topic_id: str | None = None,
) -> ClicksBatchResult:
    """Apply one decoded batch in one transaction; see the module's docstring.

    expected_position: the next offset this consumer believes PostgreSQL holds for the
    partition (None: no row yet). topic_id: the topic's id, stored with the position (None:
    unknown). Raises PositionMismatch (nothing applied) if the stored position differs,
    DatabaseError when PostgreSQL fails (nothing applied): DataError when it refuses a value
    the batch carries (a total beyond bigint), which the clicks loop isolates.
    """
    try:
        return _batch_apply(topic=topic, partition=partition, batch=batch,
                            expected_position=expected_position, topic_id=topic_id)
    except IntegrityError:
        # The foreign keys are checked at the commit: a remembered id of a link deleted by hand
        # fails there (links/linkids.py). Forgotten, so that the isolation's re-applies look
        # every tinyurl up again.
        linkids.forget()
        raise


def _batch_apply(*, topic: str, partition: int, batch: ClicksBatch,
                 expected_position: int | None, topic_id: str | None) -> ClicksBatchResult:
    with transaction.atomic(durable=True):
        position = position_lock(topic=topic, partition=partition, expected=expected_position,
                                 topic_id=topic_id)

        raised, unknown_tinyurls, refused, ended = (_counters_raise(batch) if batch.counters
                                                    else (0, frozenset(), 0, []))
        if refused:
            # Late or replayed reports of folded counters (links/pruning.py): nothing applied.
            logger.warning("refusing %d counter(s) of ended incarnations topic=%s partition=%s: "
                           "%s", refused, topic, partition, ", ".join(ended[:5]))
        unknown = 0
        if unknown_tinyurls:
            # A record is for unknown links if none of its tinyurls names a link; a batch that
            # names some is applied, the rest of its pairs skipped.
            unknown = sum(1 for names in batch.tinyurls
                          if all(t in unknown_tinyurls for t in names))
            pairs = sum(1 for names in batch.tinyurls for t in names if t in unknown_tinyurls)
            # One line per batch: a replica pointed at the wrong master could send thousands.
            logger.warning("skipping %d click report(s) for unknown tinyurls (%d record(s) "
                           "wholly) topic=%s partition=%s, e.g. %s", pairs, unknown, topic,
                           partition, ", ".join(sorted(unknown_tinyurls)[:5]))

        applied = len(batch.tinyurls) - unknown
        position.next_offset = batch.next_offset
        # A tombstone (an ended counter's key) is applied as what it is, nothing to do: counted
        # with the applied records, so that the position's counts add up to the records read.
        position.applied += applied + batch.tombstones
        position.skipped_malformed += batch.malformed
        position.skipped_unknown += unknown
        position.save()
    records_rejected_report(batch.rejected, log=logger)
    if refused:
        CLICKS_REFUSED_ENDED.inc(refused)
    return ClicksBatchResult(applied=applied, raised=raised, skipped_malformed=batch.malformed,
                             skipped_unknown=unknown, next_offset=batch.next_offset,
                             refused_ended=refused)


def clicks_apply_batch(
    *, topic: str, partition: int, records: Sequence[Record], expected_position: int | None
) -> ClicksBatchResult:
    """Decode and apply one partition's batch of click reports (clicks_batch_decode, then
    clicks_batch_apply); see the module's docstring. Raises what those raise."""
    return clicks_batch_apply(topic=topic, partition=partition,
                              batch=clicks_batch_decode(records=records),
                              expected_position=expected_position)




def _text_array(values: Sequence[object]) -> str:
    # Each element double-quoted, so that none is read as NULL (a node or an incarnation may be
    # "null"). Safe without escaping: tinyurls and incarnations are [A-Za-z0-9], nodes
    # [A-Za-z0-9._-] (the decoder checked them), hours ISO times: none holds a quote or a
    # backslash.
    return '{"' + '","'.join(map(str, values)) + '"}' if values else "{}"


def _int_array(values: Sequence[int | str]) -> str:
    return "{" + ",".join(map(str, values)) + "}"


def _counters_raise(batch: ClicksBatch) -> tuple[int, frozenset[str], int, list[str]]:
    """Apply the largest count per (tinyurl, incarnation) with its node label, and the buckets
    (_APPLY_SQL); returns the number of counters raised, the tinyurls that match no link, and
    the number of counters refused because their incarnation ended, with those incarnations.

    The counters go in link id order, those whose id is not known yet (links/linkids.py) last:
    the links, counters and buckets are all reached through indexes that lead with the link,
    so neighbouring rows share pages (docs/performance.md measures it)."""
    entries = [(linkids.link_id(t), t, i, e) for (t, i), e in batch.counters.items()]
    entries.sort(key=lambda x: (x[0] is None, x[0] or 0))
    earlier = batch.earlier
    params = {
        "link_ids": _int_array(["NULL" if x[0] is None else x[0] for x in entries]),
        "tinyurls": _text_array([x[1] for x in entries]),
        "incarnations": _text_array([x[2] for x in entries]),
        # The label, which the decoder also made the node of the counter's last run.
        "nodes": _text_array([x[3][1] for x in entries]),
        "counts": _int_array([x[3][0] for x in entries]),
        "hour_of": _int_array([x[3][2] for x in entries]),
        "prevs": _int_array([x[3][4] for x in entries]),
        "ords": _int_array([x[3][5] for x in entries]),  # what the earlier runs name it by
        "bots": _int_array([x[3][6] for x in entries]),
        "e_ords": _int_array([e[0] for e in earlier]),
        "e_nodes": _text_array([e[1] for e in earlier]),
        "e_hours": _int_array([e[2] for e in earlier]),
        "e_prevs": _int_array([e[3] for e in earlier]),
        "e_lasts": _int_array([e[4] for e in earlier]),
        "hours": _text_array([h.isoformat() for h in batch.hours]),
    }
    with connection.cursor() as cursor:
        cursor.execute(_APPLY_SQL, params)
        raised, unknown, refused, ended, resolved = cursor.fetchone()
    if resolved:
        linkids.learn(resolved)
    return raised, frozenset(unknown or ()), refused, sorted(ended or ())


def clicks_batch_decode_stepping_over(*, records: Sequence[Record],
                                      rejected: Mapping[int, str]) -> ClicksBatch:
    """clicks_batch_decode of the records whose offsets are not in `rejected`; those count as
    malformed (skipped) and the batch still ends after the last record."""
    kept = [r for r in records if r.offset not in rejected]
    batch = (clicks_batch_decode(records=kept) if kept else
             ClicksBatch(counters={}, earlier=[], hours=[], tinyurls=[], malformed=0,
                         next_offset=0))
    return replace(batch, malformed=batch.malformed + len(records) - len(kept),
                   next_offset=records[-1].offset + 1)
