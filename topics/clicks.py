"""The clicks topic, <user>-clicks: every replica's click counters, reported to the master.

A report carries what it counts: which counter (incarnation: one life of one replica's Redis,
and the tinyurl), the counter's absolute value, and the node that sent it as a label. The master
keeps the largest value per (link, incarnation), so a duplicate adds nothing and a lost report
is healed by the next one. (A "+100" delta could not be replayed safely.)

Two record kinds, told apart by the key:
  * the report batch (key `<incarnation>/<32 hex digits>`): one record carries the absolute
    counts of up to CLICK_BATCH_MAX counters of one incarnation, so a flush of a million dirty
    counters is about a thousand records, not a million (issue "Writes at scale"). Schema 4
    (ClickBatchBots, what replicas send) gives each counter's count and how many of those were a
    bot's (redirects/bots.py); schema 3 (ClickBatch, what they sent before) only the count,
    read as no bot clicks. The value's `schema` says which;
  * schema 2, the single report (ClickReport, key `<incarnation>:<tinyurl>`): what replicas
    sent before. The master still reads it (an older replica during a rolling upgrade, records
    already in the topic), and a tombstone (null value) under such a key.

Delivery: AT-LEAST-ONCE of absolute counts into a max() apply: a duplicate or an out-of-date
report, in any order, never lowers a total, and a lost report is healed by the counter's next
one. The topic keeps records for a time (retention), not per counter (a batch has no per-counter
key to compact on): clicks_topic_spec says what holds, docs/delivery-guarantees.md what is lost.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
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
    RESERVED_TINYURLS,
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
    tinyurl_chars_ok,
    tinyurl_ok,
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

# The `schema` field's description, one for the three kinds of this topic.
SchemaVersion = Meta(description="The record's schema version.")


class ClickReport(RecordStruct, kw_only=True):
    """One counter's absolute value on the clicks topic. Key: `<incarnation>:<tinyurl>` (UTF-8),
    equal to the value's. A tombstone (null value) ends the counter's key."""

    schema: Annotated[Literal[2], SchemaVersion]
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
    """The key of a counter's schema-2 reports and of its tombstone: `<incarnation>:<tinyurl>`
    (on a topic still compacted, the newest report of every counter)."""
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
    links/pruning.py, so that compaction removes the key on a topic still compacted). Raises
    MessageError (with its reason) for anything the master must not apply, including a key that
    is not the value's `<incarnation>:<tinyurl>`.

    The master decodes every report of every replica (bench/clicks.py): msgspec checks types,
    ranges and lengths in one C pass, the character sets are three str-method calls; together
    faster than the orjson reader and the Python checks they replaced (docs/records.md gives
    the figures).
    """
    if value is None:
        # A tombstone ends a counter's key: the key must still be one (whose counter it ends).
        incarnation, colon, tinyurl = key_text(key).partition(":")
        if not (colon and INCARNATION_RE.fullmatch(incarnation) and tinyurl_ok(tinyurl)):
            raise MessageError("a tombstone's key is not <incarnation>:<tinyurl>", reason="key")
        return None
    if key is None:
        raise MessageError("record has no key", reason="key")
    try:
        report = _click_decoder.decode(value)
    except (msgspec.MsgspecError, ValueError, RecursionError) as exc:
        raise decode_error(exc, "click report") from None
    tinyurl, incarnation = report.tinyurl, report.incarnation
    if not (tinyurl_chars_ok(tinyurl) and alnum(incarnation) and node_ok(report.node)):
        raise MessageError("click report: tinyurl, incarnation or node has a character its "
                           "pattern does not allow", reason="range")
    if tinyurl in RESERVED_TINYURLS:
        raise MessageError(f"click report: {tinyurl!r} is a reserved path, not a tinyurl",
                           reason="reserved")
    if key != f"{incarnation}:{tinyurl}".encode():
        raise MessageError("key differs from the report's incarnation:tinyurl", reason="key")
    return report


