"""What a topic is made with: its partitions, replication and configs (TopicSpec), the Kafka
defaults relied on, and the durability the links and clicks topics share.

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
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings

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


def durability_configs() -> tuple[dict[str, str], dict[str, str]]:
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
