"""The replicas topic, <user>-replicas: every replica's status, for the master's admin.

Each replica's report_clicks publishes a small status (ReplicaStatus, below) every
SHORTENER_STATUS_SECONDS, keyed by its node id; the admin's replicas page
reads the whole topic when it is shown (links/replicas.py). No new network path: the
replicas already produce to Kafka, and the master already reads from it.

Delivery: AT MOST ONCE, on purpose. A status is a snapshot that the next one replaces within
seconds, and nothing is added up from it, so it is not worth a retry or an outbox: a send that
fails is logged and dropped (the producer makes no retries). What that loses: a replica whose
statuses fail for longer than SHORTENER_REPLICA_MISSING_SECONDS is shown missing, which is
then the truth as far as the master can see. Duplicates are harmless (the newest wins).

Key: the node (UTF-8), the compaction key: the topic keeps the newest status of every replica.
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
    NODE_RE,
    Count,
    Incarnation,
    MessageError,
    Node,
    RecordStruct,
    Time,
    alnum,
    decode_error,
    key_text,
)
from topics.specs import TopicSpec


def replicas_topic() -> str:
    return f"{settings.SHORTENER_USER}-replicas"


REPLICA_STATUS_SCHEMA = 1


class ReplicaStatus(RecordStruct, kw_only=True):
    """One replica's status on the replicas topic. Key: the node (UTF-8), equal to `node`.
    A snapshot that the next one replaces; a tombstone (null value) says the replica is gone."""

    schema: Annotated[Literal[1], Meta(description="The record's schema version.")]
    node: Node
    # The links topic: the next offset this replica's Redis will apply, and the topic's end as
    # the replica last saw it, each summed over the topic's partitions; end - position is its
    # lag in records. None: unknown (Redis or Kafka did not answer; nothing applied yet).
    links_position: Annotated[Count, Meta(description="The next links-topic offset the "
                                                       "replica will apply, summed over "
                                                       "partitions; null: unknown.")] | None
    links_end: Annotated[Count, Meta(description="The links topic's end offsets as the replica "
                                                 "last saw them, summed; null: unknown.")] | None
    ready: Annotated[bool, Meta(description="What the replica's /readyz answers.")]
    reason: Annotated[str, Meta(max_length=500, description="Why it is not ready; empty when "
                                                            "ready.")]
    incarnation: Annotated[Incarnation, Meta(description="Its click counters' incarnation; "
                                                         "null before its first click.")] | None
    redirects: Annotated[Count, Meta(description="Redirects served in this incarnation; null: "
                                                 "unknown.")] | None
    version: Annotated[str, Meta(max_length=100, description="The code it runs (git commit, or "
                                                             "SHORTENER_VERSION).")]
    reported_at: Annotated[Time, Meta(description="The replica's clock when it sent the status "
                                                  "(RFC 3339); the page uses the broker's.")]
    # Per partition (links_position is their sum): the master compares a link's record offset
    # with its partition's position (links/propagation.py). Added without a new schema version
    # (unknown fields are ignored; absent: null, an older replica), so it has a default.
    links_positions: Annotated[dict[int, Count], Meta(
        max_length=1000, extra_json_schema={"propertyNames": {"pattern": "^[0-9]+$"}},
        description="The next links-topic offset the replica will apply, per partition (keys: "
                    "partition numbers); null: unknown.")] \
        | None = None


_status_decoder = msgspec.json.Decoder(ReplicaStatus)


def replica_status_encode(
    *,
    node: str,
    links_position: int | None,
    links_end: int | None,
    ready: bool,
    reason: str,
    incarnation: str | None,
    redirects: int | None,
    version: str,
    reported_at: datetime,
    links_positions: dict[int, int] | None = None,
) -> tuple[bytes, bytes]:
    """The (key, value) of one replica status: key = node (UTF-8), value = JSON ReplicaStatus.
    `reason` and `version` are cut to their schema's lengths. Raises ValueError for a node that
    NODE_RE does not accept."""
    if not NODE_RE.fullmatch(node):
        raise ValueError(f"node {node!r} is not a node id")
    status = ReplicaStatus(
        schema=REPLICA_STATUS_SCHEMA, node=node, links_position=links_position,
        links_end=links_end, ready=ready, reason=reason[:500], incarnation=incarnation,
        redirects=redirects, version=version[:100], reported_at=reported_at,
        links_positions=links_positions)
    return node.encode(), ENCODER.encode(status)


def replica_status_decode(key: bytes | None, value: bytes | None) -> ReplicaStatus | None:
    """Decode and check one replicas-topic record: the ReplicaStatus, or None for a tombstone
    (value null: the replica named by the key is gone). Raises MessageError (with its reason)
    for anything not showable, including a key that is not the value's node."""
    node = key_text(key)
    if not NODE_RE.fullmatch(node):
        raise MessageError(f"key {node[:20]!r} is not a node id", reason="key")
    if value is None:
        return None
    try:
        status = _status_decoder.decode(value)
    except (msgspec.MsgspecError, ValueError, RecursionError) as exc:
        raise decode_error(exc, "replica status") from None
    if status.node != node:  # the key's node is checked: so is the value's
        raise MessageError("key differs from the status' node", reason="key")
    if status.incarnation is not None and not alnum(status.incarnation):
        raise MessageError("replica status: incarnation has a character [A-Za-z0-9] does not "
                           "allow", reason="range")
    return status


