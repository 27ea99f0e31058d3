"""Creating and checking the project's topics (`manage.py kafka_topics`), and the list of every
client's own settings per topic that tests/test_bus.py counts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from topics.clicks import (
    clicks_consumer_settings,
    clicks_producer_settings,
    clicks_topic,
    clicks_topic_spec,
)
from topics.clients import admin_client
from topics.links import (
    links_audit_consumer_settings,
    links_consumer_settings,
    links_producer_settings,
    links_topic,
    links_topic_spec,
)
from topics.replicas import (
    links_end_reader_settings,
    replicas_reader_settings,
    replicas_topic,
    replicas_topic_spec,
    status_producer_settings,
)
from topics.specs import TopicSpec

logger = logging.getLogger(__name__)


def topic_specs() -> list[TopicSpec]:
    """Every topic of the project, as `manage.py kafka_topics` makes and checks it."""
    return [links_topic_spec(), clicks_topic_spec(), replicas_topic_spec()]


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
