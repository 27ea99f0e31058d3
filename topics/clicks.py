"""The clicks topic, <user>-clicks: every replica's click counters, reported to the master.

Key: `<incarnation>:<tinyurl>` (UTF-8). Value: JSON ClickReport.
A report carries what it counts: which counter (incarnation: one life of one replica's Redis),
the counter's absolute value, and the node that sent it as a label. The master keeps the largest
value per (link, incarnation), so a duplicate adds nothing and a lost report is healed by the
next one. (A "+100" delta could not be replayed safely.)

Delivery: AT-LEAST-ONCE of absolute counts into a max() apply:
  * a report is a counter's absolute value, keyed by the counter (`<incarnation>:<tinyurl>`,
    one life of one replica's Redis); the master keeps the largest value per counter, so a
    duplicate or an out-of-date report, in any order, never lowers a total and a lost report is
    healed by the next one;
  * the topic is compacted: it keeps the report with the highest offset of every counter, so the
    master's totals survive consume_clicks being down for any length of time. That report is
    not always the counter's largest count: clicks_topic_spec says what holds.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from django.conf import settings
from kafka import KafkaConsumer, KafkaProducer
from msgspec import Meta

from topics.clients import consumer_make, producer_make
from topics.records import (
    ENCODER,
    INCARNATION_RE,
    INT_MAX,
    TINYURL_RE,
    Incarnation,
    MessageError,
    Node,
    RecordStruct,
    Time,
    Tinyurl,
    alnum,
    decode_error,
    key_text,
    node_ok,
)
from topics.specs import TopicSpec, durability_configs


def clicks_topic() -> str:
    return f"{settings.SHORTENER_USER}-clicks"


def clicks_group() -> str:
    # One consumer group for the master's consume_clicks, as the assignment names it. Like the
    # links group it only shows progress; the position is kept in PostgreSQL with the totals.
    return f"{settings.SHORTENER_USER}-clicks"


# Schema 2: a counter's identity is its incarnation alone (one life of one replica's Redis),
# not the node that reports it: a node whose id changes, or two hosts sharing one Redis, report
# the same counter, and the master's max() counts its clicks once. The node is a label.
CLICK_SCHEMA = 2


class ClickReport(RecordStruct, kw_only=True):
    """One counter's absolute value on the clicks topic. Key: `<incarnation>:<tinyurl>` (UTF-8),
    equal to the value's. A tombstone (null value) ends the counter's key."""

    schema: Annotated[Literal[2], Meta(description="The record's schema version.")]
    tinyurl: Tinyurl
    node: Annotated[Node, Meta(description="The replica that sent it: a label for the admin, "
                                           "not part of the counter's identity.")]
    incarnation: Annotated[Incarnation, Meta(description="The counter's identity: one life of "
                                                         "one replica's Redis.")]
    count: Annotated[int, Meta(ge=1, le=INT_MAX, description="The counter's absolute value: "
                                                             "clicks of tinyurl in this "
                                                             "incarnation.")]
    reported_at: Annotated[Time, Meta(description="When it was sent, by the replica's clock "
                                                  "(RFC 3339); the hour its clicks are charted "
                                                  "in.")]


_click_decoder = msgspec.json.Decoder(ClickReport)


def click_report_key(*, incarnation: str, tinyurl: str) -> bytes:
    """The compaction key of a counter's reports: `<incarnation>:<tinyurl>`. The clicks topic
    keeps the newest report of every counter, which is exactly the counter's latest value."""
    return f"{incarnation}:{tinyurl}".encode()


def click_report_encode(
    *, tinyurl: str, node: str, incarnation: str, count: int, reported_at: datetime
) -> tuple[bytes, bytes]:
    """The (key, value) of one counter's report: key `<incarnation>:<tinyurl>`, value JSON
    ClickReport. reported_at must be timezone-aware."""
    report = ClickReport(schema=CLICK_SCHEMA, tinyurl=tinyurl, node=node,
                         incarnation=incarnation, count=count, reported_at=reported_at)
    return click_report_key(incarnation=incarnation, tinyurl=tinyurl), ENCODER.encode(report)


def click_report_decode(key: bytes | None, value: bytes | None) -> ClickReport | None:
    """Decode and check one clicks-topic record: the ClickReport, or None for a tombstone (value
    null: the master writes one for every counter of an ended incarnation it folded,
    links/pruning.py, so that compaction removes the key). Raises MessageError (with its reason) for anything the
    master must not apply, including a key that is not the value's `<incarnation>:<tinyurl>`.

    The master decodes every report of every replica (bench/clicks.py): msgspec checks types,
    ranges and lengths in one C pass, the character sets are three str-method calls; together
    faster than the orjson reader and the Python checks they replaced (docs/records.md gives
    the figures).
    """
    if value is None:
        # A tombstone ends a counter's key: the key must still be one (whose counter it ends).
        incarnation, colon, tinyurl = key_text(key).partition(":")
        if not (colon and INCARNATION_RE.fullmatch(incarnation) and TINYURL_RE.fullmatch(tinyurl)):
            raise MessageError("a tombstone's key is not <incarnation>:<tinyurl>", reason="key")
        return None
    if key is None:
        raise MessageError("record has no key", reason="key")
    try:
        report = _click_decoder.decode(value)
    except (msgspec.MsgspecError, ValueError, RecursionError) as exc:
        raise decode_error(exc, "click report") from None
    tinyurl, incarnation = report.tinyurl, report.incarnation
    if not (alnum(tinyurl) and alnum(incarnation) and node_ok(report.node)):
        raise MessageError("click report: tinyurl, incarnation or node has a character its "
                           "pattern does not allow", reason="range")
    if key != f"{incarnation}:{tinyurl}".encode():
        raise MessageError("key differs from the report's incarnation:tinyurl", reason="key")
    return report


