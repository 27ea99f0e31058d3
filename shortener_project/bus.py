"""Kafka for this project: topic names, topic and client settings, and the clients built from them.

The assignment asks for a reason beside every Kafka setting, an explicit and justified partition
count, and a conscious delivery guarantee per topic: they are here, where they are set, and
docs/delivery-guarantees.md tells the whole story with measured figures.

Durability, both topics. A producer's ack (acks=all) means "every in-sync replica has the record"
in its page cache; Kafka does not fsync each record. With the assignment's single broker
(replication factor 1) that is one copy: losing that broker's disk, or its operating system
crashing before the cache reaches the disk, loses acknowledged records. What heals it: for links,
the master's PostgreSQL is the truth and `manage.py republish_links` re-sends every link's
current state; for clicks, the totals the master already applied are in PostgreSQL, and a lost
report is replaced by its counter's next one (see the delivery document for what that leaves).
With replication factor >= 2 the topics require min.insync.replicas=2, so an ack means at least
two brokers have the record, and unclean leader election is off, so a replica that missed
acknowledged records never becomes the leader.

Links topic, <user>-links: AT-LEAST-ONCE into a versioned apply (a replica ends in the state the
master holds, whatever it missed, replayed or received late):
  * a record is a link's whole state (active with its longurl, or disabled) with its state
    version; a replica applies a record only if its version is newer than the one it holds,
    so duplicates, replays and late copies of older states change nothing;
  * a takedown is a "disabled" record, which compaction keeps like any other newest record: a
    replica that was away for any length of time still reads it (never a tombstone, which
    compaction drops after delete.retention.ms);
  * the master publishes after its commit and waits for the ack; until then the link stays
    marked unpublished and the outbox relay sends it again;
  * compaction keeps each key's newest *offset*, not its newest version: the relay also reads
    the topic and sends a link's current state again whenever an older one lands after it
    (links/audit.py), so a replica reading the topic from the start later gets it too.
Clicks topic, <user>-clicks: AT-LEAST-ONCE of absolute counts into a max() apply:
  * a report is a counter's absolute value, keyed by the counter (`<incarnation>:<tinyurl>`,
    one life of one replica's Redis); the master keeps the largest value per counter, so a
    duplicate or an old report adds nothing and a lost report is healed by the next one;
  * the topic is compacted: it keeps the newest report of every counter, which is exactly what
    the master needs, so its totals survive consume_clicks being down for any length of time.
Replicas topic, <user>-replicas: AT MOST ONCE, snapshots (see the block "replicas topic" below).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from django.conf import settings
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

logger = logging.getLogger(__name__)


def links_topic() -> str:
    return f"{settings.SHORTENER_USER}-links"


def clicks_topic() -> str:
    return f"{settings.SHORTENER_USER}-clicks"


def clicks_group() -> str:
    # One consumer group for the master's consume_clicks, as the assignment names it. Like the
    # links group it only shows progress; the position is kept in PostgreSQL with the totals.
    return f"{settings.SHORTENER_USER}-clicks"


def links_group() -> str:
    # One group per replica: every replica must read the whole topic, so replicas must never
    # share a group (sharing would split the partitions between them). The assignment's
    # convention: the user prefix, and the server's address at the end.
    return f"{settings.SHORTENER_USER}-links-{settings.SHORTENER_NODE_ID}"


# --- topics ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    # Topic-level configs; `manage.py kafka_topics` checks and repairs exactly these.
    configs: dict[str, str] = field(default_factory=dict)


def _durability() -> dict[str, str]:
    """The settings both topics share, for the configured replication factor."""
    rf = settings.KAFKA_REPLICATION_FACTOR
    return {
        # An acks=all write succeeds only once this many replicas have it. 2 for any replication
        # factor >= 2: an acknowledged record then survives the loss of any one broker. The price,
        # with exactly 2 replicas, is that one broker down stops all writes (/create answers 503,
        # reports wait in Redis) rather than acknowledging records held by one copy. With one
        # broker (the assignment's cluster) it must be 1, stated so that a broker-wide default of
        # 2 cannot make the topic unwritable.
        "min.insync.replicas": str(min(2, rf)),
        # A replica that fell out of sync must never become the leader: it would lack records
        # that were acknowledged, and the log would be truncated to its copy (acknowledged links
        # and reports silently gone). Without a leader the partition is unavailable instead, until
        # an in-sync replica returns. (Kafka's default is false; stated so that a broker-wide
        # override does not apply. With one replica there is no other to elect.)
        "unclean.leader.election.enable": "false",
    }


def topic_specs() -> list[TopicSpec]:
    rf = settings.KAFKA_REPLICATION_FACTOR
    return [
        TopicSpec(
            name=links_topic(),
            # ONE partition. Every replica is its own consumer group and reads every partition with
            # a single consumer, so more partitions would add no read parallelism, only more
            # positions to track per replica. One partition carries far more than the master
            # produces (a partition takes tens of MB/s; a link record is ~150 bytes), and it gives
            # all links one order, so "caught up" is one offset comparison.
            partitions=1,
            replication_factor=rf,
            configs={
                # Compaction keeps the newest record of every key (tinyurl) forever and drops
                # older ones: the topic *is* every link's current state, as the assignment
                # assumes, and stays so past any time-based retention. A new replica reads it
                # from the start. A takedown is a record too ("disabled"), so it is kept like any
                # other state: a taken-down link costs one small record, however long ago.
                "cleanup.policy": "compact",
                **_durability(),
            },
        ),
        TopicSpec(
            name=clicks_topic(),
            # ONE partition. A single consumer (the master's consume_clicks) reads it. Traffic from
            # each replica: reports/s = milestones/s + (distinct links clicked in a flush
            # interval) / (flush interval), a milestone being a counter passing a multiple of 100;
            # so at most redirects/s / 100 + min(redirects/s, distinct links / flush interval).
            # E.g. 2,000 redirects/s over 5,000 links with the 10 s flush: 20 + 500 reports/s of
            # ~200 bytes. One partition takes tens of MB/s; the one consumer is the limit (its
            # rate is measured in docs/performance.md). Keyed by counter, so should partitions
            # ever be added for a second consumer, a counter's reports stay in one partition.
            partitions=1,
            replication_factor=rf,
            configs={
                # A changelog of absolute counts keyed by counter (`<incarnation>:<tinyurl>`): the
                # newest report of a key is exactly the counter's latest value, which is all the
                # master needs. Compaction keeps it forever, so the master's totals survive
                # consume_clicks being down longer than any time-based retention; older reports
                # of the same counter are dropped. Cost: one record per counter ever reported
                # (per Redis life and link clicked).
                "cleanup.policy": "compact",
                **_durability(),
            },
        ),
        replicas_topic_spec(),
    ]


def admin_client() -> KafkaAdminClient:
    return KafkaAdminClient(
        bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS,
        client_id=f"{settings.SHORTENER_USER}-admin-{settings.SHORTENER_NODE_ID}",
        # A deploy script runs this; fail within seconds, not the default 30, if Kafka is away.
        bootstrap_timeout_ms=10_000,
    )


@dataclass
class TopicReport:
    """What `topics_ensure` found and did for one topic."""

    name: str
    created: bool = False
    # config -> (value found, value set): the repairs made
    repaired: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    # what differs from the project's spec and cannot be repaired by a config change
    errors: list[str] = field(default_factory=list)


def _normalised(key: str, value: str | None) -> str | None:
    # cleanup.policy is a list: "delete,compact" and "compact,delete" are the same setting.
    if value is not None and key == "cleanup.policy":
        return ",".join(sorted(part.strip() for part in value.split(",")))
    return value


def topics_ensure(*, repair: bool = True) -> list[TopicReport]:
    """Create the project's topics if missing, and check the existing ones against topic_specs().

    For an existing topic, each config in its spec is compared with the broker's value (whatever
    its source: topic, broker default or Kafka default); a difference is repaired with
    alter_configs (incremental where the broker supports it, Kafka >= 2.3) when `repair`, and
    reported. Partition count and replication factor cannot be changed by a config (fewer
    partitions is impossible, more would move keys; replication needs a reassignment): a
    difference is reported in `errors`, and nothing is changed for it.
    Returns one TopicReport per topic. Raises KafkaError if Kafka cannot be reached.
    """
    admin = admin_client()
    reports = []
    try:
        existing = set(admin.list_topics())
        for spec in topic_specs():
            report = TopicReport(spec.name)
            reports.append(report)
            if spec.name not in existing:
                try:
                    admin.create_topics(
                        [NewTopic(spec.name, spec.partitions, spec.replication_factor,
                                  topic_configs=spec.configs)],
                        wait_for_metadata=True,
                    )
                    report.created = True
                    logger.info("created topic %s (%d partitions)", spec.name, spec.partitions)
                    continue
                except TopicAlreadyExistsError:
                    pass  # another process created it between the list and the create: check it
            _topic_check(admin, spec, report, repair=repair)
    finally:
        admin.close()
    return reports


def _topic_check(admin: KafkaAdminClient, spec: TopicSpec, report: TopicReport, *,
                 repair: bool) -> None:
    described = admin.describe_topics([spec.name])[0]
    partitions = described["partitions"]
    if len(partitions) != spec.partitions:
        report.errors.append(
            f"has {len(partitions)} partitions, the project expects {spec.partitions}; a "
            "partition count cannot be repaired in place (Kafka cannot remove partitions, and "
            "adding some would move keys): recreate the topic, or adapt topic_specs() and the "
            "reasoning behind it")
    replicas = {len(p["replica_nodes"]) for p in partitions}
    if replicas != {spec.replication_factor}:
        report.errors.append(
            f"has replication factor {sorted(replicas)}, KAFKA_REPLICATION_FACTOR is "
            f"{spec.replication_factor}; change it with a partition reassignment "
            "(kafka-reassign-partitions.sh) or set KAFKA_REPLICATION_FACTOR to match")
    found = _topic_configs(admin, spec.name, list(spec.configs))
    wrong = {key: value for key, value in spec.configs.items()
             if _normalised(key, found.get(key)) != _normalised(key, value)}
    if not wrong:
        return
    if not repair:
        for key, value in wrong.items():
            report.errors.append(f"{key}={found.get(key)}, the project expects {value}")
        return
    result = admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, spec.name, dict(wrong))])
    outcome = result.get("topic", {}).get(spec.name)
    after = _topic_configs(admin, spec.name, list(wrong))
    for key, value in wrong.items():
        if _normalised(key, after.get(key)) == _normalised(key, value):
            report.repaired[key] = (found.get(key), value)
            logger.warning("topic %s: %s was %s, set to %s", spec.name, key, found.get(key), value)
        else:
            report.errors.append(f"{key}={after.get(key)}, the project expects {value}; "
                                 f"setting it failed: {outcome}")


def _topic_configs(admin: KafkaAdminClient, topic: str, keys: list[str]) -> dict[str, str | None]:
    """The topic's effective values of `keys` (topic override, broker default or Kafka's)."""
    described = admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic, keys)], config_filter="all")
    configs = described["topic"][topic]
    return {key: (configs[key]["value"] if key in configs else None) for key in keys}


# --- producer (master) ----------------------------------------------------------------------

_producer: KafkaProducer | None = None
_producer_lock = threading.Lock()


def publish_timeout_ms() -> int:
    """The one bound on a link's delivery, in ms: SHORTENER_PUBLISH_TIMEOUT (seconds).

    It is the producer's delivery_timeout_ms, so the producer itself reports a record it could
    not deliver in time as failed; /create waits for that answer (see `publish_wait_seconds`)."""
    return int(settings.SHORTENER_PUBLISH_TIMEOUT * 1000)


def publish_wait_seconds() -> float:
    """How long a caller waits on a link's future: the delivery bound plus a second for the
    producer's sender thread to expire the batch and report it. A wait that ends by this
    client-side limit, with the future still pending, is not a delivery failure."""
    return settings.SHORTENER_PUBLISH_TIMEOUT + 1.0


# Wait up to 2 ms for other requests' records to share a batch: one network round trip then
# serves many concurrent /create calls, for at most 2 ms of latency.
LINKS_LINGER_MS = 2


def producer_get() -> KafkaProducer:
    """The process's producer, made on first use (after gunicorn forks) and shared by threads.

    KafkaProducer is thread-safe; one per process batches the concurrent requests' records.
    Raises KafkaError (NoBrokersAvailable) when Kafka cannot be reached within the publish
    timeout; the next call tries again.
    """
    global _producer
    with _producer_lock:
        if _producer is None:
            bound = publish_timeout_ms()
            _producer = KafkaProducer(
                bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS,
                client_id=f"{settings.SHORTENER_USER}-master-{settings.SHORTENER_NODE_ID}",
                # Wait for every in-sync replica to have the record before /create answers (with
                # min.insync.replicas, at least two brokers when there are two or more).
                acks="all",
                # Idempotence: the broker drops a batch that a retry sent twice and keeps the
                # order of records under retries. (kafka-python 3 turns it on by default and
                # silently off when acks, retries or in-flight conflict; stating it makes such a
                # conflict an error instead.)
                enable_idempotence=True,
                # The master never creates a topic by sending to it: a topic made that way gets
                # the broker's defaults (deletion after 7 days instead of compaction). Only
                # `manage.py kafka_topics` creates them, with topic_specs().
                allow_auto_create_topics=False,
                linger_ms=LINKS_LINGER_MS,
                # -- Operational timeouts: ONE bound, SHORTENER_PUBLISH_TIMEOUT (default 5 s), so
                # -- that /create answers 503 within seconds while Kafka is down, instead of
                # -- after the 30-120 s defaults, and never gives up before the producer does.
                # The whole delivery of a record, retries included: the producer fails it after
                # this long, and /create waits for exactly that answer. The record then stays
                # unpublished in PostgreSQL and the outbox re-sends it.
                delivery_timeout_ms=bound,
                # One produce request (Kafka requires delivery >= linger + request).
                request_timeout_ms=bound - LINKS_LINGER_MS,
                # Reaching a broker when the producer is made, and send() blocking for the
                # topic's metadata: only on a fresh producer (the process's first /create, or
                # the first after a failed delivery). When Kafka does not answer, the request
                # fails after this, with no delivery wait after it.
                bootstrap_timeout_ms=bound,
                max_block_ms=bound,
                # After Kafka was unreachable, try again at least every 5 s (default: backing
                # off to 30 s), so /create recovers within seconds of Kafka's return.
                reconnect_backoff_max_ms=5_000,
            )
        return _producer


def producer_reset(producer: KafkaProducer | None = None) -> None:
    """Close and forget the process's producer, so that the next use makes a new one.

    With `producer`, only if it is still the current one: a thread that saw an older producer
    fail must not close the fresh one that another thread made since. Called after a real
    delivery failure (never after a caller's own wait ran out: that would fail the other
    requests' records in flight) and in tests. Requests whose records the closed producer still
    held see them fail, and answer 503 like the one that failed.
    """
    global _producer
    with _producer_lock:
        if _producer is None or (producer is not None and producer is not _producer):
            return
        producer_close(_producer)
        _producer = None


def producer_close(producer: KafkaProducer, timeout: float = 1.0) -> None:
    """Close a producer for good: send what it can within `timeout` seconds, fail the rest.

    kafka-python 3.0.12's close() flushes first and raises KafkaTimeoutError when the flush
    times out, before it stops the sender thread (kafka/producer/kafka.py, close): a producer
    reset after a failed delivery would otherwise keep its thread, its connections and its
    records retrying. So on that error the sender is force-closed, which fails the records it
    still holds, and close() then completes. Never raises.
    """
    try:
        producer.close(timeout=timeout)
        return
    except KafkaError:
        pass
    except Exception:  # noqa: BLE001 - closing a broken producer must not raise
        logger.exception("closing the Kafka producer failed")
    try:
        producer._sender.force_close()
        producer._sender.join(timeout)
        producer.close(timeout=0)
    except Exception:  # noqa: BLE001
        logger.exception("force-closing the Kafka producer failed")


# --- consumer (replica) ---------------------------------------------------------------------


def links_consumer_make() -> KafkaConsumer:
    """A consumer for the links topic. The caller assigns partitions and seeks (no subscribe)."""
    return KafkaConsumer(
        bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS,
        client_id=f"{settings.SHORTENER_USER}-links-{settings.SHORTENER_NODE_ID}",
        # The group is where this replica's progress is *shown* (kafka-consumer-groups.sh
        # --describe, lag alerts). It is not where progress is *kept*: the position lives in
        # Redis, written atomically with the links (see redirects/consumer.py), so that a wiped
        # Redis is rebuilt from the start even though the group's offsets are at the end.
        group_id=links_group(),
        # Committed by hand after each batch is in Redis, for the reason above.
        enable_auto_commit=False,
        # Only used if a stored position is out of range (the topic was recreated): start over.
        # Re-reading is harmless: records older than what Redis holds are not applied.
        auto_offset_reset="earliest",
        # Large batches make catch-up fast: one Redis transaction per up to this many links
        # (5,000 by default; SHORTENER_LINKS_BATCH).
        max_poll_records=settings.SHORTENER_LINKS_BATCH,
        # Bring more data per fetch during catch-up (default 1 MiB per partition).
        max_partition_fetch_bytes=8 * 1024 * 1024,
        # The links topic is never created by reading it; the master creates it with its settings.
        allow_auto_create_topics=False,
        # (fetch_max_wait_ms stays at its default: it is how long the broker holds a fetch when
        # less than fetch_min_bytes, 1 byte, is available, so a new record is answered at once
        # and a lower value only adds empty round trips. Source: Kafka's consumer configs.)
        # -- Operational: after a network cut or a broker restart, try again at least every 5 s
        # (default: backing off to 30 s), so a replica resumes within seconds of the network's
        # return.
        reconnect_backoff_max_ms=5_000,
        # Give up making the consumer after 3 s (default 30 s) while Kafka is unreachable: the
        # loop retries, and each round writes the heartbeat that /readyz checks (a 30 s wait
        # would read as a dead consumer).
        bootstrap_timeout_ms=3_000,
    )


def links_audit_consumer_make() -> KafkaConsumer:
    """The master's reader of its own links topic (links/audit.py): it checks that the newest
    record of every link there is the link's current state. The caller assigns and seeks."""
    return KafkaConsumer(
        bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS,
        client_id=f"{settings.SHORTENER_USER}-links-audit-{settings.SHORTENER_NODE_ID}",
        # Progress shown under the assignment's naming; kept in PostgreSQL with what it changed.
        group_id=f"{settings.SHORTENER_USER}-links-audit",
        enable_auto_commit=False,
        # Only if the stored position is out of range (the topic was recreated): audit it all.
        auto_offset_reset="earliest",
        # One PostgreSQL transaction per batch: the whole topic is read at the first start.
        max_poll_records=settings.SHORTENER_LINKS_BATCH,
        allow_auto_create_topics=False,
        # -- Operational: resume within seconds once Kafka is reachable again.
        reconnect_backoff_max_ms=5_000,
    )


def clicks_producer_make() -> KafkaProducer:
    """The replica's click-report producer (used by `report_clicks`, never by a redirect)."""
    return KafkaProducer(
        bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS,
        client_id=f"{settings.SHORTENER_USER}-clicks-{settings.SHORTENER_NODE_ID}",
        # A report's mark is cleared only after this ack; acks=all makes "acknowledged" mean
        # "every in-sync replica has it", so a cleared mark is not a report lost with a leader.
        acks="all",
        # No duplicates from the producer's own retries, and per-key order is kept (a later,
        # larger count never lands before an earlier one; harmless anyway under max()).
        enable_idempotence=True,
        # Reports never create the clicks topic (it would be made with the broker's defaults,
        # deleting reports after 7 days instead of compacting them).
        allow_auto_create_topics=False,
        # Reports are not urgent: wait up to 50 ms to send many in one request.
        linger_ms=50,
        # -- Operational timeouts, bounded while Kafka is down: the reporter requeues what was not
        # -- acknowledged and tries again on its next round, rather than blocking for the 60-120 s
        # -- defaults. Delivery (retries included) must exceed linger + one request.
        bootstrap_timeout_ms=10_000,
        max_block_ms=10_000,
        request_timeout_ms=10_000,
        delivery_timeout_ms=30_000,
        # Reconnect within seconds once Kafka is reachable again (default backoff: up to 30 s).
        reconnect_backoff_max_ms=5_000,
    )


def clicks_consumer_make() -> KafkaConsumer:
    """The master's consumer of the clicks topic. The caller assigns and seeks (no subscribe)."""
    return KafkaConsumer(
        bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS,
        client_id=f"{settings.SHORTENER_USER}-clicks-master-{settings.SHORTENER_NODE_ID}",
        # For monitoring only (lag tooling); the position that counts is in PostgreSQL, written
        # in the same transaction as the totals (links/clicks.py).
        group_id=clicks_group(),
        enable_auto_commit=False,
        # Never move a position silently: kafka-python's reset of an out-of-range position is
        # an INFO line (under a logger set to ERROR). With "none" a position outside the
        # retained range raises instead, and links/clicks.py reports the records skipped (an
        # ERROR and shortener_consumer_records_lost_total) before reading on from the start.
        auto_offset_reset="none",
        # One PostgreSQL transaction per batch: larger batches, fewer commits.
        max_poll_records=settings.SHORTENER_CLICKS_BATCH,
        # Bring more per fetch when far behind (default 1 MiB per partition), as the links
        # consumer does; fewer fetch round trips after a long master outage.
        max_partition_fetch_bytes=8 * 1024 * 1024,
        allow_auto_create_topics=False,
        # (fetch_max_wait_ms at its default, as for the links consumer: it bounds how long the
        # broker holds a fetch that has no data, not how soon a report arrives.)
        # -- Operational: as for the links consumer, resume within seconds once Kafka is back.
        reconnect_backoff_max_ms=5_000,
    )


# --- replicas topic: every replica's status, for the master's admin ------------------------
#
# Each replica's report_clicks publishes a small status (shortener_project.messages,
# ReplicaStatus) every SHORTENER_STATUS_SECONDS, keyed by its node id; the admin's replicas page
# reads the whole topic when it is shown (links/replicas.py). No new network path: the
# replicas already produce to Kafka, and the master already reads from it.
#
# Delivery: AT MOST ONCE, on purpose. A status is a snapshot that the next one replaces within
# seconds, and nothing is added up from it, so it is not worth a retry or an outbox: a send that
# fails is logged and dropped (the producer makes no retries). What that loses: a replica whose
# statuses fail for longer than SHORTENER_REPLICA_MISSING_SECONDS is shown missing, which is
# then the truth as far as the master can see. Duplicates are harmless (the newest wins).


def replicas_topic() -> str:
    return f"{settings.SHORTENER_USER}-replicas"


def replicas_topic_spec() -> TopicSpec:
    return TopicSpec(
        name=replicas_topic(),
        # ONE partition: a few hundred bytes per replica every few seconds, and one reader that
        # reads all of it on each page view; one partition is one fetch and one end offset.
        partitions=1,
        # The configured factor like the other topics, but none of their durability settings:
        # statuses are acks=1 snapshots, and an unclean leader election that loses a few of
        # them costs nothing (the next ones follow in seconds).
        replication_factor=settings.KAFKA_REPLICATION_FACTOR,
        configs={
            # Compaction keeps the newest status of every node, so the topic holds one record
            # per replica however long they run; deletion after seven days also drops that
            # record once a replica stopped reporting a week ago, so a decommissioned replica
            # leaves the page by itself (a live one wrote its newest status seconds ago).
            "cleanup.policy": "compact,delete",
            "retention.ms": str(7 * 24 * 3600 * 1000),
            # Compaction never touches the open segment: rolling it every ten minutes bounds
            # the uncompacted tail that the page reads to ten minutes of statuses (120 per
            # replica at 5 s), instead of a week's worth under the default segment.ms.
            "segment.ms": str(10 * 60 * 1000),
            # Compact as soon as half the log is superseded statuses (the default), which is
            # right after every roll here: each key has ~120 dirty records for one clean.
            "min.cleanable.dirty.ratio": "0.5",
            # "Last seen" is the broker's time of append: one clock for every replica, so a
            # replica whose own clock is off is neither shown missing nor kept alive by it.
            "message.timestamp.type": "LogAppendTime",
        },
    )


def status_producer_make() -> KafkaProducer:
    """The replica's status producer (report_clicks; redirects/status.py)."""
    return KafkaProducer(
        bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS,
        client_id=f"{settings.SHORTENER_USER}-status-{settings.SHORTENER_NODE_ID}",
        # The leader's ack is enough for a snapshot replaced within seconds (at most once, see
        # above); all in-sync replicas' would only add latency.
        acks=1,
        # No retries, hence no idempotence (which needs acks=all): a failed status is dropped
        # and the next one follows after SHORTENER_STATUS_SECONDS.
        retries=0,
        enable_idempotence=False,
        # Bounded waits, shorter than the status interval's order of magnitude, so a Kafka
        # outage never piles up statuses or blocks report_clicks' shutdown for long.
        bootstrap_timeout_ms=5_000,
        max_block_ms=5_000,
        request_timeout_ms=5_000,
        delivery_timeout_ms=5_000,
        # Reconnect within seconds once Kafka is reachable again (default backoff: up to 30 s).
        reconnect_backoff_max_ms=5_000,
    )


def links_end_reader_make() -> KafkaConsumer:
    """A group-less consumer that only asks for the links topic's end offsets (the status)."""
    return KafkaConsumer(
        bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS,
        client_id=f"{settings.SHORTENER_USER}-status-{settings.SHORTENER_NODE_ID}",
        # No group: it never consumes, so it must not appear as a member of this replica's
        # links group (whose offsets show consume_links' progress).
        group_id=None,
        enable_auto_commit=False,
        # end_offsets() waits at most this long; the status then says "unknown".
        request_timeout_ms=5_000,
        bootstrap_timeout_ms=5_000,
        allow_auto_create_topics=False,
        reconnect_backoff_max_ms=5_000,
    )


def replicas_reader_make() -> KafkaConsumer:
    """The admin's reader of the replicas topic: group-less, assigned and read from the start."""
    return KafkaConsumer(
        bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS,
        client_id=f"{settings.SHORTENER_USER}-replicas-admin-{settings.SHORTENER_NODE_ID}",
        # No group and no commits: every page view reads the whole (compacted, small) topic.
        group_id=None,
        enable_auto_commit=False,
        # A page view must not hang on Kafka: connecting, metadata and each fetch are bounded,
        # and the reader gives up after SHORTENER_REPLICAS_READ_SECONDS in all.
        bootstrap_timeout_ms=3_000,
        request_timeout_ms=3_000,
        fetch_max_wait_ms=100,
        allow_auto_create_topics=False,
    )
