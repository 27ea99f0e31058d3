"""Kafka for this project: topic names, topic and client settings, and the clients built from them.

The assignment asks for a reason beside every Kafka setting, an explicit and justified partition
count, a conscious delivery guarantee per topic, and fewer than ten settings per topic. So:

  * every client is built from one base per kind (PRODUCER_BASE, CONSUMER_BASE; the admin
    client's own), which holds the settings that every client of that kind shares, once;
  * per topic, only the settings that differ from the defaults are written: the topic's
    configs (TopicSpec.configs) and its clients' settings beyond their base
    (`topic_client_settings`). tests/test_bus.py counts them, fewer than ten per topic: its
    configs, plus the distinct settings of its producer(s), plus those of its consumer(s)
    (links 8, clicks 7, replicas 9; with replication factor >= 2, links 9 and clicks 8). The
    bases, three producer and four consumer settings, are counted once on their own; a
    client's address and names (bootstrap_servers, client_id, group_id) are not settings of
    how it behaves. The test also checks that none restates a default;
  * the defaults relied on come from Kafka 4.1's documentation ("Topic-Level Configs"; the
    broker that `make up` and the tests run is Kafka 4.1.1, and tests/test_bus.py compares
    KAFKA_TOPIC_DEFAULTS with what it reports for a topic made without configs) and from
    kafka-python 3.0.12's source (KafkaProducer.DEFAULT_CONFIG in kafka/producer/kafka.py,
    KafkaConsumer.DEFAULT_CONFIG in kafka/consumer/group.py; the test reads them there).

docs/delivery-guarantees.md tells the whole story with measured figures.

Durability, links and clicks topics. A producer's ack (acks=all, kafka-python's default) means
"every in-sync replica has the record" in its page cache; Kafka does not fsync each record
(flush.messages and flush.ms default to never: KAFKA_TOPIC_DEFAULTS). With
the assignment's single broker (replication factor 1) that is one copy: losing that broker's
disk, or its operating system crashing before the cache reaches the disk, loses acknowledged
records. What heals it: for links, the master's PostgreSQL is the truth and `manage.py
republish_links` re-sends every link's current state; for clicks, the totals the master already
applied are in PostgreSQL, and a lost report is replaced by its counter's next one (see the
delivery document for what that leaves). With replication factor >= 2 the topics require
min.insync.replicas=2, so an ack means at least two brokers have the record; unclean leader
election is off (Kafka's default, checked by `manage.py kafka_topics`), so a replica that missed
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
  * compaction keeps the record with the highest *offset* of each key, not the highest version
    (Kafka documentation, Design, "Log Compaction": "Kafka will always retain at least the last
    known value for each message key"): the relay also reads the topic and sends a link's
    current state again whenever an older one lands after it (links/audit.py), so a replica
    reading the topic from the start later gets it too.
Clicks topic, <user>-clicks: AT-LEAST-ONCE of absolute counts into a max() apply:
  * a report is a counter's absolute value, keyed by the counter (`<incarnation>:<tinyurl>`,
    one life of one replica's Redis); the master keeps the largest value per counter, so a
    duplicate or an out-of-date report, in any order, never lowers a total and a lost report is
    healed by the next one;
  * the topic is compacted: it keeps the report with the highest offset of every counter, so the
    master's totals survive consume_clicks being down for any length of time. That report is
    not always the counter's largest count: see the topic's block below for what holds.
Replicas topic, <user>-replicas: AT MOST ONCE, snapshots (see the block "replicas topic" below).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

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

# Kafka's defaults of the topic configs this module sets or relies on: Kafka 4.1 documentation,
# "Topic-Level Configs" (each entry's "Default"). tests/test_bus.py checks them against the
# broker (a topic created without configs) and that no TopicSpec.configs entry restates one.
KAFKA_TOPIC_DEFAULTS = {
    "cleanup.policy": "delete",
    "min.insync.replicas": "1",
    "unclean.leader.election.enable": "false",
    "retention.ms": "604800000",  # 7 days
    "segment.ms": "604800000",  # 7 days
    "message.timestamp.type": "CreateTime",
    # Not set here; quoted for the durability note above: no fsync per record or per interval.
    "flush.messages": "9223372036854775807",
    "flush.ms": "9223372036854775807",
}


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    # Topic-level configs set on the topic (each differs from KAFKA_TOPIC_DEFAULTS).
    configs: dict[str, str] = field(default_factory=dict)
    # Kafka defaults the design relies on. Not set on the topic (that would restate a default);
    # `manage.py kafka_topics` checks the effective value, which a broker-wide override could
    # change, and sets it on the topic only then.
    relied: dict[str, str] = field(default_factory=dict)

    def expected(self) -> dict[str, str]:
        """Every config `kafka_topics` checks: the relied-on defaults and the configs set."""
        return {**self.relied, **self.configs}


def _durability() -> tuple[dict[str, str], dict[str, str]]:
    """(configs, relied) that the links and clicks topics share, for the replication factor."""
    rf = settings.KAFKA_REPLICATION_FACTOR
    relied = {
        # A replica that fell out of sync must never become the leader: it would lack records
        # that were acknowledged, and the log would be truncated to its copy (acknowledged links
        # and reports silently gone). Without a leader the partition is unavailable instead,
        # until an in-sync replica returns. With one replica there is no other to elect.
        "unclean.leader.election.enable": "false",
    }
    # An acks=all write succeeds only once this many replicas have it. 2 for any replication
    # factor >= 2: an acknowledged record then survives the loss of any one broker. The price,
    # with exactly 2 replicas, is that one broker down stops all writes (/create answers 503,
    # reports wait in Redis) rather than acknowledging records held by one copy. With one broker
    # (the assignment's cluster) it must be 1, the default: relied on, so that a broker-wide
    # default of 2 is noticed rather than making the topic unwritable.
    if rf >= 2:
        return {"min.insync.replicas": "2"}, relied
    return {}, {**relied, "min.insync.replicas": "1"}


def topic_specs() -> list[TopicSpec]:
    rf = settings.KAFKA_REPLICATION_FACTOR
    durability, relied = _durability()
    return [
        TopicSpec(
            name=links_topic(),
            # ONE partition. Every replica is its own consumer group and reads every partition with
            # a single consumer, so more partitions would add no read parallelism, only more
            # positions to track per replica. One partition carries far more than the master
            # produces: a bare kafka-python consumer read one at 107,000-145,000 link records/s
            # on a 2-core machine (records of ~200 bytes; docs/performance.md, bench/catchup.py),
            # against /create's at most 414 a second measured there. It gives all links one
            # order, so "caught up" is one offset comparison.
            partitions=1,
            replication_factor=rf,
            configs={
                # Compaction keeps, for every key (tinyurl), at least its record with the highest
                # offset, forever (Kafka documentation, Design, "Log Compaction"), and drops
                # older ones: the topic is every link's last published state, as the assignment
                # assumes, and stays so past any time-based retention (the default "delete"
                # removes segments after retention.ms). A new replica reads it from the start.
                # A takedown is a record too ("disabled"), so it is kept like any other state.
                "cleanup.policy": "compact",
                **durability,
            },
            relied=relied,
        ),
        TopicSpec(
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
        ),
        replicas_topic_spec(),
    ]


def admin_client() -> KafkaAdminClient:
    return KafkaAdminClient(
        bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS,
        client_id=f"{settings.SHORTENER_USER}-admin-{settings.SHORTENER_NODE_ID}",
        # A deploy script runs this; fail within seconds, not the default 30 (kafka-python
        # 3.0.12, KafkaAdminClient.DEFAULT_CONFIG), if Kafka is away.
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

    A topic is created with its spec's `configs` only (its `relied` values are Kafka's
    defaults). For an existing topic, each config of `spec.expected()` is compared with the
    broker's value (whatever its source: topic, broker default or Kafka default); a difference
    is repaired with alter_configs (incremental on Kafka >= 2.3: kafka-python 3.0.12,
    kafka/admin/_configs.py) when `repair`, and reported. Partition count and replication
    factor are never changed (fewer partitions is impossible; more would send keys to other
    partitions, see the clicks topic; replication needs a reassignment): a difference is
    reported in `errors`, and nothing is changed for it.
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
    expected = spec.expected()
    found = _topic_configs(admin, spec.name, list(expected))
    wrong = {key: value for key, value in expected.items()
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


# --- clients: one base per kind -------------------------------------------------------------
#
# A factory below passes its client's address and names (bootstrap_servers, client_id,
# group_id: where and who, not how), its kind's base, and the settings of its own that differ
# from kafka-python 3.0.12's defaults (KafkaProducer.DEFAULT_CONFIG, KafkaConsumer.DEFAULT_CONFIG;
# the defaults quoted in the comments are theirs). `topic_client_settings` lists those
# own settings per topic for tests/test_bus.py, which counts them and checks that none restates a
# default and that every client is built with its base.

# Every producer's settings.
PRODUCER_BASE: dict[str, Any] = {
    # No producer ever creates a topic by sending to it (default True: the producer asks for
    # the topic to be created, and a broker with auto.create.topics.enable, Kafka's default,
    # creates it with the broker's defaults: "delete" after 7 days instead of compaction, and
    # for the replicas topic the broker's clock not being the one the page uses). Only
    # `manage.py kafka_topics` creates topics, with topic_specs().
    "allow_auto_create_topics": False,
    # After Kafka was unreachable, try again at least every 5 s (default: backing off up to
    # 30 s), so clients recover within seconds of Kafka's return.
    "reconnect_backoff_max_ms": 5_000,
    # Give up making a producer after 5 s (default 30 s) while Kafka is unreachable: the
    # reporters requeue and try again on their next round, and a /create answers 503 within
    # its publish bound (the links producer sets that bound here instead).
    "bootstrap_timeout_ms": 5_000,
}

# Every consumer's settings.
CONSUMER_BASE: dict[str, Any] = {
    # As for producers: reading a topic never creates it.
    "allow_auto_create_topics": False,
    "reconnect_backoff_max_ms": 5_000,
    # No automatic commits (default True). The positioned consumers keep their position in
    # Redis or PostgreSQL, written with what they applied, and commit the group's offset by
    # hand after each batch, only to show progress (lag tooling); the group-less readers have
    # nothing to commit (kafka-python turns auto-commit off for them with a warning).
    "enable_auto_commit": False,
    # Give up making a consumer after 3 s (default 30 s) while Kafka is unreachable: the
    # consuming loops retry, and each round writes the heartbeat that /readyz checks (a 30 s
    # wait would read as a dead consumer); a status or a page view is not held up for long.
    "bootstrap_timeout_ms": 3_000,
}


def _auto_create_apply(cluster: Any, config: dict[str, Any]) -> None:
    """Make the client's metadata requests carry its allow_auto_create_topics.

    kafka-python 3.0.12 drops the setting: its connection manager builds the client's
    ClusterMetadata from bootstrap_servers, metadata_max_age_ms and client_dns_lookup only
    (kafka/net/manager.py), and ClusterMetadata's metadata requests then ask the broker to
    create a missing topic (its own default, True; kafka/cluster.py, metadata_request). So a
    producer made with allow_auto_create_topics=False still creates the topic it sends to on a
    broker that allows it. The client's first request for a topic's metadata comes after it is
    made (bootstrapping asks for no topic), so setting the value here is in time.
    tests/test_bus.py shows it against a broker that creates topics.
    """
    cluster.config["allow_auto_create_topics"] = config["allow_auto_create_topics"]


def _producer_make(*, client_id: str, own: dict[str, Any]) -> KafkaProducer:
    producer = KafkaProducer(bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS,
                             client_id=client_id, **{**PRODUCER_BASE, **own})
    _auto_create_apply(producer._metadata, producer.config)
    return producer


def _consumer_make(*, client_id: str, group_id: str | None, own: dict[str, Any]) -> KafkaConsumer:
    consumer = KafkaConsumer(bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS,
                             client_id=client_id, group_id=group_id, **{**CONSUMER_BASE, **own})
    _auto_create_apply(consumer._cluster, consumer.config)
    return consumer


def topic_client_settings() -> dict[str, dict[str, list[dict[str, Any]]]]:
    """{topic: {"producers": [own settings, ...], "consumers": [own settings, ...]}}: the
    settings each client of a topic sets beyond its kind's base (for tests/test_bus.py).

    The links end reader asks only for the links topic's end offset, for the status that goes
    to the replicas topic: it is listed with the replicas topic's clients, whose feature it is.
    """
    return {
        links_topic(): {"producers": [links_producer_settings()],
                        "consumers": [links_consumer_settings(), links_audit_consumer_settings()]},
        clicks_topic(): {"producers": [clicks_producer_settings()],
                         "consumers": [clicks_consumer_settings()]},
        replicas_topic(): {"producers": [status_producer_settings()],
                           "consumers": [replicas_reader_settings(),
                                         links_end_reader_settings()]},
    }


# --- links producer (master) ----------------------------------------------------------------

_producer: KafkaProducer | None = None
_producer_lock = threading.Lock()
# When the last attempt to make _producer failed (time.monotonic()) and why: shared with the
# requests that waited for that attempt (producer_get).
_producer_failed: tuple[float, str] | None = None


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
# serves many concurrent /create calls, for at most 2 ms of latency (default 0).
LINKS_LINGER_MS = 2


def links_producer_settings() -> dict[str, Any]:
    """The master's links producer's own settings.

    acks and idempotence are kafka-python 3.0.12's defaults (acks=-1, i.e. "all", and
    enable_idempotence=True: "Since KIP-679 (Kafka 3.0), idempotence is enabled by default and
    `acks` defaults to 'all'", KafkaProducer's docstring): /create answers only once every
    in-sync replica has the record, and a retried batch is not written twice. The producer
    turns idempotence off, with a warning, only when acks, retries or in-flight requests
    conflict; none is set here, and tests/test_bus.py checks the producer's effective values.
    """
    bound = publish_timeout_ms()
    return {
        "linger_ms": LINKS_LINGER_MS,
        # -- ONE bound, SHORTENER_PUBLISH_TIMEOUT (default 5 s), so that /create answers 503
        # -- within seconds while Kafka is down, instead of after the 30-120 s defaults, and
        # -- never gives up before the producer does.
        # The whole delivery of a record, retries included (default 120 s): the producer fails
        # it after this long, and /create waits for exactly that answer. The record then stays
        # unpublished in PostgreSQL and the outbox re-sends it.
        "delivery_timeout_ms": bound,
        # One produce request (default 30 s): kafka-python 3.0.12 requires delivery_timeout_ms
        # >= linger_ms + request_timeout_ms (RecordAccumulator raises otherwise).
        "request_timeout_ms": bound - LINKS_LINGER_MS,
        # Reaching a broker when the producer is made (PRODUCER_BASE's 5 s, made this bound),
        # and send() blocking for the topic's metadata (default 60 s): only on a fresh
        # producer (the process's first /create, or the first after a failed delivery). When
        # Kafka does not answer, the request fails after this, with no delivery wait after it.
        "bootstrap_timeout_ms": bound,
        "max_block_ms": bound,
    }


def producer_get() -> KafkaProducer:
    """The process's producer, made on first use (after gunicorn forks) and shared by threads.

    KafkaProducer is thread-safe; one per process batches the concurrent requests' records.
    Raises KafkaError (NoBrokersAvailable) when Kafka cannot be reached within the publish
    timeout; the next call tries again.
    """
    global _producer, _producer_failed
    asked = time.monotonic()
    with _producer_lock:
        if _producer is not None:
            return _producer
        failed = _producer_failed
        if failed is not None and failed[0] >= asked:
            # Another thread's attempt ended while this one waited for the lock: its answer is
            # this one's too. Otherwise a burst of /create during an outage waited one publish
            # timeout per request in turn (6 requests: answered at 5, 10, ... 30 s).
            raise KafkaError(f"Kafka could not be reached: {failed[1]}")
        try:
            _producer = _producer_make(
                client_id=f"{settings.SHORTENER_USER}-master-{settings.SHORTENER_NODE_ID}",
                own=links_producer_settings())
        except KafkaError as exc:
            _producer_failed = (time.monotonic(), repr(exc))
            raise
        _producer_failed = None
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


# --- links consumers: the replica's, and the master's audit ---------------------------------


def links_consumer_settings() -> dict[str, Any]:
    """The replica's links consumer's own settings (consume_links)."""
    return {
        # Only used if a stored position is out of range (the topic was recreated): start over
        # (default "latest" would skip every record). Re-reading is harmless: records older
        # than what Redis holds are not applied.
        "auto_offset_reset": "earliest",
        # Large batches make catch-up fast: one Redis transaction per up to this many links
        # (5,000 by default; SHORTENER_LINKS_BATCH; kafka-python's default 500).
        # (max_partition_fetch_bytes stays at its default, 1 MiB per partition per fetch: on
        # 100,000 link records of ~250 bytes it gave polls of ~3,800 records against ~4,300
        # with 8 MiB, in the same read time within noise; docs/delivery-guarantees.md.
        # fetch_max_wait_ms stays at its default too: it is how long the broker holds a fetch
        # when less than fetch_min_bytes, 1 byte, is available, so a new record is answered at
        # once. Source: Kafka's consumer configs, fetch.max.wait.ms and fetch.min.bytes.)
        "max_poll_records": settings.SHORTENER_LINKS_BATCH,
    }


def links_consumer_make() -> KafkaConsumer:
    """A consumer for the links topic. The caller assigns partitions and seeks (no subscribe).

    Its group is where this replica's progress is *shown* (kafka-consumer-groups.sh
    --describe, lag alerts), not where it is *kept*: the position lives in Redis, written
    atomically with the links (see redirects/consumer.py), so that a wiped Redis is rebuilt from
    the start even though the group's offsets are at the end."""
    return _consumer_make(
        client_id=f"{settings.SHORTENER_USER}-links-{settings.SHORTENER_NODE_ID}",
        group_id=links_group(), own=links_consumer_settings())