def clicks_topic_spec() -> TopicSpec:
    durability, relied = durability_configs()
    rf = settings.KAFKA_REPLICATION_FACTOR
    return TopicSpec(
        name=clicks_topic(),
        # ONE partition. A single consumer (the master's consume_clicks) reads it. Traffic from
        # each replica: reports/s = milestones/s + (distinct links clicked in a flush
        # interval) / (flush interval), a milestone being a counter passing a multiple of 100;
        # so at most redirects/s / 100 + min(redirects/s, distinct links / flush interval).
        # E.g. 2,000 redirects/s over 5,000 links with the 10 s flush: 20 + 500 reports/s of
        # ~200 bytes. The one consumer is the limit, not the partition: a bare read of the
        # topic is faster than consume_clicks' apply (both measured in docs/performance.md).
        # The partition count must never grow: the producer's default partitioner picks
        # murmur2(key) modulo the partition count (kafka-python 3.0.12,
        # kafka/partitioner/default.py), so adding partitions sends a counter's later
        # reports to another partition than its earlier ones. `manage.py kafka_topics`
        # refuses to change a partition count (tests/links/test_kafka_topics.py;
        # tests/test_bus.py shows the remapping).
        partitions=1,
        replication_factor=rf,
        configs={
            # A changelog of absolute counts keyed by counter (`<incarnation>:<tinyurl>`).
            # Compaction keeps each counter's report with the highest offset forever (Kafka
            # documentation, Design, "Log Compaction"), so the master's totals survive
            # consume_clicks being down longer than any time-based retention (the default
            # "delete" removes segments after retention.ms); older reports of the counter
            # are dropped. Cost: one record per counter ever reported.
            # What the kept report is: one count the counter had, not always its largest.
            # A report whose acknowledgement was lost is sent again as a milestone (rounded
            # down to its hundred) before the exact count of the next flush; a reporter
            # restart sends its unacknowledged reports again the same way; two reporters on
            # one Redis claim the same counter in turn and their sends can land in either
            # order. What holds (tests/links/test_clicks_order.py): the master applies every
            # report it reads with max() over the counts it keeps in PostgreSQL, so its
            # totals never go down, whatever the order, replays from offset 0 included;
            # compaction keeps a lower count that landed last, so only a master that starts
            # over from the compacted topic alone (its counters lost) takes that lower
            # count, until the counter's next report, which carries its current count.
            "cleanup.policy": "compact",
            **durability,
        },
        relied=relied,
    )


def clicks_producer_settings() -> dict[str, Any]:
    """The replicas' click-report producer's own settings.

    acks=all and idempotence are kafka-python 3.0.12's defaults (see links_producer_settings):
    a report's mark is cleared only after an ack that means "every in-sync replica has it", and
    the producer's own retries neither duplicate a report nor reorder a counter's reports
    within one producer (harmless anyway under the master's max())."""
    return {
        # Reports are not urgent: wait up to 50 ms to send many in one request (default 0).
        "linger_ms": 50,
        # -- Operational timeouts, bounded while Kafka is down: the reporter requeues what was
        # -- not acknowledged and tries again on its next round, rather than blocking for the
        # -- 60-120 s defaults. Delivery (retries included) must exceed linger + one request
        # -- (kafka-python 3.0.12 refuses otherwise: RecordAccumulator, "Must set
        # -- delivery_timeout_ms higher than linger_ms + request_timeout_ms").
        "max_block_ms": 10_000,
        "request_timeout_ms": 10_000,
        "delivery_timeout_ms": 30_000,
    }


def clicks_producer_make() -> KafkaProducer:
    """The replica's click-report producer (used by `report_clicks`, never by a redirect)."""
    return producer_make(
        client_id=f"{settings.SHORTENER_USER}-clicks-{settings.SHORTENER_NODE_ID}",
        own=clicks_producer_settings())


def clicks_consumer_settings() -> dict[str, Any]:
    """The master's clicks consumer's own settings (consume_clicks)."""
    return {
        # Never move a position silently: kafka-python's reset of an out-of-range position is
        # an INFO line. With "none" a position outside the retained range raises instead, and
        # links/totals.py reports the records skipped (an ERROR and
        # shortener_consumer_records_lost_total) before reading on from the start.
        "auto_offset_reset": "none",
        # One PostgreSQL transaction per batch: larger batches, fewer commits
        # (SHORTENER_CLICKS_BATCH, 5,000 by default). (max_partition_fetch_bytes and
        # fetch_max_wait_ms stay at their defaults, as for the links consumer.)
        "max_poll_records": settings.SHORTENER_CLICKS_BATCH,
    }


def clicks_consumer_make() -> KafkaConsumer:
    """The master's consumer of the clicks topic. The caller assigns and seeks (no subscribe).
    Its group is for monitoring only (lag tooling); the position that counts is in PostgreSQL,
    written in the same transaction as the totals (links/totals.py)."""
    return consumer_make(
        client_id=f"{settings.SHORTENER_USER}-clicks-master-{settings.SHORTENER_NODE_ID}",
        group_id=clicks_group(), own=clicks_consumer_settings())