def replicas_topic_spec() -> TopicSpec:
    return TopicSpec(
        name=replicas_topic(),
        # ONE partition: a few hundred bytes per replica every few seconds, and one reader that
        # reads all of it on each page view; one partition is one fetch and one end offset.
        partitions=1,
        # The configured factor like the other topics, but none of their durability settings:
        # a status lost with a broker costs nothing (the next ones follow in seconds).
        replication_factor=settings.KAFKA_REPLICATION_FACTOR,
        configs={
            # Compaction keeps at least the newest status of every node (Kafka documentation,
            # Design, "Log Compaction"), so the topic holds about one record per replica
            # however long they run. "delete" as well removes whole segments once the newest
            # record in them is older than retention.ms (7 days, the default; Kafka
            # documentation, Implementation, "Deletes": "the largest timestamp in a segment
            # file ... defining the retention time for the entire segment"). That removes a
            # stopped replica's last status no sooner than seven days after it was written,
            # and possibly much later: the cleaner copies it into cleaned segments together
            # with other nodes' newer statuses, and such a segment is kept until its newest
            # record is seven days old. Deletion by age is therefore no way to remove a
            # replica from the page; a tombstone is.
            "cleanup.policy": "compact,delete",
            # Compaction never touches the active segment (Kafka documentation, Design, "Log
            # Compaction": "The active segment will not be compacted even if all of its
            # messages are older than the minimum compaction time lag"): rolling it every ten
            # minutes (default 7 days) bounds the uncompacted part that the page reads to about
            # ten minutes of statuses (120 per replica at 5 s), instead of a week's worth.
            # (min.cleanable.dirty.ratio stays at its default 0.5: right after each roll, each
            # key has ~120 superseded statuses for one kept.)
            "segment.ms": str(10 * 60 * 1000),
            # "Last seen" is the broker's time of append (default CreateTime, the producer's):
            # one clock for every replica, so a replica whose own clock is off is neither shown
            # missing nor kept alive by it.
            "message.timestamp.type": "LogAppendTime",
        },
    )


def status_producer_settings() -> dict[str, Any]:
    """The replicas' status producer's own settings. Like every producer (PRODUCER_BASE) it
    cannot create a topic (allow_auto_create_topics=False; tests/test_bus.py)."""
    return {
        # No retries (default: unbounded within delivery_timeout_ms): a failed status is
        # dropped and the next one follows after SHORTENER_STATUS_SECONDS (at most once).
        "retries": 0,
        # Idempotence needs retries; with retries=0 and idempotence left at its default,
        # kafka-python 3.0.12 turns it off with a warning at every producer made. Off, said.
        # (acks stays at its default, all: with no retries it only decides when the one
        # attempt counts as done.)
        "enable_idempotence": False,
        # -- Bounded waits (connecting: PRODUCER_BASE), shorter than the status interval's
        # -- order of magnitude, so a Kafka outage never piles up statuses or blocks
        # -- report_clicks' shutdown for long (defaults: 60 s blocking in send(), 30 s per
        # -- request, 120 s per delivery). kafka-python 3.0.12 requires delivery_timeout_ms >=
        # -- linger_ms + request_timeout_ms (RecordAccumulator), hence both.
        "max_block_ms": 5_000,
        "request_timeout_ms": 5_000,
        "delivery_timeout_ms": 5_000,
    }


def status_producer_make() -> KafkaProducer:
    """The replica's status producer (report_clicks; redirects/status.py)."""
    return producer_make(
        client_id=f"{settings.SHORTENER_USER}-status-{settings.SHORTENER_NODE_ID}",
        own=status_producer_settings())


def links_end_reader_settings() -> dict[str, Any]:
    """The status's reader of the links topic's end offset: its own settings."""
    return {
        # end_offsets() and metadata wait at most this long (default 30 s); the status then
        # says "unknown".
        "request_timeout_ms": 5_000,
    }


def links_end_reader_make() -> KafkaConsumer:
    """A group-less consumer that only asks for the links topic's end offsets (the status). No
    group: it never consumes, so it must not appear as a member of this replica's links group
    (whose offsets show consume_links' progress)."""
    return consumer_make(
        client_id=f"{settings.SHORTENER_USER}-status-{settings.SHORTENER_NODE_ID}",
        group_id=None, own=links_end_reader_settings())


def replicas_reader_settings() -> dict[str, Any]:
    """The admin's replicas reader's own settings."""
    return {
        # A page view must not hang on Kafka: connecting (CONSUMER_BASE), metadata and each
        # request are bounded (default 30 s), and links/replicas.py gives up after
        # SHORTENER_REPLICAS_READ_SECONDS in all. (fetch_max_wait_ms stays at its default: the
        # reader fetches only below the end offset it took, where records are available, and
        # the broker answers a fetch as soon as fetch_min_bytes, 1 byte, is.)
        "request_timeout_ms": 3_000,
    }


def replicas_reader_make() -> KafkaConsumer:
    """The admin's reader of the replicas topic: group-less (no commits), assigned and read from
    the start on every page view (the topic is compacted and small)."""
    return consumer_make(
        client_id=f"{settings.SHORTENER_USER}-replicas-admin-{settings.SHORTENER_NODE_ID}",
        group_id=None, own=replicas_reader_settings())