# Schema 3: many counters of one incarnation in one record (see the module's docstring).
CLICK_BATCH_SCHEMA = 3

# The most counters a report batch may carry. Bounds a record's size (a pair is at most 86 bytes
# of JSON with a 64-character alias, 30 with a generated tinyurl: 5,000 pairs ~ 430 kB at worst,
# under Kafka's default message.max.bytes of ~1 MB) and the master's
# work per record; the reporter sends at most its CLAIM_BATCH (1,000) per record.
CLICK_BATCH_MAX = 5_000

# A count in a batch: as a schema-2 report's count, at least 1 (a counter with no click is never
# reported) and at most INT_MAX.
BatchCount = Annotated[int, Meta(ge=1, le=INT_MAX)]
# A counter's bot clicks in a schema-4 batch: 0 or more, never above its count (checked apart).
BotCount = Annotated[int, Meta(ge=0, le=INT_MAX)]


class _ClickBatchFields(RecordStruct, kw_only=True):
    # The fields every report batch has, in this order on the wire. `schema` is here only to
    # keep its place first: each kind narrows it to its own Literal (msgspec keeps a field a
    # subclass declares again where the base put it, and encodes nothing of this class itself).
    schema: Annotated[int, SchemaVersion]
    node: Annotated[Node, Meta(description="The replica that sent it: a label for the admin, "
                                           "not part of the counters' identity.")]
    incarnation: Annotated[Incarnation, Meta(description="The counters' identity: one life of "
                                                         "one replica's Redis.")]
    reported_at: Annotated[Time, Meta(description="When it was sent, by the replica's clock "
                                                  "(RFC 3339); the hour its clicks are charted "
                                                  "in.")]


class ClickBatch(_ClickBatchFields, kw_only=True):
    """The absolute counts of many counters of one incarnation, sent in one flush by one
    replica. Key: `<incarnation>/<32 lowercase hex digits>` (UTF-8), unique per record. Each
    pair in `counts` is one counter's report, exactly as a schema-2 ClickReport with this
    record's node, incarnation and reported_at; a tinyurl named twice counts as its largest
    count (both are absolute counts of one counter, so the smaller is only older)."""

    schema: Annotated[Literal[3], SchemaVersion]
    counts: Annotated[list[tuple[Tinyurl, BatchCount]],
                      Meta(min_length=1, max_length=CLICK_BATCH_MAX,
                           description="[tinyurl, absolute count] per counter: clicks of the "
                                       "tinyurl in this incarnation.")]


# Schema 4: as schema 3, each counter with its bots (issue 18: human and bot clicks).
CLICK_BATCH_BOTS_SCHEMA = 4


class ClickBatchBots(_ClickBatchFields, kw_only=True):
    """ClickBatch with each counter's bot clicks: every pair of schema 3 is here a triple
    [tinyurl, count, bots], `count` all the counter's clicks (a bot's too: the hundreds the
    replicas report count every click) and `bots` how many of them were a bot's, 0 <= bots <=
    count. Both are absolute values of one moment of the counter (read together in Redis), or for
    a milestone report the hundred and a lower bound of the bots then; the master keeps the
    largest of each. Key: as ClickBatch's."""

    schema: Annotated[Literal[4], SchemaVersion]
    counts: Annotated[list[tuple[Tinyurl, BatchCount, BotCount]],
                      Meta(min_length=1, max_length=CLICK_BATCH_MAX,
                           description="[tinyurl, absolute count, bots] per counter: clicks of "
                                       "the tinyurl in this incarnation, and how many of them "
                                       "were a bot's (at most the count).")]


class _Schema(msgspec.Struct):
    # Only the `schema` field of a batch (msgspec skips the others unparsed into objects): which
    # decoder reads the record.
    schema: int


_batch_decoders = {CLICK_BATCH_SCHEMA: msgspec.json.Decoder(ClickBatch),
                   CLICK_BATCH_BOTS_SCHEMA: msgspec.json.Decoder(ClickBatchBots)}
_schema_decoder = msgspec.json.Decoder(_Schema)