def links_audit_consumer_settings() -> dict[str, Any]:
    """The master's links audit consumer's own settings."""
    return {
        # Only if the stored position is out of range (the topic was recreated): audit it all.
        "auto_offset_reset": "earliest",
        # One PostgreSQL transaction per batch: the whole topic is read at the first start.
        "max_poll_records": settings.SHORTENER_LINKS_BATCH,
    }


def links_audit_consumer_make() -> KafkaConsumer:
    """The master's reader of its own links topic (links/audit.py): it checks that the newest
    record of every link there is the link's current state. The caller assigns and seeks.
    Progress is shown under the assignment's group naming and kept in PostgreSQL."""
    return _consumer_make(
        client_id=f"{settings.SHORTENER_USER}-links-audit-{settings.SHORTENER_NODE_ID}",
        group_id=f"{settings.SHORTENER_USER}-links-audit", own=links_audit_consumer_settings())


# --- clicks producer (replicas) and consumer (master) ---------------------------------------


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
    return _producer_make(
        client_id=f"{settings.SHORTENER_USER}-clicks-{settings.SHORTENER_NODE_ID}",
        own=clicks_producer_settings())


def clicks_consumer_settings() -> dict[str, Any]:
    """The master's clicks consumer's own settings (consume_clicks)."""
    return {
        # Never move a position silently: kafka-python's reset of an out-of-range position is
        # an INFO line. With "none" a position outside the retained range raises instead, and
        # links/clicks.py reports the records skipped (an ERROR and
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
    written in the same transaction as the totals (links/clicks.py)."""
    return _consumer_make(
        client_id=f"{settings.SHORTENER_USER}-clicks-master-{settings.SHORTENER_NODE_ID}",
        group_id=clicks_group(), own=clicks_consumer_settings())


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
    return _producer_make(
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
    return _consumer_make(
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
    return _consumer_make(
        client_id=f"{settings.SHORTENER_USER}-replicas-admin-{settings.SHORTENER_NODE_ID}",
        group_id=None, own=replicas_reader_settings())