# The key of a batch: the incarnation, then this separator (in neither the incarnation's nor a
# tinyurl's alphabet, so no batch key is a schema-2 key and the decoder tells them apart by it).
BATCH_KEY_SEPARATOR = "/"


def click_batch_encode(
    *, node: str, incarnation: str, counts: Iterable[tuple[str, int] | tuple[str, int, int]],
    reported_at: datetime,
) -> tuple[bytes, bytes]:
    """The (key, value) of one report batch: key `<incarnation>/<random 128-bit hex id>`, value
    JSON ClickBatchBots (schema 4) for (tinyurl, absolute count >= 1, bots <= count) triples,
    what replicas send, or ClickBatch (schema 3, what they sent before, for tests and benches)
    for (tinyurl, count) pairs; 1 to CLICK_BATCH_MAX of them, all of one kind; reported_at
    timezone-aware. The key is unique so that no two batches ever share one:
    on a topic still compacted (before `manage.py kafka_topics` sets the new policy) compaction
    then removes no batch. Raises ValueError for an empty or oversized batch."""
    pairs = list(counts)
    if not 1 <= len(pairs) <= CLICK_BATCH_MAX:
        raise ValueError(f"a click batch carries 1 to {CLICK_BATCH_MAX} counters, not "
                         f"{len(pairs)}")
    kind, schema = ((ClickBatchBots, CLICK_BATCH_BOTS_SCHEMA) if len(pairs[0]) == 3
                    else (ClickBatch, CLICK_BATCH_SCHEMA))
    batch = kind(schema=schema, node=node, incarnation=incarnation, reported_at=reported_at,
                 counts=pairs)
    key = f"{incarnation}{BATCH_KEY_SEPARATOR}{uuid.uuid4().hex}".encode()
    return key, ENCODER.encode(batch)


def _batch_decode(key: bytes, value: bytes) -> ClickBatch | ClickBatchBots:
    try:
        # Two passes over a record of ~14 kB: the first only finds `schema` (msgspec skips the
        # rest without building it: docs/performance.md measures the whole decode).
        decoder = _batch_decoders.get(_schema_decoder.decode(value).schema)
        if decoder is not None:
            batch = decoder.decode(value)
    except (msgspec.MsgspecError, ValueError, RecursionError) as exc:
        raise decode_error(exc, "click batch") from None
    if decoder is None:
        raise MessageError("click batch: a schema this master does not read", reason="schema")
    if batch.schema == CLICK_BATCH_BOTS_SCHEMA and any(b > n for _, n, b in batch.counts):
        raise MessageError("click batch: a counter with more bot clicks than clicks",
                           reason="range")
    incarnation = batch.incarnation
    # msgspec checked each tinyurl's length, so the joined text is [A-Za-z0-9_-]* exactly when
    # each one is: one or two str calls for the whole batch.
    tinyurls = [c[0] for c in batch.counts]
    if not (tinyurl_chars_ok("".join(tinyurls)) and alnum(incarnation)
            and node_ok(batch.node)):
        raise MessageError("click batch: a tinyurl, the incarnation or the node has a character "
                           "its pattern does not allow", reason="range")
    if not RESERVED_TINYURLS.isdisjoint(tinyurls):
        raise MessageError("click batch: a tinyurl is a reserved path", reason="reserved")
    name, _, batch_id = key_text(key).partition(BATCH_KEY_SEPARATOR)
    if name != incarnation or len(batch_id) != 32 or batch_id.strip("0123456789abcdef"):
        raise MessageError("key is not the batch's <incarnation>/<32 hex digits>", reason="key")
    return batch


def clicks_record_decode(key: bytes | None, value: bytes | None
                         ) -> ClickReport | ClickBatch | ClickBatchBots | None:
    """Decode and check any clicks-topic record: a report batch (schema 4 or 3, key
    `<incarnation>/<id>`), a single report (schema 2, key `<incarnation>:<tinyurl>`) or a
    tombstone (None). The key's separator says which, and the value must be of that kind
    (a batch under a report's key is rejected with reason "schema", as is the reverse). Raises
    MessageError (with its reason) for anything the master must not apply: a batch with one
    bad pair is rejected whole (docs/records.md says why)."""
    if value is not None and key is not None and BATCH_KEY_SEPARATOR.encode() in key:
        return _batch_decode(key, value)
    return click_report_decode(key, value)


def clicks_topic_spec() -> TopicSpec:
    durability, relied = durability_configs()
    rf = settings.KAFKA_REPLICATION_FACTOR
    return TopicSpec(
        name=clicks_topic(),
        # ONE partition. A single consumer (the master's consume_clicks) reads it. Traffic from
        # each replica: counters/s = milestones/s + (distinct links clicked in a flush
        # interval) / (flush interval), a milestone being a counter passing a multiple of 100;
        # so at most redirects/s / 100 + min(redirects/s, distinct links / flush interval),
        # sent as batches of up to 1,000 counters (~14 bytes each). The one consumer's apply is
        # the limit, not the partition: a bare read of the topic carries millions of counters
        # a second (both measured in docs/performance.md).
        # The partition count must never grow: the producer's default partitioner picks
        # murmur2(key) modulo the partition count (kafka-python 3.0.12,
        # kafka/partitioner/default.py), so adding partitions would send a schema-2 counter's
        # later reports to another partition than its earlier ones. `manage.py kafka_topics`
        # refuses to change a partition count (tests/links/test_kafka_topics.py;
        # tests/test_bus.py shows the remapping).
        partitions=1,
        replication_factor=rf,
        configs=durability,
        relied={
            **relied,
            # Time retention, not compaction (issue "Writes at scale"). A report batch carries
            # many counters under a key of its own, so compacting on keys would keep nothing
            # per counter (and with one key per incarnation it would drop every batch but the
            # last, losing counters not in it). The topic keeps every record for retention.ms
            # (Kafka's default, 7 days) and then deletes it; what the master did not read by
            # then is replaced by the replicas' sweep (redirects/sweep.py: every counter
            # re-reported at least every SHORTENER_CLICKS_SWEEP_SECONDS, at most 3 days), so a
            # master that was away for any length of time still finds every live counter's
            # count of the last sweep or later. What is lost against the compacted topic of
            # before (docs/delivery-guarantees.md): a counter no replica holds any more (an
            # ended incarnation's last counts, deleted from Redis once reported) whose last
            # report the master had not read when it was deleted. The loss is never silent
            # (links/totals.py: an ERROR and shortener_consumer_records_lost_total).
            # `manage.py kafka_topics` sets both on a topic made compacted by an older version
            # (they are checked like every relied-on default, and repaired when they differ).
            "cleanup.policy": "delete",
            "retention.ms": "604800000",
        },
    )


def clicks_producer_settings() -> dict[str, Any]:
    """The replicas' click-report producer's own settings.

    acks=all and idempotence are kafka-python 3.0.12's defaults (see links_producer_settings):
    a report's mark is cleared only after an ack that means "every in-sync replica has it", and
    the producer's own retries neither duplicate a report nor reorder a counter's reports
    within one producer (harmless anyway under the master's max())."""
    return {
        # No linger (kafka-python's default, 0): a claim's counters are already one record per
        # incarnation, of ~14 kB, under the 16 kB batch_size, so the producer held each for the
        # whole linger, and the reporter waits for a claim's acknowledgement before the next:
        # with the 50 ms it had, a flush of 200,000 counters ran at 10,600-16,500 counters/s,
        # with none at 73,700-166,800 (bench/reporter.py; docs/performance.md).
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
    """The master's clicks consumer's own settings (consume_clicks).

    How many counters one transaction applies: max_poll_records bounds the records, the fetch
    size (max_partition_fetch_bytes, kafka-python's default 1 MB) the bytes, so about 70 report
    batches, some 70,000 counters, at most; links/totals.py gives the statement work_mem for
    that."""
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
